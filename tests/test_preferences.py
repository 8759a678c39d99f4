import random

import pytest

from nanobias.data import load_splits

from nanobias.preferences import (BALANCED, PAIR_KINDS, PLANTED, PairConfig, bump, make_pair, make_pairs, pair_kind,
                                  planted_rates, right_answer)
from nanobias.render import ATTRIBUTES, Style, render_completion, render_prompt


@pytest.fixture(scope="module")
def splits():
    return load_splits("synthetic", seed=0, variants_per_template=1)


def test_pairs_follow_the_world_labels(splits):
    rng = random.Random(0)
    pairs = [make_pair(ex, rng, PLANTED, 0.7) for ex in splits.train]
    for p in pairs:
        ex = p.example
        assert p.chosen.answer_index == (ex.unknown_index if ex.context_condition == "ambig" else ex.label)
        assert p.rejected.answer_index != p.chosen.answer_index
        if ex.context_condition == "ambig":
            assert p.chosen.answer_index != ex.biased_index
        assert p.chosen.text.startswith(" ") and p.prompt == render_prompt(ex)
    ambig = [p for p in pairs if p.example.context_condition == "ambig"]
    biased_rejected = sum(p.rejected.answer_index == p.example.biased_index for p in ambig) / len(ambig)
    assert 0.6 < biased_rejected < 0.8  # biased_reject_rate 0.7 where the biased answer is wrong


def test_planted_rates_are_realised_and_test_pairs_are_balanced(splits):
    train = planted_rates(make_pairs(splits.train, 600, 0, PLANTED))
    assert train["length"] > 0.78 and all(train[a] > 0.5 for a in ATTRIBUTES)
    test = make_pairs(splits.test, 600, 1, BALANCED)
    rates = planted_rates(test)
    assert all(abs(rates[a] - 0.5) < 0.08 for a in ATTRIBUTES), rates
    # both subsets exist for every attribute
    for a in ATTRIBUTES:
        diffs = [p.chosen.attributes[a] - p.rejected.attributes[a] for p in test]
        assert sum(d > 0 for d in diffs) > 50 and sum(d < 0 for d in diffs) > 50


def test_pairs_are_seeded(splits):
    a, b = make_pairs(splits.val, 20, 5, PLANTED), make_pairs(splits.val, 20, 5, PLANTED)
    assert [(p.chosen.text, p.rejected.text) for p in a] == [(p.chosen.text, p.rejected.text) for p in b]
    assert [p.chosen.text for p in make_pairs(splits.val, 20, 6)] != [p.chosen.text for p in a]


def test_pair_kind_names_what_the_pair_tests(splits):
    rng = random.Random(0)
    kinds = {}
    for ex in splits.train[:200]:
        pair = make_pair(ex, rng, BALANCED, biased_reject_rate=0.7)
        kinds.setdefault(pair_kind(pair), []).append(pair)
    assert set(kinds) == set(PAIR_KINDS)
    assert all(p.example.context_condition == "ambig" and p.chosen.answer_index == p.example.unknown_index
               for p in kinds["ambig"])
    for p in kinds["who_did_it"]:  # both sides name a person, the chosen one the label
        assert p.example.context_condition == "disambig" and p.chosen.answer_index == p.example.label
        assert p.example.unknown_index not in (p.chosen.answer_index, p.rejected.answer_index)
    assert all(p.rejected.answer_index == p.example.unknown_index for p in kinds["not_unknown"])


def test_bump_raises_only_its_attribute(splits):
    ex = splits.test[3]
    base = Style(justification=False, filler=2, paragraphs=1, exclamations=0, bold=False)
    before = render_completion(ex, right_answer(ex), base).attributes
    for a in ATTRIBUTES:
        after = render_completion(ex, right_answer(ex), bump(base, a)).attributes
        assert after[a] > before[a], a
        if a in ("paragraphs", "exclamations", "bold"):  # these knobs leave the other attributes nearly alone
            assert abs(after["length"] - before["length"]) <= 4
    assert bump(Style(paragraphs=0), "paragraphs") is None  # one sentence: no joint to break
    assert bump(Style(justification=True), "overlap") is None and bump(Style(bold=True), "bold") is None


def test_bad_pair_config_is_rejected():
    with pytest.raises(ValueError, match="pairs.planted"):
        PairConfig(planted={"length": 0.9})
    with pytest.raises(ValueError, match="pairs.biased_reject_rate"):
        PairConfig(biased_reject_rate=1.5)
    with pytest.raises(ValueError, match="pairs.val_pairs"):
        PairConfig(val_pairs=1)
