"""The flags the commands share, their types and their checks, and the preset they select.

Every check here runs before any work (a usage error names the flag and what was expected); the
preset comes from `--preset`, `--set KEY=VALUE` and a command's shorthand flags, through
presets.get_preset, the one way to override a setting."""

import argparse
import math
from pathlib import Path

from nanobias.world import CATEGORIES

DATA_SOURCES = ("synthetic", "bbq")
PRESET_NAMES = ("smoke", "cpu", "gpu")  # presets.PRESETS, named here so that parsing imports no torch


def number(text: str, kind: type, ok, expected: str):
    """`text` read as `kind` (int or float), finite and checked by `ok`, else an argparse error saying
    what was expected (inf and nan are never a setting: they would end up in JSON as no number)."""
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
    if not math.isfinite(value) or not ok(value):
        raise argparse.ArgumentTypeError(f"expected {expected}, got {value}")
    return value


def seed(text: str) -> int:
    # every derived seed (seed * 1_000_003 + step, ...) must fit torch's 64-bit generators
    return number(text, int, lambda v: 0 <= v < 2**31, "a seed from 0 to 2**31 - 1")


def positive_int(text: str) -> int:
    return number(text, int, lambda v: v >= 1, "a positive integer")


def positive_float(text: str) -> float:
    return number(text, float, lambda v: v > 0, "a positive number")


def nonnegative_float(text: str) -> float:
    return number(text, float, lambda v: v >= 0, "a number >= 0")


def seconds(text: str) -> float:
    return number(text, float, lambda v: 0 < v <= 3600, "seconds between 0 and 3600")


def category_list(text: str) -> list[str]:
    return [c.strip() for c in text.split(",") if c.strip()]


PRESET_HELP = ("smoke: a plumbing check in seconds, its models untrained; cpu: the real reproduction on a "
               "laptop CPU; gpu: GPT-2-small-sized, for one GPU")


def add_preset_args(p: argparse.ArgumentParser, shorthands: dict[str, str] | None = None,
                    help: str = PRESET_HELP) -> None:
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
    for flag, key in args.shorthands.items():
        value = getattr(args, flag[2:].replace("-", "_"))
        if value is not None:
            given.append((f"{flag} {value}", (key, value)))
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
    p.add_argument("--seed", type=seed, default=0,
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


def splits_from_args(args, preset):
    from nanobias.data import load_splits

    return load_splits(args.data, bbq_dir=args.bbq_dir, variants_per_template=preset.variants_per_template,
                       train_categories=args.train_categories, eval_categories=args.eval_categories)


def add_init_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--init", choices=["random", "gpt2"], default="random",
                   help="pretrain from a random initialisation and a BPE tokenizer trained here, or from "
                        "GPT-2's weights (--init-dir) with its tiktoken 'gpt2' encoding")
    p.add_argument("--init-dir", type=Path, help="Hugging Face GPT-2 folder: config.json and model.safetensors "
                   "or pytorch_model.bin (with --init gpt2)")


def check_backend(parser: argparse.ArgumentParser, args) -> None:
    """--backend triton where Triton cannot run (no triton package; CPU without TRITON_INTERPRET=1)."""
    if getattr(args, "backend", "auto") == "triton":
        from nanobias import distributed
        from nanobias.kernels.dispatch import resolve_backend

        try:
            resolve_backend("triton", distributed.device(), "--backend")
        except RuntimeError as e:
            parser.error(str(e))


def check_pretrain_args(parser: argparse.ArgumentParser, args) -> None:
    """The data flags, --init / --init-dir and --backend (pretrain and reproduce)."""
    check_data_args(parser, args)
    check_backend(parser, args)
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
    check_backend(parser, args)
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


def check_sample_args(parser: argparse.ArgumentParser, args) -> None:
    if not args.ckpt.is_file():
        parser.error(f"--ckpt {args.ckpt}: no such file")
    if not args.prompt.strip():
        parser.error("--prompt: expected some text to continue, got an empty prompt")


def check_eval_args(parser: argparse.ArgumentParser, args) -> None:
    check_data_args(parser, args)
    if not args.policy.is_file():
        parser.error(f"--policy {args.policy}: no such file")
    if args.out is not None and args.out.exists() and not args.out.is_dir():
        parser.error(f"--out {args.out}: a file, not a folder (eval writes <policy stem>.eval.json into it)")


def check_reward_args(parser: argparse.ArgumentParser, args) -> None:
    check_data_args(parser, args)
    flag, path = ("policy", args.policy or args.out / "policy.pt") if args.command == "reward" else \
        ("reward", args.reward or args.out / "reward.pt")
    if not path.is_file():
        parser.error(f"--{flag} {path}: no such file" + (f" (default: OUT/{path.name}; pass --{flag})"
                                                          if getattr(args, flag) is None else ""))
