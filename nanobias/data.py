"""Choosing a data source and splitting it: `load_splits` is the one entry point the pipeline calls.

Two sources give the same `Example`s: "synthetic", the seeded world (world.py), and "bbq", the
real BBQ files (bbq.py). The split is by template, not by item: all items of one (category,
question_index) land in the same one of train/val/test, so validation and test measure transfer
to scenes never trained on rather than recall of near-copies (the four items of a template
variant share their people and wording). Whole categories can be held out (`Splits.heldout`)
to test transfer to a kind of bias never trained on.
"""

import random
from dataclasses import dataclass

from nanobias.bbq import Example, load_bbq
from nanobias.errors import UserError
from nanobias.world import CATEGORIES, WORLD, synthetic_examples


def load_examples(source: str, bbq_dir=None, seed: int = 0, categories: list[str] | None = None,
                  variants_per_template: int = 8) -> list[Example]:
    """Examples from "synthetic" (seeded generator) or "bbq" (files in bbq_dir)."""
    if source == "bbq":
        if bbq_dir is None:
            raise ValueError("source 'bbq' needs bbq_dir (a folder with BBQ's {Category}.jsonl files)")
        return load_bbq(bbq_dir, categories)
    if source != "synthetic":
        raise ValueError(f"source: expected 'synthetic' or 'bbq', got {source!r}")
    unknown = [c for c in categories or [] if c not in WORLD]
    if unknown:
        raise ValueError(f"categories: {unknown} not in the synthetic world ({', '.join(CATEGORIES)})")
    examples = synthetic_examples(seed, variants_per_template)
    return examples if categories is None else [ex for ex in examples if ex.category in categories]


# ---------------------------------------------------------------- splits

@dataclass
class Splits:
    train: list[Example]
    val: list[Example]
    test: list[Example]
    heldout: list[Example]  # every example of the held-out categories


def _template_order(question_index: str):
    return (0, int(question_index), "") if question_index.isdigit() else (1, 0, question_index)


def split_examples(examples: list[Example], heldout_categories=(), val_frac: float = 0.15,
                   test_frac: float = 0.15, seed: int = 0) -> Splits:
    """Splits by template: each (category, question_index) lands in exactly one of train/val/test,
    chosen per category (so every category has templates in each split when it has at least 3);
    all examples of the held-out categories go to `heldout`. Order within a split is kept."""
    if not (0 <= val_frac < 1 and 0 <= test_frac < 1 and val_frac + test_frac < 1):
        raise ValueError(f"val_frac={val_frac}, test_frac={test_frac}: expected fractions in [0, 1) summing below 1")
    present = sorted({ex.category for ex in examples})
    missing = [c for c in heldout_categories if c not in present]
    if missing:
        raise ValueError(f"heldout_categories: {missing} not in the examples ({', '.join(present)})")
    rng = random.Random(seed)
    where = {}  # (category, question_index) -> split name
    for category in present:
        if category in heldout_categories:
            continue
        templates = sorted({ex.question_index for ex in examples if ex.category == category}, key=_template_order)
        rng.shuffle(templates)
        n = len(templates)
        n_val, n_test = (max(int(frac > 0 and n >= 3), round(n * frac)) for frac in (val_frac, test_frac))
        if n_val + n_test >= n:
            n_val, n_test = (n - 1) // 2, n - 1 - (n - 1) // 2
        for i, q in enumerate(templates):
            where[category, q] = "val" if i < n_val else "test" if i < n_val + n_test else "train"
    splits = Splits([], [], [], [])
    for ex in examples:
        name = "heldout" if ex.category in heldout_categories else where[ex.category, ex.question_index]
        getattr(splits, name).append(ex)
    return splits


# The world and its template split the CLI and `reproduce` use, whatever their --seed: a training
# seed must not move templates between train and test, or a policy pretrained under one seed and
# fine-tuned or evaluated under another would be tested on templates it was trained on.
WORLD_SEED = 0


def load_splits(source: str, bbq_dir=None, seed: int = WORLD_SEED, variants_per_template: int = 8,
                train_categories: list[str] | None = None, eval_categories=()) -> Splits:
    """load_examples + split_examples: train on train_categories (default all others),
    hold eval_categories out of every training split."""
    categories = None if train_categories is None else list(train_categories) + list(eval_categories)
    examples = load_examples(source, bbq_dir, seed, categories, variants_per_template)
    splits = split_examples(examples, heldout_categories=tuple(eval_categories), seed=seed)
    if not splits.train:
        raise UserError(f"--eval-categories {','.join(eval_categories)} holds out every category of this data: "
                        "nothing is left to train on")
    if not splits.test and not splits.heldout:
        raise UserError("no test examples: every category has fewer than 3 templates to split by")
    return splits

