import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from nanobias.data import Splits
from nanobias.intervention import (Intervention, column_medians, last_token_rewards, load_intervention, prefill,
                                   save_intervention)
from nanobias.selection import InterventionConfig, build_intervention, k_grid, search_k, select_intervention
from nanobias.preferences import PairConfig, make_pairs
from nanobias.render import ATTRIBUTES
from nanobias.reward import score

N_LAYER, N_EMBD = 2, 16
H = 4 * N_EMBD  # MLP neurons per layer


def texts(pairs):
    return [p.prompt for p in pairs] * 2, [p.chosen.text for p in pairs] + [p.rejected.text for p in pairs]


# ---------------------------------------------------------------- selection

@pytest.mark.parametrize("n", [1, 6, 7])
def test_column_medians_match_numpy(n):
    x = torch.randn(n, 5, generator=torch.Generator().manual_seed(n))
    np.testing.assert_allclose(column_medians(x).numpy(), np.median(x.double().numpy(), axis=0), rtol=1e-12)


def test_build_intervention_takes_top_and_bottom_k_with_validation_medians():
    g = torch.Generator().manual_seed(0)
    acts = torch.randn(9, N_LAYER, H, generator=g)  # validation activations
    rho = torch.zeros(len(ATTRIBUTES), N_LAYER * H)
    rho[0, [5, 70, 3]] = torch.tensor([0.9, 0.8, 0.1])  # length: largest 5, 70
    rho[0, [100, 12]] = torch.tensor([-0.9, -0.7])  # smallest 100, 12
    iv = build_intervention(rho, acts, {"length": 2})
    assert iv.neurons == [(0, 5), (0, 12), (1, 6), (1, 36)]  # flat 5, 12, 70, 100 as (layer, index)
    expected = [float(np.median(acts[:, layer, i].numpy())) for layer, i in iv.neurons]
    np.testing.assert_allclose(iv.medians, expected, rtol=1e-6)
    assert iv.per_layer() == [2, 2] and iv.k["length"] == 2 and iv.k["bold"] == 0
    assert build_intervention(rho, acts, {}).neurons == []


def test_search_k_finds_the_best_grid_point_and_prefers_small_k():
    best = {"length": 8, "paragraphs": 2, "overlap": 0, "exclamations": 0, "bold": 0}
    calls = []

    def accuracy(k):  # peaked at `best`; bold has no effect at all (a plateau)
        calls.append(dict(k))
        return 1.0 - sum(abs(k[a] - best[a]) for a in ("length", "paragraphs", "overlap", "exclamations")) / 100

    k, history = search_k(accuracy, [0, 2, 4, 8])
    assert k == best
    assert len(calls) == len({tuple(c.values()) for c in calls}) == len(history)  # each candidate evaluated once
    # candidates over the neuron budget (None) are never chosen, however accurate they would be
    within_budget = lambda k: None if sum(k.values()) > 6 else accuracy(k)  # noqa: E731
    assert search_k(within_budget, [0, 2, 4, 8])[0] == {**best, "length": 4}


def test_k_grid_scales_with_model_size():
    assert k_grid(2048, (1 / 1024, 1 / 512, 1 / 256)) == [0, 2, 4, 8]
    assert k_grid(100, (1 / 1024, 1 / 512)) == [0, 1]


# ---------------------------------------------------------------- median replacement

def random_intervention(neurons, positions="last"):
    medians = [0.5 + 0.1 * i for i in range(len(neurons))]
    return Intervention(N_LAYER, H, neurons, medians, positions)


def test_empty_selection_is_exactly_the_identity(random_rm, tiny_splits):
    rm, enc = random_rm
    prompts, completions = texts(make_pairs(tiny_splits.val, 6, 0))
    base = score(rm, enc, prompts, completions)
    for positions in ("last", "all"):
        assert torch.equal(score(rm, enc, prompts, completions, random_intervention([], positions)), base)


def test_median_replacement_changes_only_the_selected_neurons(random_rm, tiny_splits):
    rm, enc = random_rm
    prompts, completions = texts(make_pairs(tiny_splits.val, 4, 0))
    batches = prefill(rm, enc, prompts, completions)
    r0, acts0 = last_token_rewards(rm, batches, capture=True)
    iv = random_intervention([(0, 3), (0, 40), (1, 7)])
    r1, acts1 = last_token_rewards(rm, batches, iv, capture=True)
    selected = torch.zeros(N_LAYER, H, dtype=torch.bool)
    selected[0, [3, 40]] = selected[1, 7] = True
    # layer 0: the selected neurons hold their medians, every other neuron is untouched
    assert acts1[:, 0, 3].eq(iv.medians[0]).all() and acts1[:, 0, 40].eq(iv.medians[1]).all()
    torch.testing.assert_close(acts1[:, 0][:, ~selected[0]], acts0[:, 0][:, ~selected[0]], atol=1e-6, rtol=0)
    assert acts1[:, 1, 7].eq(iv.medians[2]).all()
    assert not torch.allclose(r0, r1)
    # the sites are restored afterwards, also after an error inside the block
    with pytest.raises(RuntimeError):
        with iv.applied(rm.gpt):
            raise RuntimeError
    assert all(s.clamp is None and not s._forward_hooks for s in rm.gpt.neuron_sites)
    torch.testing.assert_close(last_token_rewards(rm, batches), r0, atol=0, rtol=0)


def test_last_position_leaves_earlier_positions_alone(random_rm, tiny_splits):
    rm, enc = random_rm
    prompts, completions = texts(make_pairs(tiny_splits.val, 2, 0))
    ids = torch.tensor([enc.encode_ordinary(prompts[0] + completions[0]) + [enc.eot_token]])
    with torch.no_grad():
        plain = rm.gpt(ids)  # [1, T, C] final hidden states (the reward model has no LM head)
        with random_intervention([(0, 3), (1, 7)], "last").applied(rm.gpt):
            last = rm.gpt(ids)
        with random_intervention([(0, 3), (1, 7)], "all").applied(rm.gpt):
            every = rm.gpt(ids)
    assert torch.equal(last[:, :-1], plain[:, :-1]) and not torch.allclose(last[:, -1], plain[:, -1])
    assert not torch.allclose(every[:, :-1], plain[:, :-1])


def test_cached_prefix_scoring_equals_full_scoring(random_rm, tiny_splits):
    rm, enc = random_rm
    prompts, completions = texts(make_pairs(tiny_splits.val, 5, 3))
    batches = prefill(rm, enc, prompts, completions, batch_size=4)
    iv = random_intervention([(0, 1), (1, 2), (1, 50)])
    torch.testing.assert_close(last_token_rewards(rm, batches), score(rm, enc, prompts, completions), atol=1e-5, rtol=0)
    torch.testing.assert_close(last_token_rewards(rm, batches, iv), score(rm, enc, prompts, completions, iv),
                               atol=1e-5, rtol=0)
    # repeated passes over the same cache give the same answer
    torch.testing.assert_close(last_token_rewards(rm, batches, iv), last_token_rewards(rm, batches, iv), atol=0, rtol=0)
    with pytest.raises(ValueError, match="positions='last'"):
        last_token_rewards(rm, batches, replace(iv, positions="all"))


def test_intervention_json_round_trip_and_errors(tmp_path):
    iv = Intervention(N_LAYER, H, [(0, 3), (1, 7)], [0.25, -0.5], "last", {"length": 1},
                      {"length": [(0, 3, 0.9), (1, 7, -0.8)]})
    save_intervention(tmp_path / "iv.json", iv, note="x")
    back = load_intervention(tmp_path / "iv.json")
    assert back.neurons == iv.neurons and back.medians == iv.medians and back.k == iv.k
    data = json.loads((tmp_path / "iv.json").read_text())
    del data["medians"]
    (tmp_path / "bad.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"bad.json: field 'medians' missing"):
        load_intervention(tmp_path / "bad.json")
    with pytest.raises(ValueError, match=r"neuron \(2, 0\): expected integers within 2 layers"):
        Intervention(N_LAYER, H, [(2, 0)], [0.0])
    with pytest.raises(ValueError, match="positions"):
        Intervention(N_LAYER, H, [], [], "first")


@pytest.mark.parametrize("field, value, said", [
    ("medians", [float("nan"), 0.0], "'medians', entry 0: expected a finite number, got nan"),
    ("medians", [0.0, float("inf")], "entry 1: expected a finite number, got inf"),
    ("medians", ["0.5", 0.0], "entry 0: expected a finite number, got '0.5'"),
    ("neurons", [[0, 3.0], [1, 7]], "neuron (0, 3.0): expected integers"),
])
def test_an_intervention_file_with_bad_values_is_refused_naming_the_field(tmp_path, field, value, said):
    iv = Intervention(N_LAYER, H, [(0, 3), (1, 7)], [0.25, -0.5])
    save_intervention(tmp_path / "iv.json", iv)
    data = json.loads((tmp_path / "iv.json").read_text())
    data[field] = value
    (tmp_path / "iv.json").write_text(json.dumps(data))  # json writes NaN and Infinity, as a hand edit might
    with pytest.raises(ValueError) as raised:
        load_intervention(tmp_path / "iv.json")
    assert str(tmp_path / "iv.json") in str(raised.value) and said in str(raised.value)
    (tmp_path / "iv.json").write_text("{not json")
    with pytest.raises(ValueError, match="iv.json: not JSON"):
        load_intervention(tmp_path / "iv.json")


# ---------------------------------------------------------------- the stage end to end

TINY_SEARCH = InterventionConfig(k_fractions=(1 / 64, 1 / 32))
TINY_PAIRS = PairConfig(val_pairs=12, test_pairs=10)


def test_selection_uses_only_validation_data(random_rm_ckpt, tiny_splits, tmp_path):
    select_intervention(tiny_splits, random_rm_ckpt, tmp_path / "a.json", TINY_SEARCH, TINY_PAIRS, seed=0)
    other_test = Splits(tiny_splits.train, tiny_splits.val, tiny_splits.test[::-1][:20], tiny_splits.heldout)
    select_intervention(other_test, random_rm_ckpt, tmp_path / "b.json", TINY_SEARCH, TINY_PAIRS, seed=0)
    a, b = json.loads((tmp_path / "a.json").read_text()), json.loads((tmp_path / "b.json").read_text())
    assert a == b
    assert set(a["k"]) == set(ATTRIBUTES) and all(v in (0, 2, 4) for v in a["k"].values())
    assert a["val_acc"] >= a["base_val_acc"]  # k = 0 everywhere is a candidate
