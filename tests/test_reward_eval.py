import json

import numpy as np
import pytest
import torch

from nanobias.data import load_splits
from nanobias.selection import InterventionConfig, select_intervention
from nanobias.model import GPT, GPTConfig
from nanobias.preferences import PairConfig, make_pairs
from nanobias.render import ATTRIBUTES
from nanobias.length_baselines import fit_length_penalty, lowess
from nanobias.reward_eval import (RewardEvalConfig, evaluate_reward_models, format_reward_table, length_from_position,
                                  method_metrics, pair_metrics, shifted_positions)

N_LAYER, N_EMBD = 2, 16
H = 4 * N_EMBD  # MLP neurons per layer


TINY_SEARCH = InterventionConfig(k_fractions=(1 / 64, 1 / 32))
TINY_PAIRS = PairConfig(val_pairs=12, test_pairs=10)
TINY_EVAL = RewardEvalConfig(sensitivity_completions=4)


# ---------------------------------------------------------------- metrics and baselines

def test_pair_metrics_on_hand_made_pairs():
    r_c, r_r = [1.0, 0.0, 2.0, 1.0], [0.0, 1.0, 1.0, 1.0]  # right, wrong, right, tie (= wrong)
    length_c, length_r = [10, 10, 5, 7], [5, 5, 10, 7]  # biased: pairs 0, 1; unbiased: pair 2; tie: pair 3
    attrs_c = {a: length_c for a in ATTRIBUTES}
    attrs_r = {a: length_r for a in ATTRIBUTES}
    m = pair_metrics(r_c, r_r, attrs_c, attrs_r)
    assert m["acc"] == 0.5
    assert m["acc_biased"]["length"] == 0.5 and m["acc_unbiased"]["length"] == 1.0
    assert m["n_biased"]["length"] == 2 and m["n_unbiased"]["length"] == 1
    none = pair_metrics([1.0], [0.0], {a: [1] for a in ATTRIBUTES}, {a: [0] for a in ATTRIBUTES})
    assert none["acc_unbiased"]["bold"] is None
    by_kind = pair_metrics(r_c, r_r, attrs_c, attrs_r, kinds=["ambig", "who_did_it", "who_did_it", "ambig"])
    assert by_kind["acc_by_kind"] == {"ambig": 0.5, "who_did_it": 0.5, "not_unknown": None}


def test_length_penalty_recovers_the_length_term():
    rng = np.random.default_rng(0)
    n = 400
    len_c, len_r = rng.uniform(10, 200, n), rng.uniform(10, 200, n)
    r_c, r_r = 1.0 + 0.05 * len_c, 0.05 * len_r  # content adds 1 to the chosen side, length 0.05/char
    assert (r_c > r_r).mean() < 0.7
    alpha = fit_length_penalty(r_c, r_r, len_c, len_r)
    assert 0.05 - 1 / 190 < alpha < 0.05 + 1 / 190  # any alpha in this band orders every pair right
    assert ((r_c - alpha * len_c) > (r_r - alpha * len_r)).mean() == 1.0
    assert fit_length_penalty(r_c - 0.05 * len_c, r_r - 0.05 * len_r, len_c, len_r) == 0.0  # nothing to remove


def test_lowess_reproduces_a_line_and_matches_a_hand_fit():
    x = np.array([0.0, 1.0, 2.0, 3.0, 4.0, 5.0])
    np.testing.assert_allclose(lowess(x, 3 * x - 1, [0.5, 2.0, 4.5]), [0.5, 5.0, 12.5], atol=1e-9)
    # hand fit at q = 0 with frac 0.5 -> 3 nearest points (x = 0, 1, 2), h = 2:
    # weights (1 - (d/2)^3)^3 = 1, (7/8)^3, 0 (+ the 1e-12 sliver) -> the line through (0, y0), (1, y1)
    y = np.array([1.0, 3.0, 0.0, 9.0, 9.0, 9.0])
    assert lowess(x, y, [0.0], frac=0.5)[0] == pytest.approx(1.0, abs=1e-6)
    # subtracting the fitted curve removes a smooth length trend
    rng = np.random.default_rng(1)
    length = rng.uniform(10, 300, 500)
    reward = np.sqrt(length) + rng.normal(0, 0.3, 500)
    residual = reward - lowess(length, reward, length)
    assert abs(np.corrcoef(length, residual)[0, 1]) < 0.05 < np.corrcoef(length, reward)[0, 1]
    with pytest.raises(ValueError, match="lowess"):
        lowess([1.0], [1.0], [1.0])


def test_method_metrics_sensitivity_by_hand():
    pairs = make_pairs(load_splits("synthetic", seed=0, variants_per_template=1).test, 2, 0)
    # rewards: 4 test completions (chosen 0, chosen 1, rejected 0, rejected 1), then one bumped text per attribute
    items = {a: [(0, "bumped")] for a in ATTRIBUTES}
    r = np.array([1.0, 3.0, 0.0, 2.0] + [1.0 + 0.5 * j for j in range(len(ATTRIBUTES))])
    m = method_metrics(r, 2, pairs, items)
    std = np.std([1.0, 3.0, 0.0, 2.0])
    assert m["acc"] == 1.0
    assert m["sensitivity"]["length"] == 0.0 and m["sensitivity"]["paragraphs"] == pytest.approx(0.5 / std)


# ---------------------------------------------------------------- positions

def tiny_model(seed=0):
    torch.manual_seed(seed)
    return GPT(GPTConfig(block_size=32, vocab_size=61, n_layer=2, n_head=2, n_embd=16)).eval()


def test_shifted_positions_reads_shifted_position_embeddings():
    model = tiny_model()
    idx = torch.randint(0, 61, (2, 12), generator=torch.Generator().manual_seed(2))
    shifted = tiny_model()  # same weights, but position p embeds as p + 5 does in `model`
    shifted.transformer.wpe.weight.data[:-5] = model.transformer.wpe.weight.data[5:]
    with torch.no_grad():
        with shifted_positions(model, torch.tensor([5, 0])):
            out = model(idx, torch.ones_like(idx))
        torch.testing.assert_close(out[0], shifted(idx[:1])[0], atol=1e-6, rtol=0)
        torch.testing.assert_close(out[1], model(idx[1:])[0], atol=1e-6, rtol=0)
        try:
            with shifted_positions(model, torch.tensor([21, 0])):
                model(idx, torch.ones_like(idx))
        except ValueError as e:
            assert "block_size=32" in str(e)
        else:
            raise AssertionError("an offset past block_size must raise")
        # the hook is gone afterwards, also after the error: the plain positions again
        torch.testing.assert_close(model(idx, torch.ones_like(idx))[0], model(idx[:1])[0], atol=1e-6, rtol=0)


def test_length_from_position_is_zero_for_an_unchanged_length(random_rm, tiny_splits):
    rm, enc = random_rm
    pair = make_pairs(tiny_splits.test, 1, 0)[0]
    same = length_from_position(rm, enc, [pair.prompt], [pair.chosen.text], [pair.chosen.text])
    longer = length_from_position(rm, enc, [pair.prompt], [pair.chosen.text], [pair.chosen.text + " Fine." * 4])
    assert same[0] == 0.0 and longer[0] != 0.0


def test_length_from_position_is_zero_for_a_rotary_model(random_rm, tiny_splits):
    """RoPE sees relative positions only: the same text read later in the window gets the same reward."""
    from nanobias.reward import reward_model_from_policy, score

    _, enc = random_rm
    torch.manual_seed(0)
    policy = GPT(GPTConfig(block_size=256, vocab_size=enc.n_vocab, n_layer=2, n_head=2, n_embd=16, position="rotary"))
    rm = reward_model_from_policy(policy, seed=0).eval()
    with torch.no_grad():
        rm.head.weight.normal_(0, 1.0, generator=torch.Generator().manual_seed(1))
    pairs = make_pairs(tiny_splits.test, 3, 0)
    prompts, texts = [p.prompt for p in pairs], [p.chosen.text for p in pairs]
    from_position = length_from_position(rm, enc, prompts, texts, [t + " Fine." * 4 for t in texts])
    assert np.abs(from_position).max() < 1e-5
    r = score(rm, enc, prompts, texts).numpy()
    assert r.max() - r.min() > 1e-3  # not a constant reward: the zero is the positions', not the head's


# ---------------------------------------------------------------- the stage end to end

def test_evaluation_writes_the_design_section(random_rm_ckpt, tiny_splits, tmp_path):
    select_intervention(tiny_splits, random_rm_ckpt, tmp_path / "intervention.json", TINY_SEARCH, TINY_PAIRS)
    results = evaluate_reward_models(tiny_splits, random_rm_ckpt, tmp_path / "intervention.json", tmp_path, TINY_EVAL, TINY_PAIRS)
    for method in ("base", "cirm", "cirm_all", "all_neurons", "length_penalty", "lwr"):
        assert set(results[method]) >= {"acc", "acc_biased", "acc_unbiased", "sensitivity"}
        assert set(results[method]["sensitivity"]) == set(ATTRIBUTES)
    assert results["neurons"]["total"] == N_LAYER * H and len(results["neurons"]["per_layer"]) == N_LAYER
    assert np.isfinite(results["length_from_position"])
    # the scorer's measured cost per call (a measurement: only its presence and sign are checked)
    assert results["scorer"]["seconds_per_1k_calls"] > 0 and results["scorer"]["layers"] == N_LAYER
    assert results["scorer"]["completions"] > 2 * TINY_PAIRS.test_pairs  # the pairs' and the bumped texts
    assert "scoring:" in format_reward_table(results) and "2 of 2 layers" in format_reward_table(results)
    assert json.loads((tmp_path / "reward_eval.json").read_text())["base"]["acc"] == results["base"]["acc"]
    assert (tmp_path / "neurons_per_layer.png").stat().st_size > 0
    assert (tmp_path / "reward_biased_unbiased.png").stat().st_size > 0
    base_only = evaluate_reward_models(tiny_splits, random_rm_ckpt, None, tmp_path / "base", TINY_EVAL, TINY_PAIRS)
    assert "cirm" not in base_only and base_only["base"]["acc"] == results["base"]["acc"]
