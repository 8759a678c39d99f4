import math
import random

import numpy as np
import pytest
import torch

from nanobias.checkpoint import load_checkpoint, save_policy
from nanobias.data import (ATTRIBUTES, Style, load_splits, pretraining_documents, render_completion,
                           render_prompt, synthetic_examples)
from nanobias.model import GPT, GPTConfig
from nanobias.reward import (BALANCED, PAIR_KINDS, PLANTED, PairConfig, RewardConfig, bradley_terry_loss, bump, fit_length_penalty,
                             load_reward_model, lowess, make_pair, make_pairs, pair_kind, pair_metrics, planted_rates,
                             regression_loss, reward_model_from_policy, right_answer, score, score_pairs,
                             train_reward_model)
from nanobias.tokenizer import train_bpe


@pytest.fixture(scope="module")
def splits():
    return load_splits("synthetic", seed=0, variants_per_template=1)


@pytest.fixture(scope="module")
def tiny_policy(tmp_path_factory, splits):
    """A random tiny GPT with a small BPE trained on the synthetic world, saved as a policy."""
    enc = train_bpe(pretraining_documents(synthetic_examples(0, 1), 0.8, 0, 0.5), 400)
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=256, vocab_size=enc.n_vocab, n_layer=2, n_head=2, n_embd=32))
    path = tmp_path_factory.mktemp("policy") / "policy.pt"
    save_policy(path, model, enc)
    return path, model, enc


def test_bradley_terry_loss_matches_hand_value():
    r_c, r_r = torch.tensor([1.0, 0.0, 30.0]), torch.tensor([0.0, 2.0, -30.0])
    sig = lambda z: 1 / (1 + math.exp(-z))  # noqa: E731
    expected = -(math.log(sig(1.0)) + math.log(sig(-2.0)) + math.log(sig(60.0))) / 3
    assert bradley_terry_loss(r_c, r_r).item() == pytest.approx(expected, rel=1e-6)
    # large margins stay finite (logsigmoid, not log(sigmoid))
    assert math.isfinite(bradley_terry_loss(torch.tensor([-200.0]), torch.tensor([200.0])).item())


def test_regression_loss_matches_hand_value():
    assert regression_loss(torch.tensor([0.5, 2.0]), torch.tensor([1.0, 0.0])).item() == pytest.approx((0.25 + 4) / 2)


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


def test_score_does_not_depend_on_the_rest_of_the_batch(tiny_policy, splits):
    _, model, enc = tiny_policy
    rm = reward_model_from_policy(model, seed=0)
    ex = splits.test[0]
    prompt = render_prompt(ex)
    short = render_completion(ex, 0).text
    long = render_completion(ex, 1, Style(justification=True, filler=3, paragraphs=2)).text
    alone = score(rm, enc, [prompt], [short])
    mixed = score(rm, enc, [prompt, "x", prompt], [long, short, short], batch_size=3)
    torch.testing.assert_close(mixed[2], alone[0], atol=1e-5, rtol=0)
    # the order of the inputs is kept although batches are sorted by length
    torch.testing.assert_close(score(rm, enc, [prompt, prompt], [short, long], batch_size=1),
                               torch.stack([alone[0], score(rm, enc, [prompt], [long])[0]]), atol=1e-5, rtol=0)


def test_reward_model_starts_from_the_policy(tiny_policy):
    _, model, _ = tiny_policy
    rm = reward_model_from_policy(model, seed=0)
    for name, p in model.state_dict().items():
        if name != "lm_head.weight":
            assert torch.equal(rm.gpt.state_dict()[name], p), name
    assert torch.equal(rm.head.weight, reward_model_from_policy(model, seed=0).head.weight)


def test_train_checkpoint_and_reload(tiny_policy, splits, tmp_path):
    policy_path, _, enc = tiny_policy
    cfg = RewardConfig(steps=3, batch_size=3, lr=1e-3, warmup=1, eval_every=3, ckpt_every=3)
    path = train_reward_model(splits, policy_path, tmp_path / "reward.pt", cfg, PairConfig(val_pairs=4, test_pairs=4),
                              seed=0)
    meta = load_checkpoint(path)["meta"]
    assert meta["kind"] == "reward" and meta["loss"] == "bt" and meta["model_config"]["n_embd"] == 32
    rm, enc2, _ = load_reward_model(path)
    pairs = make_pairs(splits.test, 4, 0)
    r_c, r_r = score_pairs(rm, enc2, pairs)
    assert r_c.shape == (4,) and torch.isfinite(torch.cat([r_c, r_r])).all()
    assert enc2.encode_ordinary("The grandson.") == enc.encode_ordinary("The grandson.")
    # training changed the backbone (it is fine-tuned, not frozen)
    policy_wte = load_checkpoint(policy_path)["model"]["transformer.wte.weight"]
    assert not torch.equal(rm.gpt.transformer.wte.weight, policy_wte)
    with pytest.raises(ValueError, match="not a reward checkpoint"):
        load_reward_model(policy_path)


def test_regression_loss_trains(tiny_policy, splits, tmp_path):
    policy_path, _, _ = tiny_policy
    cfg = RewardConfig(steps=2, batch_size=2, lr=1e-3, warmup=1, eval_every=2, ckpt_every=2, loss="regression")
    path = train_reward_model(splits, policy_path, tmp_path / "r.pt", cfg, PairConfig(val_pairs=4, test_pairs=4))
    assert load_checkpoint(path)["meta"]["loss"] == "regression"


def test_bad_config_is_rejected():
    with pytest.raises(ValueError, match="reward loss"):
        RewardConfig(loss="hinge")
    with pytest.raises(ValueError, match="pairs.planted"):
        PairConfig(planted={"length": 0.9})
    with pytest.raises(ValueError, match="pairs.val_pairs"):
        PairConfig(val_pairs=1)


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
