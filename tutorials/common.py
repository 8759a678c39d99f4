"""What every tutorial shares: the --tiny flag, the output folder, the run sizes, printing, and
building (or reusing) the trained models that the later tutorials start from.

Modes:
- real (default): a short but genuine run, under 2 minutes per tutorial on a 2-core CPU. Outputs
  go to runs/tutorial/ at the repository root; the policy of tutorial 04 and the reward model of
  tutorial 05 are reused by the later tutorials when they were made with the same settings
  (recorded in runs/tutorial/recipe.json), and built on the spot otherwise.
- tiny (`--tiny`): the library's `smoke` preset cut to a handful of steps, outputs in a temporary
  folder that is deleted at the end (or in `--out DIR`). Seconds per tutorial: what
  tests/test_tutorials.py runs. The numbers it prints mean nothing; it checks that the code runs.

The run sizes are the library's presets (nanobias/presets.py) with fewer steps: `cpu` for the
real mode, `smoke` for the tiny one. The full-size pipeline is `nanobias reproduce`.
"""

import argparse
import json
import sys
import tempfile
import textwrap
import time
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# Run from a checkout as `python tutorials/NN_name.py`: Python puts tutorials/ on the path, not the
# repository root, so nanobias is found here even without `pip install -e .`.
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

SEED = 0
_START = time.perf_counter()


def parse_args(doc: str, add_arguments=None) -> argparse.Namespace:
    """--tiny and --out for every tutorial, plus whatever `add_arguments(parser)` adds."""
    parser = argparse.ArgumentParser(description=doc.strip().splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true",
                        help="shrink everything to seconds (smoke preset, a few steps, a temporary folder); "
                             "used by tests/test_tutorials.py")
    parser.add_argument("--out", type=Path,
                        help="output folder (default: runs/tutorial/ at the repository root; with --tiny a "
                             "temporary folder deleted at the end)")
    if add_arguments is not None:
        add_arguments(parser)
    args = parser.parse_args()
    mode = "TINY mode: seconds, smoke-sized, the numbers mean nothing" if args.tiny else "real mode"
    print(f"{Path(sys.argv[0]).name} ({mode})")
    return args


@contextmanager
def output_dir(args: argparse.Namespace):
    """The folder this tutorial writes to (see the module docstring)."""
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        yield args.out
    elif args.tiny:
        with tempfile.TemporaryDirectory(prefix="nanobias-tutorial-") as tmp:
            yield Path(tmp)
    else:
        out = REPO / "runs" / "tutorial"
        out.mkdir(parents=True, exist_ok=True)
        yield out


def section(title: str) -> None:
    print(f"\n=== {title} " + "=" * max(3, 96 - len(title)), flush=True)


def say(text: str) -> None:
    """Print a paragraph of explanation, re-wrapped to 100 columns."""
    paragraphs = textwrap.dedent(text).strip().split("\n\n")
    print("\n" + "\n\n".join(textwrap.fill(" ".join(p.split()), 100) for p in paragraphs), flush=True)


def finish() -> None:
    print(f"\n({Path(sys.argv[0]).name} took {time.perf_counter() - _START:.0f} s)")


# ---------------------------------------------------------------- run sizes

def tutorial_preset(tiny: bool):
    """The library preset this tutorial runs at: `smoke` cut to seconds, or `cpu` cut to under 2 minutes.
    Sets torch's threads for it as the CLI does (nanobias/threads.py: OMP_NUM_THREADS wins)."""
    from nanobias import threads

    preset = _preset(tiny)
    threads.configure(None, threads.model_params(preset))
    return preset


def _preset(tiny: bool):
    from nanobias.presets import get_preset

    if tiny:
        return get_preset("smoke", {
            "eval_examples": 16, "pretrain.steps": 6, "pretrain.eval_every": 6, "pretrain.ckpt_every": 6,
            "rl.steps": 2, "rl.prompts_per_step": 2, "rl.group_size": 4, "rl.max_new_tokens": 8,
            "reward.steps": 2, "reward.batch_size": 4, "reward.eval_every": 2, "reward.ckpt_every": 2,
            "pairs.val_pairs": 16, "pairs.test_pairs": 16, "reward_eval.sensitivity_completions": 4})
    return get_preset("cpu", {
        "variants_per_template": 8, "eval_examples": 120,
        "pretrain.steps": 200, "pretrain.eval_every": 100, "pretrain.ckpt_every": 100,
        "rl.steps": 8, "rl.prompts_per_step": 4, "rl.group_size": 8, "rl.max_new_tokens": 16,
        "rl.eval_points": 0,  # no budget curves (curves.py): no tutorial shows them, and 9 would double the RL time
        "reward.steps": 40, "reward.batch_size": 16, "reward.warmup": 5, "reward.eval_every": 20, "reward.ckpt_every": 20,
        "pairs.val_pairs": 96, "pairs.test_pairs": 128, "reward_eval.sensitivity_completions": 48})


def world(preset, eval_categories=()):
    """The synthetic BBQ-style world at the preset's size, split by template."""
    from nanobias.data import load_splits

    return load_splits("synthetic", seed=SEED, variants_per_template=preset.variants_per_template,
                       eval_categories=eval_categories)


# ---------------------------------------------------------------- trained models, built or reused

def _recipe(preset) -> dict:
    return json.loads(json.dumps({"preset": asdict(preset), "seed": SEED}))  # tuples -> lists, as read back


def _recipe_matches(out: Path, preset) -> bool:
    recipe = out / "recipe.json"
    return recipe.is_file() and json.loads(recipe.read_text()) == _recipe(preset)


def _reusable(out: Path, preset, files: list[str]) -> bool:
    return _recipe_matches(out, preset) and all((out / f).is_file() for f in files)


def record_recipe(out: Path, preset) -> None:
    """Note the settings that out/'s models were made with, so later tutorials know they may reuse them."""
    from nanobias.checkpoint import write_json

    if not _recipe_matches(out, preset):
        for stale in ("policy.pt", "reward.pt", "intervention.json"):  # made with other settings
            (out / stale).unlink(missing_ok=True)
    write_json(out / "recipe.json", _recipe(preset))


def pretrain_policy(preset, splits, out: Path):
    """Tokenizer + pretraining (tutorial 04's stage calls) -> (model, enc); writes out/policy.pt."""
    from nanobias.pretrain import pretrain_policy

    record_recipe(out, preset)
    return pretrain_policy(splits, preset.pretrain, preset.model, out, seed=SEED)


def ensure_policy(preset, splits, out: Path) -> Path:
    """out/policy.pt: reused if tutorial 04 made it with these settings, else pretrained now."""
    if _reusable(out, preset, ["policy.pt"]):
        print(f"reusing the pretrained policy {out / 'policy.pt'} (from tutorial 04)")
    else:
        print(f"no pretrained policy with these settings in {out}: pretraining one now (tutorial 04 explains it)")
        pretrain_policy(preset, splits, out)
    return out / "policy.pt"


def ensure_reward(preset, splits, out: Path) -> Path:
    """out/reward.pt: reused if tutorial 05 made it with these settings, else trained now."""
    from nanobias.reward import train_reward_model

    policy = ensure_policy(preset, splits, out)
    if _reusable(out, preset, ["reward.pt"]):
        print(f"reusing the reward model {out / 'reward.pt'} (from tutorial 05)")
    else:
        print(f"no reward model with these settings in {out}: training one now (tutorial 05 explains it)")
        train_reward_model(splits, policy, out / "reward.pt", preset.reward, preset.pairs, seed=SEED)
    return out / "reward.pt"
