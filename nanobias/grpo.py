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

The advantages, the aggregation weights and the loss are written out below in plain PyTorch
(`group_advantages`, `aggregation_weights`, `grpo_loss`). `backend` says how the log-probs are
computed (nanobias.kernels.token_logprobs: "reference" | "torch" | "triton" | "auto"); where it
resolves to "triton", the fused Triton kernel nanobias.kernels.fused_grpo_loss computes log-probs
and loss in one pass per row instead: a drop-in, tested against this definition
(tests/test_kernels_logprob.py).

A training step: sample (rl.rollout) -> score (the reward model, with or without the neuron
intervention; rl.make_scorer) -> advantages -> `num_iterations` clipped updates.
"""

from dataclasses import asdict, dataclass

import torch

from nanobias import device, distributed, rl
from nanobias.kernels import dispatch, fused_grpo_loss, token_logprobs
from nanobias.optim import optimizer_step, stop_if_diverged
from nanobias.sampling import Samples, completion_logits

SCALES = ("group", "batch", "none")
AGGS = ("grpo", "dapo", "dr_grpo")


def group_advantages(rewards: torch.Tensor, group_size: int, scale: str = "group", eps: float = 1e-4) -> torch.Tensor:
    """rewards [R] (R = B*G, a prompt's completions adjacent) -> advantages A [R].

    scale "group": divide by each group's std; "batch": by the std of all R rewards; "none": only
    centre on the group mean (Dr. GRPO). Advantages are constants: no gradient flows to rewards.
    """
    if rewards.dim() != 1 or group_size < 1 or rewards.numel() % group_size != 0:
        raise ValueError(
            f"group_advantages: rewards must be 1-D with a length divisible by group_size={group_size}, "
            f"got shape {tuple(rewards.shape)}"
        )
    if scale not in SCALES:
        raise ValueError(f"group_advantages: scale must be one of {SCALES}, got {scale!r}")
    r = rewards.detach().to(torch.promote_types(rewards.dtype, torch.float32)).view(-1, group_size)  # [B, G]
    centred = r - r.mean(dim=1, keepdim=True)
    if scale == "group":
        adv = centred / (r.std(dim=1, correction=0, keepdim=True) + eps)  # population std: G = 1 is allowed
    elif scale == "batch":
        adv = centred / (r.std(correction=0) + eps)
    else:
        adv = centred
    # (r - mean) of equal floats can round to ~1e-8 instead of 0; an equal group must give exactly 0
    equal = r.amax(dim=1, keepdim=True) == r.amin(dim=1, keepdim=True)
    return torch.where(equal, torch.zeros_like(adv), adv).view(-1)


def aggregation_weights(mask: torch.Tensor, agg: str, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """mask [R, N] -> weights [R, N] with loss = sum(weights * per_token_loss).

    "grpo": mean over each sequence's tokens, then mean over the R sequences (an all-masked
    sequence contributes 0); "dapo": sum over all tokens / number of tokens; "dr_grpo": sum over
    all tokens / (R * N), a constant that does not depend on completion lengths.
    """
    if agg not in AGGS:
        raise ValueError(f"grpo_loss: agg must be one of {AGGS}, got {agg!r}")
    m = (mask != 0).to(dtype)  # [R, N]
    n_seq, t_len = m.shape
    if agg == "grpo":
        return m / (m.sum(dim=1, keepdim=True).clamp(min=1) * n_seq)
    if agg == "dapo":
        return m / m.sum().clamp(min=1)
    return m / (n_seq * t_len)


def completion_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of x [R, N] over completion tokens (mask != 0) as a 0-dim fp32 tensor; 0 if there are none."""
    completion = mask != 0
    return (torch.where(completion, x, 0.0).sum() / completion.sum().clamp(min=1)).float()


def _check_inputs(logits, mask, rewards, group_size, logp_old, logp_ref, eps_low, eps_high, beta):
    """Shape errors that name the argument, before anything broadcasts a wrong shape silently.
    tokens and temperature are checked by the kernels."""
    if logits.dim() != 3 or not logits.is_floating_point():
        raise ValueError(f"grpo_loss: logits must be a floating tensor of 3-D shape [R, N, V], "
                         f"got {logits.dtype} {tuple(logits.shape)}")
    R, N = logits.shape[:2]
    if tuple(mask.shape) != (R, N):
        raise ValueError(f"grpo_loss: mask must have shape [R, N] = {(R, N)}, got {tuple(mask.shape)}")
    if tuple(rewards.shape) != (R,):
        raise ValueError(f"grpo_loss: rewards must have shape [R] = ({R},), got {tuple(rewards.shape)}")
    if not isinstance(group_size, int) or group_size < 1 or R % group_size:
        raise ValueError(f"grpo_loss: group_size must be a positive int dividing R = {R}, got {group_size!r}")
    for name, values in (("logp_old", logp_old), ("logp_ref", logp_ref)):
        if values is not None and tuple(values.shape) != (R, N):
            raise ValueError(f"grpo_loss: {name} must be None or have shape [R, N] = {(R, N)}, "
                             f"got {tuple(values.shape)}")
    if beta > 0 and logp_ref is None:
        raise ValueError(f"grpo_loss: beta = {beta} > 0 needs logp_ref (the reference policy's log-probs)")
    if not (0 <= eps_low < 1 and eps_high >= 0):
        raise ValueError(f"grpo_loss: need 0 <= eps_low < 1 and eps_high >= 0, got eps_low={eps_low}, "
                         f"eps_high={eps_high}")


def grpo_loss(
    logits: torch.Tensor,
    tokens: torch.Tensor,
    mask: torch.Tensor,
    rewards: torch.Tensor,
    group_size: int,
    logp_old: torch.Tensor | None = None,
    logp_ref: torch.Tensor | None = None,
    eps_low: float = 0.2,
    eps_high: float | None = None,
    beta: float = 0.0,
    temperature: float = 1.0,
    scale: str = "group",
    agg: str = "grpo",
    backend: str = "auto",
    inplace_backward: bool = False,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The GRPO loss to minimise (the module docstring's l_t, aggregated by `agg`).

    logits [R, N, V] predict tokens [R, N]; mask [R, N] is 1 on completion tokens; rewards [R].
    logp_old / logp_ref [R, N] are constants (logp_old None: on-policy, ratio 1 with its gradient
    kept; eps_high None: eps_low). Returns (0-dim loss, stats): stats["kl"] the mean k3 KL over
    completion tokens (0 without logp_ref), stats["clip_frac"] the share of completion tokens
    whose clipped term is the minimum (their gradient is zero); detached 0-dim fp32 tensors.
    inplace_backward=True (default False; grpo_update keeps it off, it reads the logits after
    backward for the entropy): backward writes d loss / d logits into the logits' own storage,
    destroying them (nanobias.kernels.token_logprobs; the "reference" backend ignores it).
    """
    eps_high = eps_low if eps_high is None else eps_high
    chosen = dispatch.resolve_backend(backend, logits.device, "grpo_loss")
    _check_inputs(logits, mask, rewards, group_size, logp_old, logp_ref, eps_low, eps_high, beta)
    advantages = group_advantages(rewards, group_size, scale)  # [R]
    weights = aggregation_weights(mask, agg, torch.promote_types(logits.dtype, torch.float32))  # [R, N]
    if chosen == "triton":  # all of the below and the log-probs in one pass per row: no [R, N, V] temporary
        loss, kl, clipped = fused_grpo_loss(logits, tokens, advantages, weights, logp_old, logp_ref,
                                            eps_low, eps_high, beta, temperature, inplace_backward)
        return loss, {"kl": completion_mean(kl, mask), "clip_frac": completion_mean(clipped, mask)}

    logp = token_logprobs(logits, tokens, temperature, chosen, inplace_backward)  # [R, N], fp32 (fp64 if fp64)
    adv = advantages.to(logp.dtype)[:, None]  # [R, 1]
    completion = mask != 0  # [R, N]
    # padding contributes nothing whatever logp_old / logp_ref hold there (0 * inf would be NaN)
    old = logp.detach() if logp_old is None else torch.where(completion, logp_old.detach().to(logp.dtype), logp.detach())
    ratio = torch.exp(logp - old)  # [R, N]
    ratio_clipped = ratio.clamp(1 - eps_low, 1 + eps_high)
    surrogate, surrogate_clipped = ratio * adv, ratio_clipped * adv
    per_token = -torch.minimum(surrogate, surrogate_clipped)
    if logp_ref is None:
        kl = torch.zeros_like(logp)
    else:
        d = torch.where(completion, logp_ref.detach().to(logp.dtype), logp.detach()) - logp  # [R, N]
        kl = torch.exp(d) - d - 1
    per_token = per_token + beta * kl
    loss = torch.where(completion, weights * per_token, 0.0).sum()
    stats = {
        "kl": completion_mean(kl.detach(), mask),
        "clip_frac": completion_mean((surrogate_clipped < surrogate).float(), mask),
    }
    return loss, stats


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

    Writes the policy to `out_path`, per-step metrics to `<stem>.metrics.jsonl`, the reward curve to
    `<stem>.reward.png` and the budget curve (curves.py) to `<stem>.curve.json`. Returns {"stability":
    {"reward_fluctuation", "final_reward_mean"}, "history": [per-step records], "curve": [points]}."""
    if cfg.scale == "batch" and distributed.world_size() > 1:
        raise ValueError("grpo.scale='batch' divides by the std of every process's rewards, which one process's "
                         "loss does not see: use scale 'group' or 'none' under torchrun, or one process")
    run = rl.start_run(policy_ckpt, out_path, rl_cfg, cfg, "grpo", f"{rl_cfg.steps} steps x {rl_cfg.prompts_per_step} "
                       f"prompts x {rl_cfg.group_size} completions (<= {rl_cfg.max_new_tokens} tokens), {cfg}",
                       splits.test)
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
