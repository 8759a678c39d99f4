import json
import math
import statistics
from dataclasses import replace

import pytest
import torch

from nanobias import rl
from nanobias.checkpoint import load_policy
from nanobias.grpo import GRPOConfig, group_advantages, grpo_loss, grpo_step, grpo_update, train_grpo
from nanobias.presets import get_preset
from nanobias.sampling import completion_logprobs
from nanobias.optim import make_optimizer


def rollout_of(policy_ckpt, splits, rl_cfg, step=0):
    model, enc, _ = load_policy(policy_ckpt)
    examples = rl.prompt_batch(splits.train, rl_cfg.prompts_per_step, seed=0, step=step)
    return model, rl.rollout(model, enc, examples, rl_cfg, seed=step)


def hand_advantages(rewards, G, scale):
    r = rewards.view(-1, G)
    centred = r - r.mean(1, keepdim=True)
    std = {"group": r.std(1, correction=0, keepdim=True), "batch": rewards.std(correction=0), "none": None}[scale]
    return (centred if std is None else centred / (std + 1e-4)).view(-1)


# ---------------------------------------------------------------- shared RL plumbing (rl.py)

def test_prompt_batches_are_seeded_epochs():
    items = list(range(10))
    batches = [rl.prompt_batch(items, 4, seed=1, step=s) for s in range(5)]  # 20 draws = 2 epochs
    assert batches == [rl.prompt_batch(items, 4, seed=1, step=s) for s in range(5)]
    flat = sum(batches, [])
    assert sorted(flat[:10]) == items and sorted(flat[10:]) == items
    assert flat[:10] != flat[10:] and flat[:10] != items
    assert rl.prompt_batch(items, 4, seed=2, step=0) != batches[0]
    with pytest.raises(ValueError, match="no training examples"):
        rl.prompt_batch([], 4, 0, 0)


def test_stability_uses_the_last_half_of_the_steps():
    means = [0.0, 10.0, 0.2, 0.4, 0.3, 0.5]
    out = rl.stability([{"reward_mean": m} for m in means])
    assert out["final_reward_mean"] == pytest.approx(0.4)  # mean of the last 3: 0.4, 0.3, 0.5
    assert out["reward_fluctuation"] == pytest.approx(statistics.pstdev([0.4, 0.3, 0.5]))
    assert rl.stability([{"reward_mean": 0.7}]) == {"reward_fluctuation": 0.0, "final_reward_mean": 0.7}


def test_token_entropy_by_hand():
    logits = torch.zeros(3, 2, 5)  # uniform: log 5
    logits[1, 0] = torch.tensor([100.0, 0, 0, 0, 0])  # one-hot: 0
    mask = torch.tensor([[1, 1], [1, 0], [0, 0]])
    assert rl.token_entropy(logits, mask, rows=1) == pytest.approx((2 * torch.log(torch.tensor(5.0)).item() + 0) / 3)
    # temperature: p = softmax([1, 0] / 0.5) = softmax([2, 0])
    p = torch.softmax(torch.tensor([2.0, 0.0]), 0)
    assert rl.token_entropy(torch.tensor([[[1.0, 0.0]]]), torch.ones(1, 1), temperature=0.5) == pytest.approx(
        -(p * p.log()).sum().item(), rel=1e-5)


def test_make_scorer_choices():
    with pytest.raises(ValueError, match="exactly one"):
        rl.make_scorer()
    with pytest.raises(ValueError, match="exactly one"):
        rl.make_scorer(reward_ckpt="reward.pt", oracle=True)
    with pytest.raises(ValueError, match="intervention"):
        rl.make_scorer(intervention_path="x.json", oracle=True)


def test_rollout_repeats_each_prompt_for_its_group(smoke_policy):
    preset, splits, policy = smoke_policy
    cfg = rl.RLConfig(prompts_per_step=3, group_size=4, max_new_tokens=preset.rl.max_new_tokens)
    _, ro = rollout_of(policy, splits, cfg)
    assert len(ro.examples) == len(ro.prompts) == len(ro.completions) == 12 and ro.samples.tokens.shape[0] == 12
    for b in range(3):
        assert len({ex.example_id for ex in ro.examples[4 * b:4 * b + 4]}) == 1
        assert len(set(ro.prompts[4 * b:4 * b + 4])) == 1
    assert ro.examples[0].example_id != ro.examples[4].example_id


# ---------------------------------------------------------------- the loss (group_advantages, grpo_loss)

def test_group_advantages_hand_computed():
    rewards = torch.tensor([1.0, 2.0, 3.0, 0.1, 0.1, 0.1])
    std = math.sqrt(2 / 3)  # population std of (1, 2, 3)
    expected = [-1 / (std + 1e-4), 0.0, 1 / (std + 1e-4), 0.0, 0.0, 0.0]
    assert group_advantages(rewards, 3).tolist() == pytest.approx(expected, rel=1e-6)
    assert group_advantages(rewards, 3)[3:].eq(0).all()  # equal rewards give exactly 0
    batch_std = torch.tensor([1.0, 2.0, 3.0, 0.1, 0.1, 0.1], dtype=torch.float64).std(correction=0).item()
    assert group_advantages(rewards, 3, "batch")[2].item() == pytest.approx(1 / (batch_std + 1e-4), rel=1e-6)
    assert group_advantages(rewards, 3, "none").tolist() == pytest.approx([-1, 0, 1, 0, 0, 0], abs=1e-6)
    assert group_advantages(rewards, 1).eq(0).all()
    with pytest.raises(ValueError, match="group_size=4"):
        group_advantages(rewards, 4)
    with pytest.raises(ValueError, match="scale"):
        group_advantages(rewards, 3, "median")


def logits_with_logprobs(logp: torch.Tensor) -> torch.Tensor:
    """logits [R, N, 2] whose token 0 has log-probability logp [R, N] (< 0): [logp, log(1 - e^logp)].
    grpo_loss of these logits with tokens 0 is a function of logp, differentiable through it."""
    return torch.stack([logp, torch.log(-torch.expm1(logp))], dim=-1)


def test_grpo_loss_hand_computed():
    """One prompt, two completions of two tokens; every term worked out with math.exp."""
    logp = torch.tensor([[-1.0, -2.0], [-0.5, -3.0]], dtype=torch.float64, requires_grad=True)
    tokens = torch.zeros(2, 2, dtype=torch.long)
    old = torch.tensor([[-1.5, -2.0], [-0.1, -2.0]], dtype=torch.float64)
    ref = torch.tensor([[-1.2, -1.8], [-0.4, -3.1]], dtype=torch.float64)
    mask = torch.tensor([[1, 1], [1, 0]])
    rewards = torch.tensor([1.0, 0.0], dtype=torch.float64)  # mean 0.5, population std 0.5
    eps, beta = 0.2, 0.1
    adv = [0.5 / (0.5 + 1e-4), -0.5 / (0.5 + 1e-4)]
    terms, clipped, kls = {}, 0, []
    for n, t in [(0, 0), (0, 1), (1, 0)]:
        ratio = math.exp(logp[n, t].item() - old[n, t].item())
        a = adv[n]
        surrogate, surrogate_clipped = ratio * a, min(max(ratio, 1 - eps), 1 + eps) * a
        d = ref[n, t].item() - logp[n, t].item()
        kl = math.exp(d) - d - 1
        terms[n, t] = -min(surrogate, surrogate_clipped) + beta * kl
        clipped += surrogate_clipped < surrogate
        kls.append(kl)
    expected = {  # weights: per-sequence mean then mean over 2 sequences; token sum / 3; token sum / (2 * 2)
        "grpo": ((terms[0, 0] + terms[0, 1]) / 2 + terms[1, 0]) / 2,
        "dapo": sum(terms.values()) / 3,
        "dr_grpo": sum(terms.values()) / 4,
    }
    assert clipped == 2  # (0, 0): ratio e^0.5 > 1.2 with A > 0;  (1, 0): ratio e^-0.4 < 0.8 with A < 0
    for agg, value in expected.items():
        loss, stats = grpo_loss(logits_with_logprobs(logp), tokens, mask, rewards, 2, old, ref, eps, None, beta,
                                scale="group", agg=agg, backend="reference")
        assert loss.item() == pytest.approx(value, rel=1e-12)
        assert stats["kl"].item() == pytest.approx(sum(kls) / 3, rel=1e-6)
        assert stats["clip_frac"].item() == pytest.approx(2 / 3)
    loss, _ = grpo_loss(logits_with_logprobs(logp), tokens, mask, rewards, 2, old, ref, eps, None, beta,
                        scale="group", agg="dapo", backend="reference")
    loss.backward()
    # clipped tokens keep only the KL gradient beta * (1 - exp(d)); others add -A * ratio
    d00 = ref[0, 0].item() + 1.0
    assert logp.grad[0, 0].item() == pytest.approx(beta * (1 - math.exp(d00)) / 3, rel=1e-9)
    d01 = ref[0, 1].item() + 2.0
    assert logp.grad[0, 1].item() == pytest.approx((-adv[0] + beta * (1 - math.exp(d01))) / 3, rel=1e-9)
    assert logp.grad[1, 1].item() == 0.0


def test_grpo_loss_bad_inputs_raise_clear_errors():
    logits = torch.randn(2, 3, 10)
    tokens = torch.zeros(2, 3, dtype=torch.long)
    mask, rewards = torch.ones(2, 3), torch.ones(2)
    with pytest.raises(ValueError, match="logits must be a floating tensor of 3-D"):
        grpo_loss(logits[0], tokens[0], mask[0], rewards, 2)
    with pytest.raises(ValueError, match="group_size must be a positive int dividing R = 2"):
        grpo_loss(logits, tokens, mask, rewards, 3)
    with pytest.raises(ValueError, match="beta = 0.1 > 0 needs logp_ref"):
        grpo_loss(logits, tokens, mask, rewards, 2, beta=0.1)
    with pytest.raises(ValueError, match="agg must be one of"):
        grpo_loss(logits, tokens, mask, rewards, 2, agg="mean")
    with pytest.raises(ValueError, match=r"mask must have shape \[R, N\] = \(2, 3\)"):
        grpo_loss(logits, tokens, mask[:, :2], rewards, 2)
    with pytest.raises(ValueError, match=r"logp_old must be None or have shape \[R, N\]"):
        grpo_loss(logits, tokens, mask, rewards, 2, logp_old=torch.zeros(2, 1), backend="torch")
    with pytest.raises(ValueError, match="need 0 <= eps_low < 1"):
        grpo_loss(logits, tokens, mask, rewards, 2, eps_low=1.0, backend="torch")


# ---------------------------------------------------------------- the GRPO update

@pytest.mark.parametrize("agg, scale", [("grpo", "group"), ("dapo", "batch"), ("dr_grpo", "none")])
def test_first_iteration_has_ratio_one_and_no_kl_to_an_identical_reference(smoke_policy, agg, scale):
    preset, splits, policy = smoke_policy
    rl_cfg = rl.RLConfig(prompts_per_step=3, group_size=4, max_new_tokens=preset.rl.max_new_tokens)
    model, ro = rollout_of(policy, splits, rl_cfg)
    rewards = torch.tensor([1.0, 0, 0, 1, 0.5, 0.5, 0.5, 0.5, 0, 0, 0, 3])  # one group all equal
    cfg = GRPOConfig(lr=preset.grpo.lr, beta=0.5, num_iterations=2, agg=agg, scale=scale)
    stats = grpo_update(model, rl.reference_policy(model), make_optimizer(model, cfg), ro.samples,
                        rewards, rl_cfg, cfg, backend="torch")
    # ratio = 1 and kl = 0 on the first iteration, so the loss is -sum_i A_i * weight_i by hand
    A = hand_advantages(rewards, 4, scale)
    n = ro.samples.mask.sum(1).float()  # completion lengths
    R, N = ro.samples.mask.shape
    expected = {"grpo": -A.mean(), "dapo": -(A * n).sum() / n.sum(), "dr_grpo": -(A * n).sum() / (R * N)}[agg]
    assert stats[0]["loss"] == pytest.approx(expected.item(), abs=1e-6)
    assert stats[0]["kl"] == 0.0 and stats[0]["clip_frac"] == 0.0
    assert stats[1]["kl"] > 0  # after one update the policy has left the reference
    assert len(stats) == 2 and all(s["entropy"] > 0 for s in stats)


def test_equal_rewards_give_zero_loss_and_leave_the_policy_unchanged(smoke_policy):
    preset, splits, policy = smoke_policy
    rl_cfg = rl.RLConfig(prompts_per_step=2, group_size=4, max_new_tokens=preset.rl.max_new_tokens)
    cfg = GRPOConfig(lr=preset.grpo.lr, beta=0.0, num_iterations=2)
    model, enc, _ = load_policy(policy)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = make_optimizer(model, cfg)
    examples = rl.prompt_batch(splits.train, 2, seed=0, step=0)
    constant = lambda examples, prompts, completions: torch.full((len(completions),), 0.7)  # noqa: E731
    record = grpo_step(model, rl.reference_policy(model), opt, enc, examples, constant, rl_cfg, cfg,
                       seed=0, backend="torch")
    assert record["loss"] == 0.0 and record["grad_norm"] == 0.0
    assert record["reward_mean"] == pytest.approx(0.7) and record["reward_std"] == pytest.approx(0.0, abs=1e-6)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_a_better_completion_gets_more_likely(smoke_policy):
    """One update with one rewarded completion per group raises its log-prob and lowers a punished one's."""
    preset, splits, policy = smoke_policy
    rl_cfg = rl.RLConfig(prompts_per_step=2, group_size=4, max_new_tokens=preset.rl.max_new_tokens)
    cfg = GRPOConfig(beta=0.0, lr=1e-3)
    # the test needs each rewarded completion to differ from its punished siblings: the first such step
    for step in range(1, 10):
        model, ro = rollout_of(policy, splits, rl_cfg, step=step)
        if ro.completions[0] not in ro.completions[1:4] and ro.completions[4] not in ro.completions[5:8]:
            break
    else:
        pytest.fail("no step in 1..9 samples a rewarded completion unlike its siblings")
    rewards = torch.tensor([1.0, 0, 0, 0, 1, 0, 0, 0])

    def seq_logp():  # [R] log-probability of each whole completion
        with torch.no_grad():
            return completion_logprobs(model, ro.samples, backend="torch").sum(1)

    start = seq_logp()
    grpo_update(model, rl.reference_policy(model), make_optimizer(model, cfg), ro.samples, rewards, rl_cfg, cfg,
                backend="torch")
    change = seq_logp() - start
    assert change[0] > 0 and change[4] > 0
    assert change[0] > change[1:4].max() and change[4] > change[5:8].max()


# ---------------------------------------------------------------- end to end


def test_grpo_with_the_oracle_reward_raises_the_reward(smoke_policy, sampled_oracle_reward, tmp_path):
    preset, splits, policy = smoke_policy
    # 8 training prompts (4 ambiguous, 4 disambiguated), so that 10 steps make a clear difference on them
    train = ([ex for ex in splits.train if ex.context_condition == "ambig"][:4]
             + [ex for ex in splits.train if ex.context_condition == "disambig"][:4])
    rl_cfg = replace(preset.rl, steps=10, group_size=8)  # groups of 8, as the margin below was measured with
    out = train_grpo(replace(splits, train=train), policy, tmp_path / "grpo.pt", rl.make_scorer(oracle=True),
                     rl_cfg, preset.grpo, seed=0, backend="torch")
    history = out["history"]
    assert len(history) == rl_cfg.steps
    for h in history:
        for key in ("loss", "kl", "clip_frac", "entropy", "reward_mean", "reward_std", "completion_len", "grad_norm"):
            assert torch.isfinite(torch.tensor(h[key])), (key, h)
    lines = (tmp_path / "grpo.metrics.jsonl").read_text().splitlines()
    assert [json.loads(ln)["step"] for ln in lines] == list(range(rl_cfg.steps))
    assert (tmp_path / "grpo.reward.png").stat().st_size > 0
    assert set(out["stability"]) == {"reward_fluctuation", "final_reward_mean"}
    _, _, meta = load_policy(tmp_path / "grpo.pt")
    assert meta["stage"] == "grpo" and meta["rl_config"]["steps"] == rl_cfg.steps
    before = sampled_oracle_reward(policy, train, preset.rl.max_new_tokens, 32)
    after = sampled_oracle_reward(tmp_path / "grpo.pt", train, preset.rl.max_new_tokens, 32)
    assert after > before + 0.08, (before, after)  # about +0.2 (+0.14 to +0.25 over seeds and thread counts)


def test_torch_and_triton_backends_train_alike(smoke_policy, tmp_path):
    _, splits, policy = smoke_policy
    preset = get_preset("smoke", {"rl.steps": 2, "rl.prompts_per_step": 2, "rl.group_size": 4,
                                  "grpo.num_iterations": 2})
    scorer = lambda examples, prompts, completions: torch.tensor([float(len(c)) for c in completions])  # noqa: E731
    runs = {b: train_grpo(splits, policy, tmp_path / f"{b}.pt", scorer, preset.rl, preset.grpo, seed=0, backend=b)
            for b in ("torch", "triton")}
    for a, b in zip(runs["torch"]["history"], runs["triton"]["history"]):
        assert a["reward_mean"] == b["reward_mean"] and a["completion_tokens"] == b["completion_tokens"]
        for key in ("loss", "kl", "clip_frac", "entropy"):
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-6), key
    # Adam turns gradient rounding on near-zero gradients into visible steps, so compare the whole update
    start = torch.cat([v.flatten() for v in load_policy(policy)[0].state_dict().values()])
    moved = {b: torch.cat([v.flatten() for v in load_policy(tmp_path / f"{b}.pt")[0].state_dict().values()]) - start
             for b in ("torch", "triton")}
    assert moved["torch"].norm() > 0
    assert (moved["torch"] - moved["triton"]).norm() < 1e-2 * moved["torch"].norm()
