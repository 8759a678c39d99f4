"""What each `nanobias <command>` does, given its checked flags (cli.py parses them): thin calls into the
modules that do the work, so the CLI, the tutorials and the tests share one path."""

import shlex
from pathlib import Path

from nanobias.flags import eval_examples, scorer_from_args, splits_from_args


def cmd_pretrain(args) -> None:
    from nanobias import distributed
    from nanobias.evaluate import evaluate_policy, format_tables
    from nanobias.metrics import table_rows
    from nanobias.pretrain import pretrain_policy

    preset = args.config
    out = Path(args.out)
    splits = splits_from_args(args, preset)
    model, enc = pretrain_policy(splits, preset.pretrain, preset.model, out, seed=args.seed, resume=args.resume,
                                 init_dir=args.init_dir)
    if not distributed.is_main():
        return
    metrics = evaluate_policy(model, enc, splits.test, splits.heldout, max_examples=eval_examples(args))
    print_samples(metrics)
    print("\n" + format_tables(table_rows("base", metrics)))
    print(f"biased-answer share on ambiguous test prompts: {metrics['biased_ambig']:.3f} "
          "(a policy that picks one of the two people at random: 0.5)")
    print(f"wrote {out / 'policy.pt'} and {out / 'tokenizer.json'}")


def print_samples(metrics: dict, n: int = 4) -> None:
    for s in metrics["samples"][:n]:
        print(f"\n{s['prompt']}{s['completion']}")


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
    from nanobias.bench import run_bench

    run_bench(args.config, args.seconds, args.argv, compare=not args.no_compare, run=args.run, json_path=args.json)


def cmd_online_rl(args) -> None:
    """`nanobias grpo` and `nanobias ppo`: the same flags, budget and report; only the trainer differs."""
    from nanobias.grpo import train_grpo
    from nanobias.ppo import train_ppo

    preset = args.config
    splits = splits_from_args(args, preset)
    name = args.command + ("_oracle" if args.oracle_reward else "_cirm" if args.intervention else "")
    ckpt = args.out / f"{name}.pt"
    trainer, cfg = {"grpo": (train_grpo, preset.grpo), "ppo": (train_ppo, preset.ppo)}[args.command]
    result = trainer(splits, args.policy, ckpt, scorer_from_args(args), preset.rl, cfg, seed=args.seed,
                     backend=args.backend)
    report_baseline(args, name, splits, ckpt, result)


def report_baseline(args, name: str, splits, ckpt: Path, result: dict) -> None:
    from nanobias import distributed
    from nanobias.evaluate import report_rl_run
    from nanobias.rl import reward_curve_path

    report_rl_run(args.out / f"{name}.json", name, splits, args.policy, ckpt, result, eval_examples(args),
                  reward="oracle" if args.oracle_reward else str(args.reward),
                  intervention=str(args.intervention) if args.intervention else None, seed=args.seed,
                  preset=args.preset)
    if distributed.is_main():
        print(f"the reward curve: {reward_curve_path(ckpt)}")


def cmd_dpo(args) -> None:
    from nanobias.dpo import train_dpo

    preset, ckpt = args.config, args.out / f"{args.loss}.pt"
    splits = splits_from_args(args, preset)
    result = train_dpo(splits, args.policy, ckpt, preset.rl, preset.dpo, preset.pairs, seed=args.seed, loss=args.loss,
                       backend=args.backend, score_fn=scorer_from_args(args))
    report_baseline(args, args.loss, splits, ckpt, result)


def cmd_eval(args) -> None:
    from nanobias.checkpoint import write_json
    from nanobias.evaluate import evaluate_checkpoint, format_tables
    from nanobias.metrics import table_rows

    metrics = evaluate_checkpoint(args.policy, splits_from_args(args, args.config), eval_examples(args))
    print_samples(metrics)
    print("\n" + format_tables(table_rows(args.policy.stem, metrics)))
    if args.out is not None:
        path = args.out / f"{args.policy.stem}.eval.json"
        write_json(path, metrics)
        print(f"wrote {path}")


def cmd_reward(args) -> None:
    from nanobias import distributed
    from nanobias.reward import train_reward_model
    from nanobias.reward_eval import evaluate_reward_models

    preset = args.config
    splits = splits_from_args(args, preset)
    ckpt = train_reward_model(splits, args.policy or args.out / "policy.pt", args.out / "reward.pt", preset.reward,
                              preset.pairs, seed=args.seed, resume=args.resume)
    if not distributed.is_main():
        return
    evaluate_reward_models(splits, ckpt, None, args.out, preset.reward_eval, preset.pairs, seed=args.seed)
    print(f"wrote {ckpt} and {args.out / 'reward_eval.json'}")


def cmd_intervene(args) -> None:
    from nanobias.selection import select_intervention
    from nanobias.reward_eval import evaluate_reward_models

    preset = args.config
    splits = splits_from_args(args, preset)
    reward = args.reward or args.out / "reward.pt"
    path = select_intervention(splits, reward, reward.with_name("intervention.json"), preset.intervention, preset.pairs,
                               seed=args.seed)
    evaluate_reward_models(splits, reward, path, args.out, preset.reward_eval, preset.pairs, seed=args.seed)
    print(f"wrote {path}, {args.out / 'reward_eval.json'} and plots in {args.out}")


def cmd_reproduce(args) -> None:
    from nanobias.reproduce import reproduce

    out = args.out or Path("runs") / f"{args.preset}-{args.data}-{args.seed}"
    command = "nanobias " + " ".join(shlex.quote(a) for a in args.argv)
    reproduce(args.config, data=args.data, bbq_dir=args.bbq_dir, seed=args.seed, out=out,
              train_categories=args.train_categories, eval_categories=args.eval_categories, force=args.force,
              backend=args.backend, command=command, init_dir=args.init_dir, workers=args.threads)


def cmd_positions(args) -> None:
    from nanobias.positions import run_positions

    run_positions(args.config, args.out, seeds=args.seeds, seed=args.seed, workers=args.threads, force=args.force)


def cmd_sites(args) -> None:
    from nanobias.sites import run_sites

    run_sites(args.base, args.out, force=args.force)


def cmd_claims(args) -> None:
    from nanobias.claims import write_claims

    write_claims(args.run, args.sweep)


def cmd_sweep(args) -> None:
    from nanobias.sweep import run_sweep

    command = "nanobias " + " ".join(shlex.quote(a) for a in args.argv)
    run_sweep(args.setting, args.base, args.out, seeds=args.seeds, methods=args.methods, workers=args.threads,
              force=args.force, command=command)
