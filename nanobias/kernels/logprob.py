"""Token log-probs and the fused GRPO loss: validation, dispatch, and the chunked PyTorch path.

    logp[n, t] = log_softmax(logits[n, t] / temperature)[targets[n, t]]
and, Triton only, the GRPO loss of nanobias/grpo.py fused onto it (clipped ratio times the
advantage, plus beta times the k3 KL, times each token's aggregation weight), which grpo.py
calls as a drop-in for token_logprobs followed by its own per-token loss.

The "torch" backend walks the rows in chunks of about CHUNK_ELEMENTS logits: forward keeps one
chunk's log-softmax at a time and saves nothing but its inputs; backward recomputes each chunk's
softmax and writes
    dlogits = c / temperature * (onehot(target) - softmax(logits / temperature)),
so the extra memory is a chunk or two plus the gradient itself, never a full [N*T, V] fp32
tensor. The "triton" backend streams each row instead (`logprob_triton.py`).

inplace_backward=True (Liger's in-place option; default False everywhere in the library) drops the
gradient buffer too: backward writes dlogits into the logits' own storage, chunk by chunk on
"torch" (each chunk's softmax is computed before the chunk is overwritten) and row block by row
block on "triton" (each block loaded before it is stored). The gradient is stored in the logits
dtype either way, so any floating logits can hold it. The logits are destroyed by backward: only
for callers that do not read them afterwards (grpo_update reads them for the entropy, so it does
not use this). Backward bumps their autograd version counter, so a graph that saved the same
logits and runs its backward later raises instead of reading gradients. Where the write would
not land in the caller's tensor the result is still correct:
- logits without unit stride over V were copied by `_check_rows`; the copy is written over
  (saving the fresh buffer all the same) and the caller's logits stay untouched;
- "triton" writes rows as [N*T, V] contiguous, so for non-contiguous logits (the usual
  `logits[:, :-1]` slice) it falls back to a fresh buffer; "torch" writes strided views in place;
- "reference" ignores the flag (autograd's own gradient, fresh buffers).
"""

import torch

from . import dispatch, reference

# 2^20 logits = 4 MiB per fp32 temporary. Smaller chunks save a little memory but multiply the
# number of multi-threaded ops, each of which stalls while another job holds a core: on a busy
# 2-core machine 2^18 measured 1.2-6x eager time, 2^20 0.7-1.2x (BENCHMARKS.md).
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
    def forward(ctx, logits, targets, temperature, inplace=False):
        compute = torch.promote_types(logits.dtype, torch.float32)
        logp = dispatch.empty_output(targets.shape, compute, logits.device)
        for ns, ts in _row_blocks(*logits.shape):
            chunk_logp = torch.log_softmax(_chunk(logits, ns, ts, compute, temperature), dim=-1)
            logp[ns, ts] = chunk_logp.gather(-1, targets[ns, ts, None]).squeeze(-1)
        ctx.save_for_backward(logits, targets)
        ctx.temperature = temperature
        ctx.inplace = inplace
        return logp

    @staticmethod
    def backward(ctx, grad_logp):
        logits, targets = ctx.saved_tensors
        compute = torch.promote_types(logits.dtype, torch.float32)
        scale = grad_logp.to(compute) / ctx.temperature  # [N, T]
        # in place: each chunk is read into `probs` before mul overwrites it; detach() shares the
        # version counter, so the writes mark the logits modified for any other saved use
        dlogits = logits.detach() if ctx.inplace else dispatch.empty_output(logits.shape, logits.dtype, logits.device)
        for ns, ts in _row_blocks(*logits.shape):
            probs = torch.softmax(_chunk(logits, ns, ts, compute, ctx.temperature), dim=-1)  # [n, t, V]
            index = targets[ns, ts, None]
            probs.scatter_(-1, index, probs.gather(-1, index) - 1)  # softmax - onehot, in fp32
            torch.mul(probs, -scale[ns, ts, None], out=dlogits[ns, ts])  # one pass: scale, cast, store
        return dlogits, None, None, None


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
                   backend: str = "auto", inplace_backward: bool = False) -> torch.Tensor:
    """logits [N, T, V] or [M, V] (fp32 | fp16 | bf16, any strides), targets [N, T] or [M] long ->
    differentiable log-probs of the targets, same leading shape, fp32.

    inplace_backward=True: backward writes the gradient into the logits' storage, destroying them
    (module docstring: only for callers that never read the logits after backward; "reference"
    ignores it)."""
    op = "kernels.token_logprobs"
    chosen = dispatch.resolve_backend(backend, logits.device, op)
    rows = _check_rows(logits, targets, temperature, op)  # [N, T, V]
    if chosen == "reference":
        return reference.token_logprobs(logits, targets, temperature)
    targets = targets.reshape(rows.shape[:2])
    if chosen == "triton":
        from . import logprob_triton  # imports Triton, on the first call only (dispatch.py)

        logp = logprob_triton.TokenLogprobs.apply(rows, targets, temperature, inplace_backward)
    else:
        logp = ChunkedTokenLogprobs.apply(rows, targets, temperature, inplace_backward)
    return logp.view(logits.shape[:-1])


def _check_fused_grpo(N, T, advantages, weights, logp_old, logp_ref, eps_low, eps_high, beta):
    op = "kernels.fused_grpo_loss"
    if tuple(advantages.shape) != (N,):
        raise ValueError(f"{op}: advantages must have shape [N] = ({N},), got {tuple(advantages.shape)}")
    for name, values in (("weights", weights), ("logp_old", logp_old), ("logp_ref", logp_ref)):
        if values is not None and tuple(values.shape) != (N, T):
            raise ValueError(f"{op}: {name} must have shape [N, T] = {(N, T)}, got {tuple(values.shape)}")
    if beta > 0 and logp_ref is None:
        raise ValueError(f"{op}: beta = {beta} > 0 needs logp_ref (the reference policy's log-probs)")
    if not (0 <= eps_low < 1 and eps_high >= 0):
        raise ValueError(f"{op}: need 0 <= eps_low < 1 and eps_high >= 0, got eps_low={eps_low}, eps_high={eps_high}")


def fused_grpo_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    advantages: torch.Tensor,
    weights: torch.Tensor,
    logp_old: torch.Tensor | None,
    logp_ref: torch.Tensor | None,
    eps_low: float,
    eps_high: float,
    beta: float,
    temperature: float = 1.0,
    inplace_backward: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The GRPO loss of nanobias/grpo.py in one Triton pass per row, from logits [N, T, V]:

        loss = sum over tokens of weights * (-min(ratio * A, clip(ratio, 1 - eps_low, 1 + eps_high) * A)
                                             + beta * kl),
        ratio = exp(logp - logp_old),  kl = exp(logp_ref - logp) - (logp_ref - logp) - 1,
    logp = token_logprobs(logits, targets, temperature), A = advantages[n].

    targets, weights (each token's aggregation weight, 0 on padding), logp_old, logp_ref [N, T];
    advantages [N]. logp_old None: on-policy (ratio 1, its gradient kept); logp_ref None: kl = 0.
    Returns (0-dim loss, kl [N, T], clipped [N, T]: 1 where the clipped term is the minimum), fp32;
    only the loss is differentiable, w.r.t. logits. inplace_backward=True: backward writes the
    gradient into contiguous logits' storage, destroying them (see token_logprobs).
    """
    op = "kernels.fused_grpo_loss"
    dispatch.resolve_backend("triton", logits.device, op)  # raises unless Triton can run here
    rows = _check_rows(logits, targets, temperature, op, dims=(3,))
    _check_fused_grpo(*logits.shape[:2], advantages, weights, logp_old, logp_ref, eps_low, eps_high, beta)
    from . import logprob_triton

    return logprob_triton.GRPOLoss.apply(
        rows, targets, advantages, weights, logp_old, logp_ref, 1 - eps_low, 1 + eps_high, beta, temperature,
        inplace_backward,
    )
