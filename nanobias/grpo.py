"""GRPO: debias the policy with group-relative advantages instead of a critic.

BiasGRPO (Reddy, Yang, Zhai, 2026, Sec. 3) applies Group Relative Policy Optimization (Shao et
al., 2024, DeepSeekMath) with a bias reward model; this module is that update.

For each of B prompts, sample a group of G completions o_1..o_G from the policy, score them with
the reward model, and compare each completion with its own group (DeepSeekMath's GRPO):

    A_i = (r_i - mean(r_1..r_G)) / (std(r_1..r_G) + eps)          scale = "group"
          (divide by the std of all B*G rewards: "batch"; do not divide: "none", Dr. GRPO)

A completion is reinforced when it beats its siblings, so no value network is needed, and a
group whose rewards are all equal teaches nothing (A = 0). The policy is then updated
`num_iterations` times on the same samples with PPO's clipped objective per completion token t,

    ratio_t = exp(logp_t - logp_old_t)            logp_old: the policy that sampled, fixed
    l_t = -min(ratio_t * A_i, clip(ratio_t, 1 - eps_low, 1 + eps_high) * A_i) + beta * kl_t
    kl_t = exp(logp_ref_t - logp_t) - (logp_ref_t - logp_t) - 1   (k3, >= 0, to the frozen reference)

aggregated over completion tokens by `agg`: "grpo" = mean per sequence then over sequences,
"dapo" = sum over tokens / number of tokens, "dr_grpo" = sum over tokens / (B*G*N), N the
width of the batch's completion tensor (a constant, so long completions are not down-weighted).
The advantages and the loss are computed by `kernels` (`group_advantages`, `grpo_loss`; the
readable definitions are in kernels/reference.py), on the backend given ("torch" | "triton" | ...).

A training step: sample (rl.rollout) -> score (the reward model, with or without the neuron
intervention; rl.make_scorer) -> advantages -> `num_iterations` clipped updates.

Under torchrun each process holds whole groups (rl.rollout), so advantages are unchanged. The
"grpo" and "dr_grpo" losses are means over sequences (N is the same on every process, and so is
the completion width, max_new_tokens), so the ranks' average is the global loss; "dapo" divides by
the tokens of the whole batch (distributed.token_share). "batch" scale needs the std of every
process's rewards, which the loss does not see: it runs in one process only.
"""

from dataclasses import asdict, dataclass

import torch

from kernels import grpo_loss, token_logprobs
from kernels.reference import AGGS, SCALES
from nanobias import device, distributed, rl
from nanobias.sampling import Samples, completion_logits
from nanobias.train import optimizer_step, stop_if_diverged

@dataclass
class GRPOConfig(rl.RLOptimConfig):
    num_iterations: int = 1  # updates per batch of samples (1: on-policy, the ratio stays 1)
    eps_low: float = 0.2
    eps_high: float = 0.2  # DAPO's "clip higher" sets this above eps_low
    scale: str = "group"  # advantage scale: group | batch | none
    agg: str = "grpo"  # loss aggregation: grpo | dapo | dr_grpo

    def __post_init__(self):
        super().__post_init__()
        if self.num_iterations < 1:
            raise ValueError(f"GRPO num_iterations must be >= 1, got {self.num_iterations}")
        if not (0 <= self.eps_low < 1 and self.eps_high >= 0):
            raise ValueError(f"GRPO clip range needs 0 <= eps_low < 1 and eps_high >= 0, "
                             f"got eps_low={self.eps_low}, eps_high={self.eps_high}")
        if self.scale not in SCALES:
            raise ValueError(f"GRPO scale must be one of {SCALES}, got {self.scale!r}")
        if self.agg not in AGGS:
            raise ValueError(f"GRPO agg must be one of {AGGS}, got {self.agg!r}")


@torch.no_grad()
def fixed_logprobs(model, samples: Samples, temperature: float, backend: str) -> torch.Tensor:
    """Log-probs [R, N] of the sampled tokens under `model`, as constants (no graph)."""
    with device.autocast():
        return token_logprobs(completion_logits(model, samples), samples.tokens, temperature=temperature,
                              backend=backend)


def grpo_update(model, ref_model, opt, samples: Samples, rewards: torch.Tensor, rl_cfg: rl.RLConfig,
                cfg: GRPOConfig, backend: str = "auto") -> list[dict]:
    """`num_iterations` clipped updates on one batch of samples; rewards [R] with R = B*G.

    logp_old is computed once, before the first update, so the first iteration's ratio is 1. With
    a single iteration the sampling policy is the one being updated: logp_old=None (ratio 1, its
    gradient kept) is the same loss without the extra forward pass.
    Returns the stats of each iteration (loss, kl, clip_frac, grad_norm, entropy of the policy)."""
    T = rl_cfg.temperature
    logp_old = fixed_logprobs(model, samples, T, backend) if cfg.num_iterations > 1 else None  # [R, N]
    logp_ref = fixed_logprobs(ref_model, samples, T, backend) if cfg.beta > 0 else None
    # this rank's share of a loss averaged over every rank's tokens ("dapo"); 1 in a single process
    share = distributed.token_share(samples.mask.sum()) if cfg.agg == "dapo" else 1.0
    per_iteration = []
    for _ in range(cfg.num_iterations):
        with device.autocast():
            logits = completion_logits(model, samples)  # [R, N, V]
            loss, stats = grpo_loss(logits, samples.tokens, samples.mask, rewards, rl_cfg.group_size,
                                    logp_old=logp_old, logp_ref=logp_ref, eps_low=cfg.eps_low, eps_high=cfg.eps_high,
                                    beta=cfg.beta, temperature=T, scale=cfg.scale, agg=cfg.agg, backend=backend)
            loss = loss * share
        stop_if_diverged(loss, "the loss")
        grad_norm = optimizer_step(opt, loss, list(model.parameters()), cfg.grad_clip)
        per_iteration.append({"loss": loss.item(), "kl": stats["kl"].item(), "clip_frac": stats["clip_frac"].item(),
                              "grad_norm": grad_norm,
                              "entropy": rl.token_entropy(logits.detach(), samples.mask, T)})
    return per_iteration


def grpo_step(model, ref_model, opt, enc, examples, score_fn: rl.ScoreFn, rl_cfg: rl.RLConfig, cfg: GRPOConfig,
              seed: int, backend: str = "auto") -> dict:
    """Sample G completions for each of the B examples, score, update. Returns the step's log record:
    loss, kl, clip_frac, grad_norm, entropy averaged over the inner iterations, and rl.rollout_stats."""
    ro = rl.rollout(model, enc, examples, rl_cfg, seed)
    rewards = rl.score_rollout(score_fn, ro)  # [R]
    per_iteration = grpo_update(model, ref_model, opt, ro.samples, rewards, rl_cfg, cfg, backend)
    averaged = {k: sum(it[k] for it in per_iteration) / len(per_iteration) for k in per_iteration[0]}
    return {**averaged, **rl.rollout_stats(rewards, ro)}


def train_grpo(splits, policy_ckpt, out_path, score_fn: rl.ScoreFn, rl_cfg: rl.RLConfig, cfg: GRPOConfig,
               seed: int = 0, backend: str = "auto") -> dict:
    """GRPO from the policy at `policy_ckpt` on `splits.train` prompts, at the budget `rl_cfg`.

    Writes the policy to `out_path`, per-step metrics to `<stem>.metrics.jsonl` and the reward
    curve to `<stem>.reward.png`. Returns {"stability": {"reward_fluctuation", "final_reward_mean"},
    "history": [per-step records]}."""
    if cfg.scale == "batch" and distributed.world_size() > 1:
        raise ValueError("grpo.scale='batch' divides by the std of every process's rewards, which one process's "
                         "loss does not see: use scale 'group' or 'none' under torchrun, or one process")
    run = rl.start_run(policy_ckpt, out_path, rl_cfg, cfg, "grpo", f"{rl_cfg.steps} steps x {rl_cfg.prompts_per_step} "
                       f"prompts x {rl_cfg.group_size} completions (<= {rl_cfg.max_new_tokens} tokens), {cfg}")
    run.model.train()
    for step in range(rl_cfg.steps):
        lr = run.set_lr(step)
        examples = rl.prompt_batch(splits.train, rl_cfg.prompts_per_step, seed, step)
        with rl.at_step("grpo", step, "--lr (grpo.lr) too high, or --beta (grpo.beta) too large"):
            record = {"step": step, "lr": lr, **grpo_step(run.model, run.ref_model, run.opt, run.enc, examples,
                                                          score_fn, rl_cfg, cfg, rl.step_seed(seed, step), backend)}
        run.log_step(record, shown=("reward_mean", "kl", "completion_len"))
    return run.finish(out_path, "grpo", base_policy=str(policy_ckpt), seed=seed,
                      rl_config=asdict(rl_cfg), grpo_config=asdict(cfg))
