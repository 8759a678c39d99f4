"""PPO with a learned critic: the standard RLHF recipe (Stiennon et al., 2020; Ouyang et al., 2022).

The critic is a value head, V(s_t) = w . h_t + b, on the policy's own backbone: h_t is the final
hidden state that predicts completion token t (sampling.completion_logits(return_hidden=True)).
Each step samples the same B prompts x G completions as GRPO (rl.rollout) and scores them with
the same reward model, so both make B*G reward-model calls per step. Then, per completion token t:

    r_t = -beta * (logp_t - logp_ref_t)              KL penalty to the frozen reference, every token
        + score                                      the sequence reward, at the last token only
    delta_t = r_t + gamma * V_{t+1} - V_t             (V after the last token is 0)
    A_t = delta_t + gamma * lam * A_{t+1}             GAE (Schulman et al., 2016), returns R_t = A_t + V_t

Advantages are whitened over the batch's completion tokens. `epochs` passes over the batch in
`minibatches` shuffled minibatches (of whole prompts, so that a prompt's G completions share one
forward pass of it: sampling.completion_logits) minimise, averaged over completion tokens,

    L_policy = max(-A_t * ratio_t, -A_t * clip(ratio_t, 1 - eps, 1 + eps))   ratio_t = exp(logp_t - logp_old_t)
    L_value  = 1/2 * max((V_t - R_t)^2, (V_old_t + clip(V_t - V_old_t, -eps_v, eps_v) - R_t)^2)
    L = L_policy + vf_coef * L_value

BiasGRPO reports that this critic makes PPO's reward fluctuate more than GRPO's, whose advantage
is the group-normalised reward. The value head is trained with the policy and discarded at the end.
The logged "kl" is the mean of logp - logp_ref over completion tokens (the estimator inside r_t;
GRPO logs its k3 estimator, which is >= 0 per token).
"""

from dataclasses import asdict, dataclass

import torch
import torch.nn as nn

from nanobias import device, distributed, rl
from nanobias.kernels import token_logprobs
from nanobias.optim import optimizer_step, stop_if_diverged
from nanobias.sampling import Samples, completion_logits


@dataclass
class PPOConfig(rl.RLOptimConfig):
    # lr: PPO takes epochs * minibatches steps per batch where GRPO takes one, and at GRPO's smoke
    # rate it collapses the tiny policy, so presets give it a lower one
    epochs: int = 2  # passes over each batch of samples
    minibatches: int = 2  # optimiser steps per pass: epochs * minibatches updates per batch
    eps: float = 0.2  # policy ratio clip
    eps_value: float = 0.2  # value clip, around the values at sampling time
    vf_coef: float = 0.1  # weight of the value loss (the critic shares the policy's backbone)
    gamma: float = 1.0
    lam: float = 0.95

    def __post_init__(self):
        super().__post_init__()
        checks = {"epochs": self.epochs >= 1, "minibatches": self.minibatches >= 1,
                  "eps": 0 < self.eps < 1, "eps_value": self.eps_value > 0, "vf_coef": self.vf_coef >= 0,
                  "gamma": 0 <= self.gamma <= 1, "lam": 0 <= self.lam <= 1}
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"bad PPO setting ppo.{bad[0]}={getattr(self, bad[0])!r} (epochs, "
                             "minibatches >= 1; 0 < eps < 1; eps_value > 0; vf_coef >= 0; gamma, lam in [0, 1])")


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = (mask != 0).to(x.dtype)
    return (x * m).sum() / m.sum().clamp(min=1)


def whiten(x: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """(x - mean) / std over the masked entries (population std); 0 outside the mask."""
    m = (mask != 0).to(x.dtype)
    # all_sum: over every torchrun process's tokens (the sum itself in one process)
    count = distributed.all_sum(m.sum()).clamp(min=1)
    mean = distributed.all_sum((x * m).sum()) / count
    std = (distributed.all_sum(((x - mean) ** 2 * m).sum()) / count).sqrt()
    return (x - mean) / (std + eps) * m


def last_token_index(mask: torch.Tensor) -> torch.Tensor:
    """mask [R, N] (completion tokens first, then padding) -> index of each row's last token [R]."""
    lengths = (mask != 0).sum(1)
    if (lengths == 0).any():
        raise ValueError("ppo: a completion has no tokens (mask row all 0); sampling always emits at least one")
    return lengths - 1


def shaped_rewards(scores: torch.Tensor, logp: torch.Tensor, logp_ref: torch.Tensor, mask: torch.Tensor,
                   beta: float) -> torch.Tensor:
    """scores [R], logp / logp_ref / mask [R, N] -> per-token rewards [R, N]: the KL penalty on every
    completion token, the sequence score added at the last one, 0 on padding."""
    rewards = -beta * (logp - logp_ref) * (mask != 0)  # [R, N]
    rows = torch.arange(len(scores), device=scores.device)
    rewards[rows, last_token_index(mask)] += scores.to(rewards.dtype)
    return rewards


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float,
        lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """rewards, values, mask [R, N] -> (advantages, returns) [R, N], 0 on padding. The episode ends at
    each row's last completion token: no value is bootstrapped from beyond it."""
    m = (mask != 0).to(values.dtype)
    advantages = torch.zeros_like(values)
    next_value = torch.zeros_like(values[:, 0])  # [R]
    next_advantage = torch.zeros_like(values[:, 0])
    for t in reversed(range(values.shape[1])):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        advantages[:, t] = (delta + gamma * lam * next_advantage) * m[:, t]
        next_value, next_advantage = values[:, t] * m[:, t], advantages[:, t]
    return advantages, (advantages + values) * m


def policy_loss(logp: torch.Tensor, logp_old: torch.Tensor, advantages: torch.Tensor,
                mask: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO's clipped surrogate, averaged over completion tokens -> (loss, share of tokens clipped)."""
    ratio = torch.exp(logp - logp_old)
    unclipped, clipped = -advantages * ratio, -advantages * ratio.clamp(1 - eps, 1 + eps)
    return masked_mean(torch.maximum(unclipped, clipped), mask), masked_mean((clipped > unclipped).float(), mask)


def value_loss(values: torch.Tensor, values_old: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
               eps_value: float) -> torch.Tensor:
    """1/2 max((V - R)^2, (V_old + clip(V - V_old, -eps_value, eps_value) - R)^2), averaged over tokens."""
    clipped = values_old + (values - values_old).clamp(-eps_value, eps_value)
    return 0.5 * masked_mean(torch.maximum((values - returns) ** 2, (clipped - returns) ** 2), mask)


def select_rows(samples: Samples, index: torch.Tensor) -> Samples:
    """The rows `index` of every field of a batch of samples (a minibatch): whole groups, in order."""
    return Samples(*(t[index] for t in (samples.prompt_ids, samples.prompt_mask, samples.tokens, samples.mask,
                                         samples.logprobs)), group_size=samples.group_size)


def forward(model, value_head, samples: Samples, temperature: float, backend: str):
    """-> (token log-probs [R, N], values [R, N], logits [R, N, V]) of the sampled completions."""
    with device.autocast():
        logits, hidden = completion_logits(model, samples, return_hidden=True)  # [R, N, V], [R, N, C]
        logp = token_logprobs(logits, samples.tokens, temperature=temperature, backend=backend)
        return logp, value_head(hidden).squeeze(-1).float(), logits


def ppo_step(model, value_head, ref_model, opt, enc, examples, score_fn: rl.ScoreFn, rl_cfg: rl.RLConfig,
             cfg: PPOConfig, seed: int, backend: str = "auto") -> dict:
    """Sample G completions for each of the B examples, score, shape, GAE, `epochs * minibatches` updates.
    Returns the step's log record (rl.rollout_stats + loss terms, kl, clip fractions, entropy)."""
    T = rl_cfg.temperature
    ro = rl.rollout(model, enc, examples, rl_cfg, seed)
    samples, mask = ro.samples, ro.samples.mask
    scores = rl.score_rollout(score_fn, ro)  # [R]
    with torch.no_grad():
        logp_old, values_old, logits = forward(model, value_head, samples, T, backend)
        entropy = rl.token_entropy(logits, mask, T)
        del logits
        with device.autocast():
            logp_ref = token_logprobs(completion_logits(ref_model, samples), samples.tokens, temperature=T,
                                      backend=backend)
        rewards = shaped_rewards(scores, logp_old, logp_ref, mask, cfg.beta)
        advantages, returns = gae(rewards, values_old, mask, cfg.gamma, cfg.lam)
        advantages = whiten(advantages, mask)
    G = samples.group_size
    generator = torch.Generator().manual_seed(seed)
    params = [p for group in opt.param_groups for p in group["params"]]  # the policy's and the value head's
    updates = []
    for _ in range(cfg.epochs):
        # shuffled minibatches of whole prompts: a group's G completions share one forward of its prompt
        for groups in torch.randperm(len(scores) // G, generator=generator).chunk(cfg.minibatches):
            idx = (groups[:, None] * G + torch.arange(G)).flatten().to(mask.device)  # [rows]
            logp, values, _ = forward(model, value_head, select_rows(samples, idx), T, backend)
            m = mask[idx]
            pg, clip_frac = policy_loss(logp, logp_old[idx], advantages[idx], m, cfg.eps)
            vf = value_loss(values, values_old[idx], returns[idx], m, cfg.eps_value)
            loss = (pg + cfg.vf_coef * vf) * distributed.token_share((m != 0).sum())  # 1 in one process
            stop_if_diverged(loss, "the loss")
            grad_norm = optimizer_step(opt, loss, params, cfg.grad_clip)
            updates.append({"loss": loss.item(), "pg_loss": pg.item(), "vf_loss": vf.item(),
                            "clip_frac": clip_frac.item(), "grad_norm": grad_norm})
    averaged = {k: sum(u[k] for u in updates) / len(updates) for k in updates[0]}
    return {**averaged, "kl": masked_mean(logp_old - logp_ref, mask).item(), "entropy": entropy,
            "value_mean": masked_mean(values_old, mask).item(), **rl.rollout_stats(scores, ro)}


def train_ppo(splits, policy_ckpt, out_path, score_fn: rl.ScoreFn, rl_cfg: rl.RLConfig, cfg: PPOConfig,
              seed: int = 0, backend: str = "auto") -> dict:
    """PPO from the policy at `policy_ckpt` on `splits.train` prompts, at the budget `rl_cfg`.

    Writes the policy to `out_path`, per-step metrics to `<stem>.metrics.jsonl`, the reward curve to
    `<stem>.reward.png` and the budget curve (curves.py) to `<stem>.curve.json`. Returns {"stability":
    {"reward_fluctuation", "final_reward_mean"}, "history": [per-step records], "curve": [points]}."""
    run = rl.start_run(policy_ckpt, out_path, rl_cfg, cfg, "ppo", f"{rl_cfg.steps} steps x {rl_cfg.prompts_per_step} "
                       f"prompts x {rl_cfg.group_size} completions (<= {rl_cfg.max_new_tokens} tokens), {cfg}",
                       splits.test, heads=lambda model: {"value_head": value_head(model)})
    run.model.train()
    for step in range(rl_cfg.steps):
        lr = run.set_lr(step)
        examples = rl.prompt_batch(splits.train, rl_cfg.prompts_per_step, seed, step)
        with rl.at_step("ppo", step, "ppo.lr too high, or ppo.beta too large (--set ppo.lr=...)"):
            record = {"step": step, "lr": lr, **ppo_step(run.model, run.heads["value_head"], run.ref_model, run.opt,
                                                         run.enc, examples, score_fn, rl_cfg, cfg,
                                                         rl.step_seed(seed, step), backend)}
        run.log_step(record, shown=("reward_mean", "kl", "completion_len"))
    return run.finish(out_path, "ppo", base_policy=str(policy_ckpt), seed=seed,
                      rl_config=asdict(rl_cfg), ppo_config=asdict(cfg))


def value_head(model) -> nn.Linear:
    """V = w . h + b on the policy's hidden states, zero at the start: the critic knows nothing yet."""
    head = nn.Linear(model.config.n_embd, 1)
    nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)
    return head
