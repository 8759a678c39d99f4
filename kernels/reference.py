"""Readable PyTorch definitions of what the kernels compute (the specification the tests check).

Everything here materialises the full `[N, T, V]` log-softmax in fp32: simple and exact, and the
memory cost the fused kernels remove. Gradients come from autograd.

- Token log-probs: `logp[n, t] = log_softmax(logits[n, t] / temperature)[targets[n, t]]`.
- Group-normalised advantage (BiasGRPO, Reddy et al. 2026; GRPO of DeepSeekMath): for rewards `r` of the G
  completions of one prompt, `A_i = (r_i - mean(r)) / (std(r) + eps)`, with the population std
  (divide by G, so G = 1 is allowed). A group whose rewards are all equal carries no signal: A = 0.
- GRPO loss per completion token, with `ratio = exp(logp - logp_old)` and k3 KL to the reference:
      l = -min(ratio * A, clip(ratio, 1 - eps_low, 1 + eps_high) * A) + beta * kl,
      kl = exp(logp_ref - logp) - (logp_ref - logp) - 1,
  aggregated over completion tokens (mask = 1) by `agg` (see `aggregation_weights`).
- Masked GELU, the MLP activation with the neuron intervention fused in:
  `where(mask, value, gelu_tanh(x))` per neuron; masked neurons get zero gradient.
"""

import torch
import torch.nn.functional as F

SCALES = ("group", "batch", "none")
AGGS = ("grpo", "dapo", "dr_grpo")


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """logits [..., V], targets [...] (long) -> log-probs [...] in fp32 (fp64 for fp64 logits)."""
    compute = torch.promote_types(logits.dtype, torch.float32)  # fp32, or fp64 for fp64 logits
    logp_all = torch.log_softmax(logits.to(compute) / temperature, dim=-1)  # [..., V], the memory cost
    return logp_all.gather(-1, targets.unsqueeze(-1)).squeeze(-1)


def group_advantages(rewards: torch.Tensor, group_size: int, scale: str = "group", eps: float = 1e-4) -> torch.Tensor:
    """rewards [N] (N = prompts * group_size, a prompt's completions adjacent) -> advantages [N].

    scale "group": divide by each group's std; "batch": by the std of all N rewards; "none": only
    centre on the group mean (Dr. GRPO). Advantages are constants: no gradient flows to rewards.
    """
    if rewards.dim() != 1 or group_size < 1 or rewards.numel() % group_size != 0:
        raise ValueError(
            f"group_advantages: rewards must be 1-D with a length divisible by group_size={group_size}, "
            f"got shape {tuple(rewards.shape)}"
        )
    if scale not in SCALES:
        raise ValueError(f"group_advantages: scale must be one of {SCALES}, got {scale!r}")
    r = rewards.detach().to(torch.promote_types(rewards.dtype, torch.float32)).view(-1, group_size)  # [P, G]
    centred = r - r.mean(dim=1, keepdim=True)
    if scale == "group":
        adv = centred / (r.std(dim=1, correction=0, keepdim=True) + eps)
    elif scale == "batch":
        adv = centred / (r.std(correction=0) + eps)
    else:
        adv = centred
    # (r - mean) of equal floats can round to ~1e-8 instead of 0; an equal group must give exactly 0
    equal = r.amax(dim=1, keepdim=True) == r.amin(dim=1, keepdim=True)
    return torch.where(equal, torch.zeros_like(adv), adv).view(-1)


def aggregation_weights(mask: torch.Tensor, agg: str, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """mask [N, T] -> weights [N, T] with loss = sum(weights * per_token_loss).

    "grpo": mean over each sequence's tokens, then mean over the N sequences (an all-masked
    sequence contributes 0); "dapo": sum over all tokens / number of tokens; "dr_grpo": sum over
    all tokens / (N * T), a constant that does not depend on completion lengths.
    """
    if agg not in AGGS:
        raise ValueError(f"grpo_loss: agg must be one of {AGGS}, got {agg!r}")
    m = (mask != 0).to(dtype)  # [N, T]
    n_seq, t_len = m.shape
    if agg == "grpo":
        return m / (m.sum(dim=1, keepdim=True).clamp(min=1) * n_seq)
    if agg == "dapo":
        return m / m.sum().clamp(min=1)
    return m / (n_seq * t_len)


def grpo_loss_from_logprobs(
    logp: torch.Tensor,
    mask: torch.Tensor,
    rewards: torch.Tensor,
    group_size: int,
    logp_old: torch.Tensor | None = None,
    logp_ref: torch.Tensor | None = None,
    eps_low: float = 0.2,
    eps_high: float | None = None,
    beta: float = 0.0,
    scale: str = "group",
    agg: str = "grpo",
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The GRPO loss given per-token log-probs logp [N, T] (see the module docstring).

    logp_old / logp_ref [N, T] are constants (detached). logp_old None means on-policy: ratio = 1
    but its gradient, A, is kept. Stats are 0-dim fp32 tensors over completion tokens: "kl" the
    mean k3 KL (0 without logp_ref), "clip_frac" the share of tokens where the clipped term is
    the minimum (their gradient is zero).
    """
    eps_high = eps_low if eps_high is None else eps_high
    adv = group_advantages(rewards, group_size, scale).to(logp.dtype)[:, None]  # [N, 1]
    completion = mask != 0  # [N, T]
    # padding contributes nothing whatever logp_old / logp_ref hold there (0 * inf would be NaN)
    old = logp.detach() if logp_old is None else torch.where(completion, logp_old.detach().to(logp.dtype), logp.detach())
    ratio = torch.exp(logp - old)  # [N, T]
    clipped = ratio.clamp(1 - eps_low, 1 + eps_high)
    surrogate, surrogate_clipped = ratio * adv, clipped * adv
    per_token = -torch.minimum(surrogate, surrogate_clipped)
    if logp_ref is None:
        kl = torch.zeros_like(logp)
    else:
        d = torch.where(completion, logp_ref.detach().to(logp.dtype), logp.detach()) - logp
        kl = torch.exp(d) - d - 1
    per_token = per_token + beta * kl
    w = aggregation_weights(mask, agg, logp.dtype)
    loss = torch.where(completion, w * per_token, 0.0).sum()
    stats = {
        "kl": completion_mean(kl.detach(), mask),
        "clip_frac": completion_mean((surrogate_clipped < surrogate).float(), mask),
    }
    return loss, stats


def completion_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of x [N, T] over completion tokens (mask != 0) as a 0-dim fp32 tensor; 0 if there are none."""
    completion = mask != 0
    return (torch.where(completion, x, 0.0).sum() / completion.sum().clamp(min=1)).float()


def grpo_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
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
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """logits [N, T, V], targets/mask [N, T], rewards [N] -> (scalar loss, stats)."""
    logp = token_logprobs(logits, targets, temperature)  # [N, T]
    return grpo_loss_from_logprobs(
        logp, mask, rewards, group_size, logp_old, logp_ref, eps_low, eps_high, beta, scale, agg
    )


def masked_gelu(x: torch.Tensor, mask: torch.Tensor | None, value: torch.Tensor | None) -> torch.Tensor:
    """x [..., H], mask [H] bool, value [H] -> [..., H]; mask None is plain gelu_tanh."""
    a = F.gelu(x, approximate="tanh")
    if mask is None:
        return a
    return torch.where(mask, value.detach().to(a.dtype), a)
