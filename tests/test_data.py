"""nanobias/data.py: choosing a source, the split by template and (real BBQ) by item group."""

from collections import Counter

import pytest

from nanobias.data import load_examples, load_splits, split_examples, split_unit
from nanobias.bbq import Example
from nanobias.world import CATEGORIES, synthetic_examples

SYNTH = synthetic_examples()


def test_split_by_template_and_heldout_categories():
    splits = split_examples(SYNTH, heldout_categories=("Religion", "SES"), seed=3)
    names = ("train", "val", "test")
    owners = {}
    for name in names:
        for e in getattr(splits, name):
            assert owners.setdefault((e.category, e.question_index), name) == name
            assert e.category not in ("Religion", "SES")
    assert {e.category for e in splits.heldout} == {"Religion", "SES"}
    assert len(splits.heldout) == sum(e.category in ("Religion", "SES") for e in SYNTH)
    assert sum(len(getattr(splits, n)) for n in (*names, "heldout")) == len(SYNTH)
    for category in set(CATEGORIES) - {"Religion", "SES"}:  # 8 templates: 1 val, 1 test, 6 train
        assert Counter(owners[k] for k in owners if k[0] == category) == {"train": 6, "val": 1, "test": 1}
    assert split_examples(SYNTH, seed=3).test == split_examples(SYNTH, seed=3).test
    assert split_examples(SYNTH, seed=3).test != split_examples(SYNTH, seed=4).test


def test_split_rejects_unknown_heldout_and_bad_fractions():
    with pytest.raises(ValueError, match="Astrology"):
        split_examples(SYNTH, heldout_categories=("Astrology",))
    with pytest.raises(ValueError, match="val_frac"):
        split_examples(SYNTH, val_frac=0.6, test_frac=0.5)


def test_load_splits_and_load_examples():
    splits = load_splits("synthetic", variants_per_template=1, train_categories=["Age"], eval_categories=["SES"])
    assert {e.category for e in splits.train + splits.val + splits.test} == {"Age"}
    assert {e.category for e in splits.heldout} == {"SES"}
    with pytest.raises(ValueError, match="Astrology"):
        load_examples("synthetic", categories=["Astrology"])
    with pytest.raises(ValueError, match="bbq_dir"):
        load_examples("bbq")


def test_split_by_item_keeps_each_pair_of_people_together_and_templates_in_every_split():
    """by="item" (real BBQ's split): new people in scenes trained on. A group is one template's items
    with one pair of people, whatever their order, condition, question or unknown wording."""
    examples = [e for e in SYNTH if e.category in ("Age", "SES")]
    splits = split_examples(examples, seed=3, by="item")
    owners = {}
    for name in ("train", "val", "test"):
        for e in getattr(splits, name):
            assert owners.setdefault(split_unit(e, "item"), name) == name
    assert sum(len(getattr(splits, n)) for n in ("train", "val", "test")) == len(examples)
    per_template = Counter(unit[:2] for unit in owners)
    assert min(per_template.values()) >= 3  # several pairs of people per template
    for template in per_template:  # every template lands in every split
        assert {owners[u] for u in owners if u[:2] == template} == {"train", "val", "test"}
    first = next(e for e in examples if e.context_condition == "ambig")
    swapped = Example(**{**vars(first), "answers": first.answers[::-1], "label": 2 - first.label,
                         "answer_info": {f"ans{2 - i}": first.answer_info[f"ans{i}"] for i in range(3)}})
    assert split_unit(swapped, "item") == split_unit(first, "item")  # the other order is the same pair
    with pytest.raises(ValueError, match="'template' or 'item'"):
        split_examples(examples, by="people")
