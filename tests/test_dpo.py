import math

import pytest
import torch

from nanobias import rl
from nanobias.checkpoint import load_policy
from nanobias.dpo import (encode_pairs, pair_logprobs, pair_samples, preference_loss, sequence_logprobs,
                          train_dpo)
from nanobias.preferences import make_pairs
from nanobias.presets import get_preset


def test_dpo_and_ipo_losses_match_hand_computed_values():
    # pair 1: chosen log-ratio -1 - (-2) = 1, rejected -3 - (-2) = -1, so h = 2
    # pair 2: chosen -2 - (-1) = -1, rejected -1 - (-1) = 0, so h = -1
    logp_c = torch.tensor([-1.0, -2.0], requires_grad=True)
    logp_r = torch.tensor([-3.0, -1.0], requires_grad=True)
    ref_c, ref_r = torch.tensor([-2.0, -1.0]), torch.tensor([-2.0, -1.0])
    beta = 0.1
    loss, stats = preference_loss(logp_c, logp_r, ref_c, ref_r, beta, "dpo")
    # -log sigmoid(0.2) = log(1 + e^-0.2), -log sigmoid(-0.1) = log(1 + e^0.1)
    expected = (math.log(1 + math.exp(-0.2)) + math.log(1 + math.exp(0.1))) / 2
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    assert expected == pytest.approx((0.598138869 + 0.744396660) / 2, abs=1e-8)
    assert stats["margin"] == pytest.approx(0.5) and stats["acc"] == pytest.approx(0.5)
    assert stats["chosen_ratio"] == pytest.approx(0.0) and stats["rejected_ratio"] == pytest.approx(-0.5)
    loss.backward()
    # dL/dlogp_c = -beta * sigmoid(-beta h) / P; the rejected side gets the opposite sign
    sig = lambda x: 1 / (1 + math.exp(-x))
    assert logp_c.grad.tolist() == pytest.approx([-0.1 * sig(-0.2) / 2, -0.1 * sig(0.1) / 2], abs=1e-6)
    assert logp_r.grad.tolist() == pytest.approx([0.1 * sig(-0.2) / 2, 0.1 * sig(0.1) / 2], abs=1e-6)

    logp_c.grad = logp_r.grad = None
    loss, _ = preference_loss(logp_c, logp_r, ref_c, ref_r, beta, "ipo")
    # target margin 1 / (2 * 0.1) = 5: ((2 - 5)^2 + (-1 - 5)^2) / 2
    assert loss.item() == pytest.approx((9 + 36) / 2)
    loss.backward()
    assert logp_c.grad.tolist() == pytest.approx([2 * (2 - 5) / 2, 2 * (-1 - 5) / 2])


def test_ipo_loss_is_zero_at_its_target_and_dpo_keeps_pushing():
    h = torch.tensor([5.0])  # = 1 / (2 * 0.1)
    zero = torch.zeros(1)
    ipo, _ = preference_loss(h, zero, zero, zero, 0.1, "ipo")
    dpo, _ = preference_loss(h, zero, zero, zero, 0.1, "dpo")
    assert ipo.item() == pytest.approx(0.0)
    assert dpo.item() == pytest.approx(math.log(1 + math.exp(-0.5)), abs=1e-6)


def test_preference_loss_rejects_unknown_loss_name():
    x = torch.zeros(1)
    with pytest.raises(ValueError, match="dpo.*ipo"):
        preference_loss(x, x, x, x, 0.1, "kto")


# ---------------------------------------------------------------- on a smoke policy

def test_sequence_logprobs_sum_the_completion_tokens_of_prompt_plus_completion(smoke_policy):
    preset, splits, ckpt = smoke_policy
    model, enc, _ = load_policy(ckpt)
    pairs = make_pairs(splits.train, 3, seed=1)
    samples = pair_samples(enc, pairs, model.config.block_size)
    assert samples.tokens.shape[0] == 6
    got = sequence_logprobs(model, samples, backend="reference")
    texts = [p.chosen.text for p in pairs] + [p.rejected.text for p in pairs]
    for row, (pair, text) in enumerate(zip(pairs * 2, texts)):
        prompt = enc.encode_ordinary(pair.prompt)
        completion = enc.encode_ordinary(text) + [enc.eot_token]
        with torch.no_grad():  # each sequence alone, unpadded: an independent computation
            logp = torch.log_softmax(model(torch.tensor([prompt + completion]))[0], -1)  # [L, V]
        expected = sum(logp[len(prompt) - 1 + t, tok].item() for t, tok in enumerate(completion))
        assert got[row].item() == pytest.approx(expected, abs=1e-3)
        assert int(samples.mask[row].sum()) == len(completion)


def test_pair_logprobs_in_length_chunks_equal_one_padded_batch(smoke_policy):
    preset, splits, ckpt = smoke_policy
    model, enc, _ = load_policy(ckpt)
    pairs = make_pairs(splits.train, 5, seed=3, planted=preset.pairs.planted)
    with torch.no_grad():
        whole = sequence_logprobs(model, pair_samples(enc, pairs, model.config.block_size), backend="torch")
        chunked = pair_logprobs(model, enc, pairs, chunk=3, backend="torch")
    assert torch.allclose(whole, chunked, atol=1e-4)


def test_encode_pairs_cuts_long_prompts_from_the_left_and_keeps_completions_whole(smoke_policy):
    preset, splits, ckpt = smoke_policy
    _, enc, _ = load_policy(ckpt)
    pairs = make_pairs(splits.train, 2, seed=4)
    full_prompts, full_completions = encode_pairs(enc, pairs, block_size=10_000)
    block = max(len(c) for c in full_completions) + 5
    prompts, completions = encode_pairs(enc, pairs, block_size=block)
    assert completions == full_completions
    longest = max(len(c) for c in completions)
    for p, full in zip(prompts, full_prompts):
        assert len(p) == min(len(full), block - longest) and p == full[len(full) - len(p):]
    assert any(len(p) < len(full) for p, full in zip(prompts, full_prompts))
    with pytest.raises(ValueError, match="block_size"):
        encode_pairs(enc, pairs, block_size=max(len(c) for c in full_completions))


def test_sequence_logprobs_agree_across_kernel_backends(smoke_policy):
    preset, splits, ckpt = smoke_policy
    model, enc, _ = load_policy(ckpt)
    samples = pair_samples(enc, make_pairs(splits.train, 2, seed=2), model.config.block_size)
    with torch.no_grad():
        torch_path = sequence_logprobs(model, samples, backend="torch")
        triton_path = sequence_logprobs(model, samples, backend="triton")  # interpreted on CPU (conftest)
    assert torch.allclose(torch_path, triton_path, atol=1e-3)


def margins(policy_ckpt, ref_ckpt, pairs):
    """Implicit reward margin h of each pair [P] and the chosen side's log-ratio [P]."""
    policy, enc, _ = load_policy(policy_ckpt)
    ref, _, _ = load_policy(ref_ckpt)
    with torch.no_grad():
        ratio = pair_logprobs(policy, enc, pairs, 32, "torch") - pair_logprobs(ref, enc, pairs, 32, "torch")
    return ratio[:len(pairs)] - ratio[len(pairs):], ratio[:len(pairs)]


def test_dpo_end_to_end_learns_held_out_preferences_without_collapsing(smoke_policy, sampled_oracle_reward, tmp_path):
    preset, splits, ckpt = smoke_policy
    out = tmp_path / "dpo.pt"
    result = train_dpo(splits, ckpt, out, preset.rl, preset.dpo, preset.pairs, seed=0, loss="dpo", backend="torch",
                       score_fn=rl.make_scorer(oracle=True))
    cfg = preset.rl
    assert result["pairs"] == cfg.steps * cfg.prompts_per_step * cfg.group_size  # GRPO's reward-model calls
    history = result["history"]
    assert [h["step"] for h in history] == list(range(cfg.steps))
    assert all(math.isfinite(h["loss"]) for h in history)
    assert history[0]["margin"] == pytest.approx(0.0, abs=1e-3)  # policy == reference before the first update
    assert len(rl.metrics_path(out).read_text().splitlines()) == cfg.steps
    assert rl.reward_curve_path(out).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert set(result["stability"]) == {"reward_fluctuation", "final_reward_mean"}
    _, _, meta = load_policy(out)
    assert meta["stage"] == "dpo" and meta["pairs"] == result["pairs"]

    held_out = make_pairs(splits.test, 64, seed=5, planted=preset.pairs.planted,
                          biased_reject_rate=preset.pairs.biased_reject_rate)
    h, chosen_ratio = margins(out, ckpt, held_out)
    assert h.mean() > 1.0 and (h > 0).float().mean() > 0.6  # preferences carry over to unseen templates
    assert chosen_ratio.mean() > 0
    before = sampled_oracle_reward(ckpt, splits.train, cfg.max_new_tokens, 4)
    after = sampled_oracle_reward(out, splits.train, cfg.max_new_tokens, 4)
    assert after > before - 0.05, (before, after)


def test_ipo_end_to_end_moves_the_margin_toward_its_target(smoke_policy, tmp_path):
    _, splits, ckpt = smoke_policy
    preset = get_preset("smoke", {"rl.steps": 4})
    out = tmp_path / "ipo.pt"
    result = train_dpo(splits, ckpt, out, preset.rl, preset.dpo, preset.pairs, seed=0, loss="ipo", backend="torch")
    history = result["history"]
    assert result["stability"] == {} and not rl.reward_curve_path(out).exists()  # no score_fn: no probe
    assert "reward_mean" not in history[0]
    assert history[0]["loss"] == pytest.approx((1 / (2 * preset.dpo.beta)) ** 2, rel=1e-3)  # h = 0 at the start
    assert all(math.isfinite(h["loss"]) for h in history)
    assert history[-1]["margin"] > 0.5
