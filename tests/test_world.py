"""nanobias/world.py: the synthetic BBQ-style world."""

import hashlib
import json
import os
import subprocess
import sys
from collections import Counter
from dataclasses import asdict

import pytest

from nanobias.world import CATEGORIES, WORLD, synthetic_examples

SYNTH = synthetic_examples()


def test_synthetic_is_deterministic_by_seed():
    assert synthetic_examples(seed=0) == SYNTH
    other = synthetic_examples(seed=1)
    assert len(other) == len(SYNTH) and [e.context for e in other] != [e.context for e in SYNTH]
    assert len(synthetic_examples(variants_per_template=2)) == len(SYNTH) // 4


def test_synthetic_coverage():
    assert len(CATEGORIES) >= 9 and set(CATEGORIES) == {e.category for e in SYNTH}
    cells = Counter((e.category, e.question_index, e.question_polarity, e.context_condition) for e in SYNTH)
    templates = Counter(c for c, *_ in {k[:2] for k in cells})
    assert min(templates.values()) >= 6
    assert len(cells) == 4 * sum(templates.values())  # all four polarity x condition cells per template
    assert len(set(cells.values())) == 1  # balanced
    assert len({e.answers[e.unknown_index] for e in SYNTH}) >= 6
    for position in ("label", "unknown_index", "biased_index"):
        assert set(Counter(getattr(e, position) for e in SYNTH)) == {0, 1, 2}


def test_synthetic_items_are_consistent():
    for e in SYNTH:
        predicate = e.question.removeprefix("Who ").removeprefix("was not the one who ").removesuffix("?")
        assert e.question.startswith("Who ") and e.question.endswith("?")
        assert ("was not the one who" in e.question) == (e.question_polarity == "nonneg")
        lowered = [a.lower() for a in e.answers]
        assert not any(i != j and lowered[i] in lowered[j] for i in range(3) for j in range(3))
        if e.context_condition == "ambig":
            assert predicate not in e.context and e.label == e.unknown_index
        elif e.question_polarity == "neg":  # the named person stands right before the predicate
            assert f"{e.answers[e.label]} {predicate}".lower() in e.context.lower()
        else:  # the named person is the other one
            assert f"{e.answers[e.label]} {predicate}".lower() not in e.context.lower()
            assert e.answers[e.label].lower() in e.context.lower()
        if e.context_condition == "disambig":
            assert e.label != e.unknown_index


def test_synthetic_targeted_group_does_the_negative_thing_half_the_time():
    neg = [e for e in SYNTH if e.question_polarity == "neg" and e.context_condition == "disambig"]
    share = sum(e.label == e.biased_index for e in neg) / len(neg)
    assert share == pytest.approx(0.5)


def test_world_predicates_are_distinct():
    for category, world in WORLD.items():
        predicates = [p for _, neg, nonneg in world["behaviours"] for p in (neg, nonneg)]
        assert len(set(predicates)) == len(predicates), category
        for _, neg, nonneg in world["behaviours"]:
            assert neg not in nonneg and nonneg not in neg



def fingerprint(examples) -> str:
    """sha256 of the JSON of every field of every example, in order."""
    return hashlib.sha256(json.dumps([asdict(e) for e in examples], sort_keys=True).encode()).hexdigest()


_FINGERPRINT_IN_A_FRESH_PROCESS = (
    "import hashlib, json; from dataclasses import asdict; from nanobias.world import synthetic_examples; "
    "print(hashlib.sha256(json.dumps([asdict(e) for e in synthetic_examples(0, 8)], sort_keys=True).encode())"
    ".hexdigest())")


def test_synthetic_world_is_deterministic_and_unchanged_in_size():
    first, second = synthetic_examples(0, 8), synthetic_examples(0, 8)
    templates = {(e.category, e.question_index) for e in first}
    assert len(templates) == 8 * len(CATEGORIES)  # 8 scene frames per category (as the split test pins)
    assert len(first) == len(templates) * 8 * 4  # x 8 variants x (neg, nonneg) x (ambig, disambig)
    assert [e.example_id for e in first] == list(range(len(first)))
    assert fingerprint(first[:16]) == fingerprint(second[:16]) and fingerprint(first) == fingerprint(second)
    assert fingerprint(first) == fingerprint(SYNTH)  # the default arguments are (0, 8)
    # nothing may depend on Python's per-process string hashing (set order): a fresh process
    # with another hash seed writes the same world
    for hash_seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        out = subprocess.run([sys.executable, "-c", _FINGERPRINT_IN_A_FRESH_PROCESS], env=env, check=True,
                             capture_output=True, text=True).stdout.strip()
        assert out == fingerprint(first)
