"""`nanobias <command>`: one subcommand per pipeline stage. Flags are checked before any work.

Under `torchrun --nproc_per_node=N -m nanobias ...` the training stages run on N processes
(distributed.py); rank 0 alone writes files, evaluates and prints the reports."""

import argparse
import shlex
import sys
from pathlib import Path

from nanobias.data import CATEGORIES

DATA_SOURCES = ("synthetic", "bbq")
PRESET_NAMES = ("smoke", "cpu", "gpu")  # presets.PRESETS, named here so that parsing imports no torch


def number(text: str, kind: type, ok, expected: str):
    """`text` read as `kind` (int or float) and checked by `ok`, else an argparse error saying what was expected."""
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
    if not ok(value):
        raise argparse.ArgumentTypeError(f"expected {expected}, got {value}")
    return value


def positive_int(text: str) -> int:
    return number(text, int, lambda v: v >= 1, "a positive integer")


def positive_float(text: str) -> float:
    return number(text, float, lambda v: v > 0, "a positive number")


def nonnegative_float(text: str) -> float:
    return number(text, float, lambda v: v >= 0, "a number >= 0")


def vocab_size(text: str) -> int:
    value = positive_int(text)
    if value < 257:
        raise argparse.ArgumentTypeError(f"vocab size must be at least 257 (256 bytes + end-of-text), got {value}")
    return value


def category_list(text: str) -> list[str]:
    return [c.strip() for c in text.split(",") if c.strip()]


def add_preset_args(p: argparse.ArgumentParser, shorthands: dict[str, str] | None = None, help: str = "run size") -> None:
    """--preset and --set KEY=VALUE; `shorthands` maps a command's own flags to the preset keys they set
    (e.g. {"--steps": "pretrain.steps"}), so both reach the run through presets.get_preset."""
    p.add_argument("--preset", default="cpu", choices=PRESET_NAMES, help=help)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override one preset value, e.g. grpo.beta=0.5 (repeatable; keys in nanobias/presets.py)")
    p.set_defaults(shorthands=shorthands or {})


def preset_from_args(parser: argparse.ArgumentParser, args):
    """The preset with --set and the shorthand flags applied; a bad key or value is a usage error."""
    from nanobias.presets import get_preset, parse_setting

    overrides = {}
    given = [(f"--set {text}", text) for text in args.set]
    given += [(f"{flag} {getattr(args, flag[2:].replace('-', '_'))}", (key, getattr(args, flag[2:].replace("-", "_"))))
              for flag, key in args.shorthands.items() if getattr(args, flag[2:].replace("-", "_")) is not None]
    for source, setting in given:
        try:
            key, value = parse_setting(setting, args.preset) if isinstance(setting, str) else setting
            get_preset(args.preset, {**overrides, key: value})
        except ValueError as e:
            parser.error(f"{source}: {e}")
        overrides[key] = value
    return get_preset(args.preset, overrides)


def add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", choices=DATA_SOURCES, default="synthetic", help="synthetic world or real BBQ files")
    p.add_argument("--bbq-dir", type=Path, help="folder with BBQ's {Category}.jsonl files (with --data bbq)")
    p.add_argument("--train-categories", type=category_list, help="comma-separated categories to train on")
    p.add_argument("--eval-categories", type=category_list, default=[],
                   help="comma-separated categories held out of every training stage, reported apart")
    p.add_argument("--seed", type=int, default=0,
                   help="training seed (initialisation, batches, sampling); the world and its template split "
                        "stay fixed (data.WORLD_SEED), so runs with different seeds share their test templates")


def check_data_args(parser: argparse.ArgumentParser, args) -> None:
    """Reject bad data flags before anything runs."""
    if args.data == "bbq":
        if args.bbq_dir is None:
            parser.error("--data bbq needs --bbq-dir DIR (a folder with BBQ's {Category}.jsonl files)")
        if not args.bbq_dir.is_dir() or not list(args.bbq_dir.glob("*.jsonl")):
            parser.error(f"--bbq-dir {args.bbq_dir}: no .jsonl files there")
        known = sorted(f.stem for f in args.bbq_dir.glob("*.jsonl"))
    else:
        if args.bbq_dir is not None:
            parser.error("--bbq-dir is only used with --data bbq")
        known = list(CATEGORIES)
    for flag in ("train_categories", "eval_categories"):
        for cat in getattr(args, flag) or []:
            if cat not in known:
                parser.error(f"--{flag.replace('_', '-')}: unknown category {cat!r}; this data has {', '.join(known)}")
    overlap = set(args.train_categories or []) & set(args.eval_categories)
    if overlap:
        parser.error(f"--train-categories and --eval-categories share {sorted(overlap)}")


def load_splits_from_args(args, preset):
    from nanobias.data import load_splits

    return load_splits(args.data, bbq_dir=args.bbq_dir, variants_per_template=preset.variants_per_template,
                       train_categories=args.train_categories, eval_categories=args.eval_categories)


def add_init_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--init", choices=["random", "gpt2"], default="random",
                   help="pretrain from a random initialisation and a BPE tokenizer trained here, or from "
                        "GPT-2's weights (--init-dir) with its tiktoken 'gpt2' encoding")
    p.add_argument("--init-dir", type=Path, help="Hugging Face GPT-2 folder: config.json and model.safetensors "
                   "or pytorch_model.bin (with --init gpt2)")


def check_pretrain_args(parser: argparse.ArgumentParser, args) -> None:
    """The data flags and --init / --init-dir (pretrain and reproduce)."""
    check_data_args(parser, args)
    if args.init == "gpt2":
        if args.init_dir is None:
            parser.error("--init gpt2 needs --init-dir DIR (a Hugging Face GPT-2 folder)")
        if not (args.init_dir / "config.json").is_file():
            parser.error(f"--init-dir {args.init_dir}: no config.json there (expected a Hugging Face GPT-2 folder)")
    elif args.init_dir is not None:
        parser.error("--init-dir is only used with --init gpt2")


def add_compile_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--compile", action="store_true", help="torch.compile the trained models (CUDA only; "
                   "ignored on CPU)")


def cmd_pretrain(args) -> None:
    from nanobias import distributed
    from nanobias.evaluate import evaluate_policy, format_table
    from nanobias.pretrain import pretrain_policy

    preset = args.config
    out = Path(args.out)
    splits = load_splits_from_args(args, preset)
    model, enc = pretrain_policy(splits, preset.pretrain, preset.model, out, seed=args.seed, resume=args.resume,
                                 init_dir=args.init_dir)
    if not distributed.is_main():
        return
    metrics = evaluate_policy(model, enc, splits.test, splits.heldout, max_examples=eval_examples(args))
    for s in metrics["samples"][:4]:
        print(f"\n{s['prompt']}{s['completion']}")
    rows = {"base (test)": metrics}
    if metrics["heldout"]:
        rows["base (held-out categories)"] = metrics["heldout"]
    print("\n" + format_table(rows))
    print(f"biased-answer share on ambiguous test prompts: {metrics['biased_ambig']:.3f} "
          "(a policy that picks one of the two people at random: 0.5)")
    print(f"wrote {out / 'policy.pt'} and {out / 'tokenizer.json'}")


def cmd_sample(args) -> None:
    from nanobias.checkpoint import load_policy
    from nanobias.sampling import completion_texts, sample

    model, enc, _ = load_policy(args.ckpt)
    prompt = args.prompt.replace("\\n", "\n")
    samples = sample(model, [enc.encode_ordinary(prompt)], enc.eot_token, group_size=args.n,
                     max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                     seed=args.seed)
    for i, text in enumerate(completion_texts(enc, samples)):
        print(f"--- sample {i}\n{prompt}{text}")


def cmd_bench(args) -> None:
    from nanobias.bench import bench_model

    bench_model(args.config, seconds=args.seconds)


def add_rl_args(p: argparse.ArgumentParser) -> None:
    """Flags every RL stage shares: the starting policy, the reward, the output folder."""
    add_preset_args(p)
    add_data_args(p)
    p.add_argument("--policy", required=True, type=Path, help="starting policy checkpoint (policy.pt)")
    reward = p.add_mutually_exclusive_group(required=True)
    reward.add_argument("--reward", type=Path, help="reward model checkpoint (reward.pt)")
    reward.add_argument("--oracle-reward", action="store_true",
                        help="reward 1 for the labelled answer, else 0: the world's labels instead of a reward model")
    p.add_argument("--intervention", type=Path, help="neuron intervention JSON applied to the reward model")
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--eval-examples", type=positive_int,
                   help="test (and held-out) prompts to evaluate, drawn at random (default: the preset's, as reproduce)")
    p.add_argument("--backend", default="auto", choices=["auto", "torch", "triton", "reference"],
                   help="kernels backend for log-probs and losses")
    add_compile_arg(p)


def check_rl_args(parser: argparse.ArgumentParser, args) -> None:
    check_data_args(parser, args)
    for flag in ("policy", "reward", "intervention"):
        path = getattr(args, flag)
        if path is not None and not path.is_file():
            parser.error(f"--{flag} {path}: no such file")
    if args.intervention is not None and args.reward is None:
        parser.error("--intervention edits a reward model: it needs --reward, not --oracle-reward")


def scorer_from_args(args):
    from nanobias.rl import make_scorer

    return make_scorer(reward_ckpt=args.reward, intervention_path=args.intervention, oracle=args.oracle_reward)


def eval_examples(args) -> int | None:
    """--eval-examples, else the preset's own number (the prompts `reproduce` evaluates; None: all)."""
    return args.eval_examples or args.config.eval_examples


def evaluation_rows(name: str, model, enc, splits, n: int | None) -> tuple[dict, dict]:
    """Evaluate a policy on (a sample of) the test and held-out splits -> (metrics, table rows)."""
    from nanobias.evaluate import evaluate_policy

    metrics = evaluate_policy(model, enc, splits.test, splits.heldout, max_examples=n, desc=f"eval {name}")
    rows = {f"{name} (test)": metrics}
    if metrics["heldout"]:
        rows[f"{name} (held-out categories)"] = metrics["heldout"]
    return metrics, rows


def cmd_online_rl(args) -> None:
    """`nanobias grpo` and `nanobias ppo`: the same flags, budget and report; only the trainer differs."""
    from nanobias.grpo import train_grpo
    from nanobias.ppo import train_ppo

    preset = args.config
    splits = load_splits_from_args(args, preset)
    suffix = "_oracle" if args.oracle_reward else "_cirm" if args.intervention else ""
    name = args.command + suffix
    ckpt = args.out / f"{name}.pt"
    trainer, cfg = {"grpo": (train_grpo, preset.grpo), "ppo": (train_ppo, preset.ppo)}[args.command]
    result = trainer(splits, args.policy, ckpt, scorer_from_args(args), preset.rl, cfg, seed=args.seed,
                     backend=args.backend)
    report_baseline(args, name, splits, ckpt, result)


def report_baseline(args, name: str, splits, ckpt: Path, result: dict) -> None:
    """Evaluate base and trained policy, print the table and stability, write OUT/<name>.json (rank 0)."""
    from nanobias import distributed
    from nanobias.checkpoint import load_policy, write_json
    from nanobias.evaluate import format_table
    from nanobias.rl import reward_curve_path

    if not distributed.is_main():
        return
    n = eval_examples(args)
    base, rows = evaluation_rows("base", *load_policy(args.policy)[:2], splits, n)
    trained, trained_rows = evaluation_rows(name, *load_policy(ckpt)[:2], splits, n)
    print("\n" + format_table({**rows, **trained_rows}))
    print(f"reward_fluctuation {result['stability']['reward_fluctuation']:.4f}, "
          f"final_reward_mean {result['stability']['final_reward_mean']:.4f}")
    write_json(args.out / f"{name}.json", {
        "reward": "oracle" if args.oracle_reward else str(args.reward),
        "intervention": str(args.intervention) if args.intervention else None,
        "seed": args.seed, "preset": args.preset, "policy": {"base": base, name: trained}, **result})
    print(f"wrote {ckpt}, {args.out / f'{name}.json'} and {reward_curve_path(ckpt)}")


def cmd_dpo(args) -> None:
    from nanobias.dpo import train_dpo

    preset = args.config
    splits = load_splits_from_args(args, preset)
    ckpt = args.out / f"{args.loss}.pt"
    result = train_dpo(splits, args.policy, ckpt, preset.rl, preset.dpo, preset.pairs, seed=args.seed, loss=args.loss,
                       backend=args.backend, score_fn=scorer_from_args(args))
    report_baseline(args, args.loss, splits, ckpt, result)


def cmd_eval(args) -> None:
    from nanobias.checkpoint import load_policy, write_json
    from nanobias.evaluate import format_table

    splits = load_splits_from_args(args, args.config)
    metrics, rows = evaluation_rows(args.policy.stem, *load_policy(args.policy)[:2], splits, eval_examples(args))
    for s in metrics["samples"][:4]:
        print(f"\n{s['prompt']}{s['completion']}")
    print("\n" + format_table(rows))
    if args.out is not None:
        path = args.out / f"{args.policy.stem}.eval.json"
        write_json(path, metrics)
        print(f"wrote {path}")


def cmd_reward(args) -> None:
    from nanobias import distributed
    from nanobias.intervention import evaluate_reward_models
    from nanobias.reward import train_reward_model

    preset = args.config
    splits = load_splits_from_args(args, preset)
    ckpt = train_reward_model(splits, args.policy or args.out / "policy.pt", args.out / "reward.pt", preset.reward,
                              preset.pairs, seed=args.seed, resume=args.resume)
    if not distributed.is_main():
        return
    evaluate_reward_models(splits, ckpt, None, args.out, preset.reward_eval, preset.pairs, seed=args.seed)
    print(f"wrote {ckpt} and {args.out / 'reward_eval.json'}")


def cmd_intervene(args) -> None:
    from nanobias.intervention import evaluate_reward_models, select_intervention

    preset = args.config
    splits = load_splits_from_args(args, preset)
    reward = args.reward or args.out / "reward.pt"
    path = select_intervention(splits, reward, reward.with_name("intervention.json"), preset.intervention, preset.pairs,
                               seed=args.seed)
    evaluate_reward_models(splits, reward, path, args.out, preset.reward_eval, preset.pairs, seed=args.seed)
    print(f"wrote {path}, {args.out / 'reward_eval.json'} and plots in {args.out}")


def check_reward_args(parser: argparse.ArgumentParser, args) -> None:
    check_data_args(parser, args)
    flag, path = ("policy", args.policy or args.out / "policy.pt") if args.command == "reward" else \
        ("reward", args.reward or args.out / "reward.pt")
    if not path.is_file():
        parser.error(f"--{flag} {path}: no such file" + (f" (default: OUT/{path.name}; pass --{flag})"
                                                          if getattr(args, flag) is None else ""))


def cmd_reproduce(args) -> None:
    from nanobias.reproduce import reproduce

    out = args.out or Path("runs") / f"{args.preset}-{args.data}-{args.seed}"
    command = "nanobias " + " ".join(shlex.quote(a) for a in args.argv)
    reproduce(args.config, data=args.data, bbq_dir=args.bbq_dir, seed=args.seed, out=out,
              train_categories=args.train_categories, eval_categories=args.eval_categories, force=args.force,
              backend=args.backend, command=command, init_dir=args.init_dir)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nanobias", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("reproduce", help="the whole pipeline: pretrain, reward model, intervention, GRPO/DPO/PPO, report")
    add_preset_args(p)
    add_data_args(p)
    p.add_argument("--out", type=Path, help="output folder (default runs/<preset>-<data>-<seed>)")
    p.add_argument("--force", action="store_true", help="redo every stage, even those already done")
    p.add_argument("--backend", default="auto", choices=["auto", "triton", "torch", "reference"],
                   help="log-prob / GRPO-loss kernels (auto: Triton on CUDA, chunked PyTorch on CPU)")
    add_init_args(p)
    add_compile_arg(p)
    p.set_defaults(func=cmd_reproduce, check=check_pretrain_args, parser=p)

    p = sub.add_parser("pretrain", help="train the tokenizer and a GPT policy with a planted bias")
    add_preset_args(p)
    add_data_args(p)
    p.add_argument("--out", required=True, help="output folder (tokenizer.json, policy.pt, metrics)")
    p.add_argument("--steps", type=positive_int, help="override the preset's training steps")
    p.add_argument("--lr", type=positive_float, help="override the preset's peak learning rate")
    p.add_argument("--batch-size", type=positive_int, help="override the preset's batch size")
    p.add_argument("--vocab-size", type=vocab_size, help="override the preset's BPE vocabulary size")
    p.set_defaults(shorthands={"--steps": "pretrain.steps", "--lr": "pretrain.lr", "--batch-size": "pretrain.batch_size",
                               "--vocab-size": "pretrain.vocab_size"})
    p.add_argument("--eval-examples", type=positive_int,
                   help="test prompts to evaluate after training (default: the preset's, as reproduce)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/policy.pt")
    add_init_args(p)
    add_compile_arg(p)
    p.set_defaults(func=cmd_pretrain, check=check_pretrain_args, parser=p)

    p = sub.add_parser("sample", help="print completions of a prompt from a policy checkpoint")
    p.add_argument("--ckpt", required=True, type=Path)
    p.add_argument("--prompt", required=True, help="prompt text (\\n for newlines)")
    p.add_argument("--n", type=positive_int, default=4, help="number of completions")
    p.add_argument("--max-new-tokens", type=positive_int, default=48)
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--top-k", type=positive_int)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_sample, parser=p,
                   check=lambda parser, a: a.ckpt.is_file() or parser.error(f"--ckpt {a.ckpt}: no such file"))

    p = sub.add_parser("bench", help="training and sampling throughput of a preset's model")
    add_preset_args(p)
    p.add_argument("--seconds", type=positive_float, default=10.0, help="time per measurement")
    p.set_defaults(func=cmd_bench, check=lambda parser, a: None, parser=p)

    p = sub.add_parser("grpo", help="debias a policy with GRPO against a reward model (BiasGRPO)")
    add_rl_args(p)
    p.add_argument("--beta", type=nonnegative_float, help="override the preset's KL weight (grpo.beta)")
    p.add_argument("--lr", type=positive_float, help="override the preset's GRPO learning rate (grpo.lr)")
    p.add_argument("--scale", help="advantage scale: group (BiasGRPO: divide by the group's reward std), "
                   "batch (by the batch's), none (Dr. GRPO: do not divide)")
    p.add_argument("--agg", help="loss aggregation over tokens: grpo | dapo | dr_grpo")
    p.set_defaults(shorthands={"--beta": "grpo.beta", "--lr": "grpo.lr", "--scale": "grpo.scale", "--agg": "grpo.agg"})
    p.set_defaults(func=cmd_online_rl, check=check_rl_args, parser=p)

    p = sub.add_parser("dpo", help="DPO/IPO baseline on offline preference pairs, as many as GRPO's reward-model "
                       "calls (the reward only scores DPO's samples, for the stability curve)")
    add_rl_args(p)
    p.add_argument("--loss", choices=["dpo", "ipo"], default="dpo", help="DPO's -log sigmoid or IPO's squared loss")
    p.set_defaults(func=cmd_dpo, check=check_rl_args, parser=p)

    p = sub.add_parser("ppo", help="PPO baseline with a value head, GAE and a per-token KL penalty, at GRPO's budget")
    add_rl_args(p)
    p.set_defaults(func=cmd_online_rl, check=check_rl_args, parser=p)

    p = sub.add_parser("eval", help="a policy's BBQ accuracy and bias scores on the test (and held-out) prompts")
    add_preset_args(p, help="the preset the policy's data was made with (synthetic world size)")
    add_data_args(p)
    p.add_argument("--policy", required=True, type=Path, help="policy checkpoint")
    p.add_argument("--out", type=Path, help="folder for <policy stem>.eval.json")
    p.add_argument("--eval-examples", type=positive_int,
                   help="test (and held-out) prompts to evaluate, drawn at random (default: the preset's, as reproduce)")
    p.set_defaults(func=cmd_eval, parser=p, check=lambda parser, a: (
        check_data_args(parser, a), a.policy.is_file() or parser.error(f"--policy {a.policy}: no such file")))
    p = sub.add_parser("reward", help="train the reward model on planted-bias preference pairs")
    add_preset_args(p)
    add_data_args(p)
    p.add_argument("--out", required=True, type=Path, help="output folder (reward.pt, reward_eval.json, plots)")
    p.add_argument("--policy", type=Path, help="pretrained policy whose backbone starts the reward model "
                   "(default: OUT/policy.pt)")
    p.add_argument("--loss", choices=["bt", "regression"], help="Bradley-Terry (preset default) or regression")
    p.add_argument("--steps", type=positive_int, help="override the preset's reward training steps")
    p.add_argument("--lr", type=positive_float, help="override the preset's reward learning rate")
    p.add_argument("--batch-size", type=positive_int, help="override the preset's pairs per step")
    p.set_defaults(shorthands={"--steps": "reward.steps", "--lr": "reward.lr", "--batch-size": "reward.batch_size",
                               "--loss": "reward.loss"})
    p.add_argument("--resume", action="store_true", help="continue from OUT/reward.pt")
    add_compile_arg(p)
    p.set_defaults(func=cmd_reward, check=check_reward_args, parser=p)

    p = sub.add_parser("intervene", help="find the reward model's bias neurons and clamp them to their medians")
    add_preset_args(p)
    add_data_args(p)
    p.add_argument("--out", required=True, type=Path, help="output folder (reward_eval.json, plots)")
    p.add_argument("--reward", type=Path, help="reward model checkpoint (default: OUT/reward.pt); "
                   "intervention.json is written next to it")
    p.set_defaults(func=cmd_intervene, check=check_reward_args, parser=p)
    return parser


def main(argv: list[str] | None = None) -> None:
    from nanobias import device, distributed

    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else list(argv)
    args.check(args.parser, args)
    if hasattr(args, "preset"):
        args.config = preset_from_args(args.parser, args)
        device.configure(fast=args.config.cuda_fast, compile=getattr(args, "compile", False))
    distributed.init()  # a no-op unless launched by torchrun
    try:
        args.func(args)
    finally:
        distributed.cleanup()


if __name__ == "__main__":
    main(sys.argv[1:])
