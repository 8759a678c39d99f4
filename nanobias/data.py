"""Choosing a data source and splitting it: `load_splits` is the one entry point the pipeline calls.

Two sources give the same `Example`s: "synthetic", the seeded world (world.py), and "bbq", the
real BBQ files (bbq.py). Whole categories can be held out (`Splits.heldout`) to test transfer to a
kind of bias never trained on. Within the other categories the split keeps near-copies apart:

- synthetic, by template: all items of one (category, question_index) land in the same one of
  train/val/test, so test measures reading in scenes never trained on (the world's scenes share
  one sentence shape, so a policy that reads one reads them all);
- bbq, by item group within each template: the items of one (category, question_index, pair of
  people) stay together (both orders of the two people, ambiguous and disambiguated, both
  questions: 8 items, sometimes 4), and test holds new people in scenes trained on. Which person a
  real BBQ template's disambiguating sentence points at is a matter of meaning that differs from
  template to template (README, "Real BBQ data"), out of reach of a model that knows no English
  but what it is trained on; held-out categories still measure transfer.
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


def split_unit(ex: Example, by: str) -> tuple:
    """What stays together in one split: the template, or (by "item") the template and its two people."""
    if by == "template":
        return ex.category, ex.question_index
    people = sorted(ex.answers[i].strip() for i in ex.people)
    return ex.category, ex.question_index, *people


def split_examples(examples: list[Example], heldout_categories=(), val_frac: float = 0.15,
                   test_frac: float = 0.15, seed: int = 0, by: str = "template") -> Splits:
    """Splits by template (`by="template"`: each (category, question_index) lands in exactly one of
    train/val/test, chosen per category, so every category has templates in each split when it has at
    least 3) or by item group within each template (`by="item"`: the groups of split_unit, chosen per
    template); all examples of the held-out categories go to `heldout`. Order within a split is kept."""
    if not (0 <= val_frac < 1 and 0 <= test_frac < 1 and val_frac + test_frac < 1):
        raise ValueError(f"val_frac={val_frac}, test_frac={test_frac}: expected fractions in [0, 1) summing below 1")
    if by not in ("template", "item"):
        raise ValueError(f"split by: expected 'template' or 'item', got {by!r}")
    present = sorted({ex.category for ex in examples})
    missing = [c for c in heldout_categories if c not in present]
    if missing:
        raise ValueError(f"heldout_categories: {missing} not in the examples ({', '.join(present)})")
    rng = random.Random(seed)
    pools = {}  # the units that are split together: per category (templates) or per template (item groups)
    for ex in examples:
        if ex.category not in heldout_categories:
            pool = ex.category if by == "template" else (ex.category, ex.question_index)
            pools.setdefault(pool, {})[split_unit(ex, by)] = None  # insertion order: first seen first
    where = {}  # unit -> split name
    for pool in sorted(pools, key=lambda p: (p,) if isinstance(p, str) else (p[0], _template_order(p[1]))):
        units = sorted(pools[pool], key=lambda u: (_template_order(u[1]), u[2:]))
        rng.shuffle(units)
        n = len(units)
        n_val, n_test = (max(int(frac > 0 and n >= 3), round(n * frac)) for frac in (val_frac, test_frac))
        if n_val + n_test >= n:
            n_val, n_test = (n - 1) // 2, n - 1 - (n - 1) // 2
        for i, unit in enumerate(units):
            where[unit] = "val" if i < n_val else "test" if i < n_val + n_test else "train"
    splits = Splits([], [], [], [])
    for ex in examples:
        name = "heldout" if ex.category in heldout_categories else where[split_unit(ex, by)]
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
    splits = split_examples(examples, heldout_categories=tuple(eval_categories), seed=seed,
                            by="item" if source == "bbq" else "template")
    if not splits.train:
        raise UserError(f"--eval-categories {','.join(eval_categories)} holds out every category of this data: "
                        "nothing is left to train on")
    if not splits.test and not splits.heldout:
        raise UserError("no test examples: every category has fewer than 3 templates (or templates fewer than 3 "
                        "groups of items) to split by")
    return splits

