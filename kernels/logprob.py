"""Token log-probs and the fused GRPO loss: validation, dispatch, and the chunked PyTorch path.

    logp[n, t] = log_softmax(logits[n, t] / temperature)[targets[n, t]]
and the GRPO loss of `reference.py` (clipped ratio times the group-normalised advantage, plus
beta times the k3 KL, aggregated by "grpo" | "dapo" | "dr_grpo").

The "torch" backend walks the rows in chunks of about CHUNK_ELEMENTS logits: forward keeps one
chunk's log-softmax at a time and saves nothing but its inputs; backward recomputes each chunk's
softmax and writes
    dlogits = c / temperature * (onehot(target) - softmax(logits / temperature)),
so the extra memory is a chunk or two plus the gradient itself, never a full [N*T, V] fp32
tensor. The "triton" backend streams each row instead (`logprob_triton.py`).
"""

import torch

from . import dispatch, reference

if dispatch.HAVE_TRITON:
    from . import logprob_triton

# 2^20 logits = 4 MiB per fp32 temporary. Smaller chunks save a little memory but multiply the
# number of multi-threaded ops, each of which stalls while another job holds a core: on a busy
# 2-core machine 2^18 measured 1.2-6x eager time, 2^20 0.7-1.2x (kernels/BENCHMARKS.md).
CHUNK_ELEMENTS = 1 << 20


def _row_blocks(N: int, T: int, V: int):
    """Yield (sequence slice, position slice) blocks of about CHUNK_ELEMENTS logits of [N, T, V]."""
    rows = max(1, CHUNK_ELEMENTS // V)
    if T >= rows:
        for n in range(N):
            for t in range(0, T, rows):
                yield slice(n, n + 1), slice(t, t + rows)
    else:
        for n in range(0, N, rows // T):
            yield slice(n, n + rows // T), slice(0, T)


def _chunk(logits, ns, ts, compute, temperature):
    """logits[ns, ts] / temperature in the compute dtype: one chunk [n, t, V]."""
    x = logits[ns, ts].to(compute)
    return x if temperature == 1 else x / temperature


class ChunkedTokenLogprobs(torch.autograd.Function):
    """logits [N, T, V], targets [N, T] long -> logp [N, T] (fp32; fp64 for fp64 logits)."""

    @staticmethod
    def forward(ctx, logits, targets, temperature):
        compute = torch.promote_types(logits.dtype, torch.float32)
        logp = dispatch.empty_output(targets.shape, compute, logits.device)
        for ns, ts in _row_blocks(*logits.shape):
            chunk_logp = torch.log_softmax(_chunk(logits, ns, ts, compute, temperature), dim=-1)
            logp[ns, ts] = chunk_logp.gather(-1, targets[ns, ts, None]).squeeze(-1)
        ctx.save_for_backward(logits, targets)
        ctx.temperature = temperature
        return logp

    @staticmethod
    def backward(ctx, grad_logp):
        logits, targets = ctx.saved_tensors
        compute = torch.promote_types(logits.dtype, torch.float32)
        scale = grad_logp.to(compute) / ctx.temperature  # [N, T]
        dlogits = dispatch.empty_output(logits.shape, logits.dtype, logits.device)
        for ns, ts in _row_blocks(*logits.shape):
            probs = torch.softmax(_chunk(logits, ns, ts, compute, ctx.temperature), dim=-1)  # [n, t, V]
            index = targets[ns, ts, None]
            probs.scatter_(-1, index, probs.gather(-1, index) - 1)  # softmax - onehot, in fp32
            torch.mul(probs, -scale[ns, ts, None], out=dlogits[ns, ts])  # one pass: scale, cast, store
        return dlogits, None, None


def _check_rows(logits: torch.Tensor, targets: torch.Tensor, temperature: float, op: str, dims=(2, 3)):
    """Validate logits [N, T, V] (or [M, V]) and targets; return logits as 3-D with unit last stride."""
    if logits.dim() not in dims or not logits.is_floating_point():
        raise ValueError(f"{op}: logits must be a floating tensor of {' or '.join(f'{d}-D' for d in dims)} "
                         f"shape [..., V], got {logits.dtype} {tuple(logits.shape)}")
    if tuple(targets.shape) != tuple(logits.shape[:-1]) or targets.dtype != torch.long:
        raise ValueError(f"{op}: targets must be long with shape {tuple(logits.shape[:-1])} (logits without V), "
                         f"got {targets.dtype} {tuple(targets.shape)}")
    if targets.numel() == 0 or logits.shape[-1] == 0:
        raise ValueError(f"{op}: logits {tuple(logits.shape)} has no rows or an empty vocabulary")
    V = logits.shape[-1]
    if targets.min() < 0 or targets.max() >= V:
        raise ValueError(f"{op}: targets must lie in [0, {V}) (V = logits.shape[-1]), "
                         f"got values in [{targets.min().item()}, {targets.max().item()}]")
    if not temperature > 0:
        raise ValueError(f"{op}: temperature must be > 0, got {temperature}")
    if logits.stride(-1) != 1:
        logits = logits.contiguous()  # kernels index the vocabulary with unit stride
    return logits if logits.dim() == 3 else logits.unsqueeze(0)


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0,
                   backend: str = "auto") -> torch.Tensor:
    """logits [N, T, V] or [M, V] (fp32 | fp16 | bf16, any strides), targets [N, T] or [M] long ->
    differentiable log-probs of the targets, same leading shape, fp32."""
    op = "kernels.token_logprobs"
    chosen = dispatch.resolve_backend(backend, logits.device, op)
    rows = _check_rows(logits, targets, temperature, op)  # [N, T, V]
    if chosen == "reference":
        return reference.token_logprobs(logits, targets, temperature)
    targets = targets.reshape(rows.shape[:2])
    if chosen == "triton":
        logp = logprob_triton.TokenLogprobs.apply(rows, targets, temperature)
    else:
        logp = ChunkedTokenLogprobs.apply(rows, targets, temperature)
    return logp.view(logits.shape[:-1])


def _check_grpo(logits, targets, mask, rewards, group_size, logp_old, logp_ref, eps_low, eps_high, beta):
    op = "kernels.grpo_loss"
    N, T = logits.shape[:2]
    if tuple(mask.shape) != (N, T):
        raise ValueError(f"{op}: mask must have shape [N, T] = {(N, T)}, got {tuple(mask.shape)}")
    if tuple(rewards.shape) != (N,):
        raise ValueError(f"{op}: rewards must have shape [N] = ({N},), got {tuple(rewards.shape)}")
    if not isinstance(group_size, int) or group_size < 1 or N % group_size:
        raise ValueError(f"{op}: group_size must be a positive int dividing N = {N}, got {group_size!r}")
    for name, values in (("logp_old", logp_old), ("logp_ref", logp_ref)):
        if values is not None and tuple(values.shape) != (N, T):
            raise ValueError(f"{op}: {name} must be None or have shape [N, T] = {(N, T)}, got {tuple(values.shape)}")
    if beta > 0 and logp_ref is None:
        raise ValueError(f"{op}: beta = {beta} > 0 needs logp_ref (the reference policy's log-probs)")
    if not (0 <= eps_low < 1 and eps_high >= 0):
        raise ValueError(f"{op}: need 0 <= eps_low < 1 and eps_high >= 0, got eps_low={eps_low}, eps_high={eps_high}")


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
    backend: str = "auto",
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """GRPO loss to minimise, from logits [N, T, V], targets and mask [N, T], rewards [N].

    N = prompts * group_size with each prompt's completions adjacent; mask = 1 on completion
    tokens. logp_old / logp_ref [N, T] are constants (logp_old None: on-policy, ratio 1 with its
    gradient kept). Returns (0-dim loss, stats) with stats["kl"] (mean k3 KL over completion
    tokens; 0 without logp_ref) and stats["clip_frac"] (share of completion tokens whose clipped
    term is the minimum), both detached 0-dim fp32 tensors on the logits' device.
    """
    op = "kernels.grpo_loss"
    eps_high = eps_low if eps_high is None else eps_high
    chosen = dispatch.resolve_backend(backend, logits.device, op)
    rows = _check_rows(logits, targets, temperature, op, dims=(3,))
    _check_grpo(logits, targets, mask, rewards, group_size, logp_old, logp_ref, eps_low, eps_high, beta)
    terms = dict(group_size=group_size, logp_old=logp_old, logp_ref=logp_ref, eps_low=eps_low,
                 eps_high=eps_high, beta=beta, scale=scale, agg=agg)
    if chosen == "reference":
        return reference.grpo_loss(logits, targets, mask, rewards, temperature=temperature, **terms)
    if chosen == "torch":
        logp = ChunkedTokenLogprobs.apply(rows, targets, temperature)
        return reference.grpo_loss_from_logprobs(logp, mask, rewards, **terms)
    adv = reference.group_advantages(rewards, group_size, scale)  # [N]
    weights = reference.aggregation_weights(mask, agg)  # [N, T]
    loss, kl, clipped = logprob_triton.GRPOLoss.apply(
        rows, targets, adv, weights, logp_old, logp_ref, 1 - eps_low, 1 + eps_high, beta, temperature
    )
    return loss, {"kl": reference.completion_mean(kl, mask), "clip_frac": reference.completion_mean(clipped, mask)}
