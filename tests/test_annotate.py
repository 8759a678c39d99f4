"""annotate.py: reward models labelling preference pairs, and DPO on their labels (CIRM's downstream use)."""

import json

import numpy as np
import pytest
import torch

from nanobias.annotate import (ANNOTATORS, LABELS_FILE, POLICIES, annotate_stage, annotated_pairs, keep_labels,
                               label_counts, pool_pairs, relabel, sources, summarise)
from nanobias.checkpoint import load_policy
from nanobias.dpo import train_dpo
from nanobias.intervention import Intervention, save_intervention
from nanobias.preferences import PLANTED, make_pairs
from nanobias.presets import get_preset
from nanobias.render import ATTRIBUTES


@pytest.fixture(scope="module")
def pairs(tiny_splits):
    return make_pairs(tiny_splits.train, 60, seed=5, planted=PLANTED)


def lengths(pairs):
    return np.array([p.chosen.attributes["length"] for p in pairs] + [p.rejected.attributes["length"] for p in pairs],
                    np.float64)


def test_a_length_reward_agrees_where_the_chosen_side_is_longer_and_always_favours_length(pairs):
    keep = keep_labels(lengths(pairs))  # reward = characters
    longer = [p.chosen.attributes["length"] > p.rejected.attributes["length"] for p in pairs]
    assert keep.tolist() == longer
    summary = summarise([label_counts(pairs, keep)])
    assert summary["pairs"] == 60 and summary["agreement"] == pytest.approx(sum(longer) / 60)
    assert summary["favours_more"]["length"] == 1.0
    assert summarise([label_counts(pairs, keep_labels(-lengths(pairs)))])["favours_more"]["length"] == 0.0
    # the true labels show the planted cue, counted by hand
    truth = summarise([label_counts(pairs, np.ones(60, bool))])
    assert truth["agreement"] == 1.0
    for a in ATTRIBUTES:
        diffs = [p.chosen.attributes[a] - p.rejected.attributes[a] for p in pairs]
        differ = [d for d in diffs if d != 0]
        assert truth["favours_more"][a] == (sum(d > 0 for d in differ) / len(differ) if differ else None), a


def test_known_agreement_pooled_over_pools_and_ties_count_against_the_true_label(pairs):
    first, second = pairs[:20], pairs[20:]
    keep_first = np.arange(20) < 15  # r(y_c) = 1 > r(y_r) = 0 on 15 pairs, reversed on 5
    r = np.concatenate([keep_first.astype(float), 1 - keep_first.astype(float)])
    assert keep_labels(r).tolist() == keep_first.tolist()
    ties = keep_labels(np.zeros(2 * len(second)))
    assert not ties.any()  # r(y_c) = r(y_r): the label goes to the rejected side
    pooled = summarise([label_counts(first, keep_first), label_counts(second, ties)])
    assert pooled["pairs"] == 60 and pooled["agreement"] == pytest.approx(15 / 60)
    diff = np.array([p.chosen.attributes["bold"] - p.rejected.attributes["bold"] for p in pairs])
    keep = np.concatenate([keep_first, ties])
    favoured = ((diff > 0) == keep)[diff != 0]
    assert pooled["favours_more"]["bold"] == pytest.approx(favoured.mean())


def test_relabel_swaps_chosen_and_rejected_exactly_where_the_annotator_disagrees(pairs):
    keep = np.arange(len(pairs)) % 3 != 0
    out = relabel(pairs, keep)
    for p, q, k in zip(pairs, out, keep):
        if k:
            assert q is p
        else:
            assert (q.chosen, q.rejected, q.chosen_style, q.rejected_style) == (
                p.rejected, p.chosen, p.rejected_style, p.chosen_style)
            assert q.example is p.example and q.prompt == p.prompt


def test_identical_label_sets_train_once():
    a, b, c = np.array([1, 0, 1], bool), np.array([0, 0, 1], bool), np.array([1, 1, 1], bool)
    assert sources({"true": c, "rm": a, "cirm": a, "length_penalty": b, "lwr": b}) == {
        "dpo_rm": None, "dpo_cirm": "dpo_rm", "dpo_length_penalty": None, "dpo_lwr": "dpo_length_penalty"}
    # the true labels' DPO trains on other pairs: equal labels to it are not a copy
    assert sources({"true": c, "rm": c, "cirm": b, "length_penalty": c, "lwr": a}) == {
        "dpo_rm": None, "dpo_cirm": None, "dpo_length_penalty": "dpo_rm", "dpo_lwr": None}


@pytest.mark.parametrize("edited", [False, True])
def test_annotate_stage_labels_the_pool_and_an_empty_intervention_copies_dpo_rm(edited, random_rm, random_rm_ckpt,
                                                                                 tiny_splits, tmp_path):
    from nanobias.reward import score

    rm, enc = random_rm
    preset = get_preset("smoke", {"rl.steps": 2, "rl.prompts_per_step": 2, "rl.group_size": 3})
    (tmp_path / "reward.pt").write_bytes(random_rm_ckpt.read_bytes())
    neurons = [(0, 1), (1, 3), (1, 7)] if edited else []
    save_intervention(tmp_path / "intervention.json", Intervention(2, 64, neurons, [5.0] * len(neurons)))
    result, _ = annotate_stage(0, tmp_path, tiny_splits, preset, 0, False, "hash")
    labels = json.loads((tmp_path / LABELS_FILE).read_text())["labels"]
    assert set(labels) == set(ANNOTATORS) and set(result["copies"]) == set(POLICIES)
    assert labels["true"] == "1" * 12 and result["counts"]["true"]["agree"] == 12
    assert (result["copies"]["dpo_cirm"] == "dpo_rm") == (not edited)
    assert (labels["cirm"] == labels["rm"]) == (not edited)
    # the base reward model's labels, from the uncached scorer
    pool = pool_pairs(tiny_splits, preset.rl, preset.pairs, 0)
    with torch.no_grad():
        r = score(rm, enc, [p.prompt for p in pool] * 2,
                  [p.chosen.text for p in pool] + [p.rejected.text for p in pool]).numpy()
    assert labels["rm"] == "".join("1" if k else "0" for k in keep_labels(r))
    got = annotated_pairs(tmp_path, "dpo_rm", tiny_splits, preset, 0)
    assert [(q.chosen.text, q.rejected.text) for q in got] == [
        (p.chosen.text, p.rejected.text) if k == "1" else (p.rejected.text, p.chosen.text)
        for p, k in zip(pool, labels["rm"])]
    with pytest.raises(ValueError, match="pool of seed"):
        annotated_pairs(tmp_path, "dpo_rm", tiny_splits, preset, 1)


def test_train_dpo_on_given_pairs_equals_its_own_pairs_and_uses_their_labels(smoke_policy, tmp_path):
    preset, splits, ckpt = smoke_policy
    rl_cfg = get_preset("smoke", {"rl.steps": 2, "rl.prompts_per_step": 2, "rl.group_size": 2}).rl
    same = make_pairs(splits.train, 8, 3, preset.pairs.planted, preset.pairs.biased_reject_rate)
    runs = {"default": None, "given": same, "swapped": relabel(same, np.zeros(8, bool))}
    for name, given in runs.items():
        train_dpo(splits, ckpt, tmp_path / f"{name}.pt", rl_cfg, preset.dpo, preset.pairs, seed=3,
                  backend="reference", pairs=given)
    weights = {name: load_policy(tmp_path / f"{name}.pt")[0].state_dict() for name in runs}
    assert all(torch.equal(weights["default"][k], weights["given"][k]) for k in weights["default"])
    assert not all(torch.equal(weights["default"][k], weights["swapped"][k]) for k in weights["default"])
    assert ((tmp_path / "default.metrics.jsonl").read_text() == (tmp_path / "given.metrics.jsonl").read_text())
    with pytest.raises(ValueError, match="expected 8 pairs"):
        train_dpo(splits, ckpt, tmp_path / "short.pt", rl_cfg, preset.dpo, preset.pairs, pairs=same[:7])


def test_the_smoke_run_reports_the_annotation_and_trains_a_dpo_policy_per_label_set(smoke_run):
    results = json.loads((smoke_run / "results.json").read_text())
    n = results["budget"]["dpo_preference_pairs"] * len(results["seeds"])
    assert set(results["annotation"]) == set(ANNOTATORS)
    for a, v in results["annotation"].items():
        assert v["pairs"] == n and 0 <= v["agreement"] <= 1 and set(v["favours_more"]) == set(ATTRIBUTES), a
    assert results["annotation"]["true"]["agreement"] == 1.0
    assert results["annotation"]["true"]["favours_more"]["length"] > 0.6  # planted at 0.8
    for name in POLICIES:
        assert name in results["policy"] and name in results["policy_std"] and len(results["policy_seeds"][name]) == 1
    copies = json.loads((smoke_run / "stages" / "annotate.json").read_text())["result"]["copies"]
    empty = not json.loads((smoke_run / "intervention.json").read_text())["neurons"]
    assert (copies["dpo_cirm"] == "dpo_rm") or not empty
    for name, source in copies.items():
        stage = json.loads((smoke_run / "stages" / f"{name}.json").read_text())["result"]
        assert stage["pairs"] == results["budget"]["dpo_preference_pairs"], name
        if source:  # the same labels: the first run's files and result, not a second training
            assert (smoke_run / f"{name}.pt").read_bytes() == (smoke_run / f"{source}.pt").read_bytes()
            assert stage == json.loads((smoke_run / "stages" / f"{source}.json").read_text())["result"]
    report = (smoke_run / "report.md").read_text()
    assert "| annotator | agreement | favours more length |" in report and "| cirm | " in report
    assert "| true | 100.00% |" in report
