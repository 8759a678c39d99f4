"""Triton kernels for token log-probs and the fused GRPO loss (references: `reference.py` and
`grpo_loss` in nanobias/grpo.py).

Forward, one program per row (token) of logits [N, T, V]: a single pass over the vocabulary in
blocks keeps an online log-sum-exp in fp32 (Milakov & Gimelshein 2018: rescale the running sum
when the running max grows), then
    logp = x[target] / temperature - lse,  lse = logsumexp(x / temperature).
The GRPO kernel goes on to the per-token loss terms (ratio, clip, k3 KL, aggregation weight w)
and their derivative `coef = d loss / d logp`, so backward needs only lse and coef per row.

Backward, one more pass per row writes the gradient straight from the logits, never storing a
softmax:  dlogits = c / temperature * (onehot(target) - softmax(x / temperature)),  with c the
upstream gradient of logp (times coef for GRPO).

Loads are converted to fp32 (the interpreter computes bf16 wrongly otherwise); gradients are
stored in the logits dtype. No autotuning (it needs a GPU): blocks are chosen from V.
"""

import torch
import triton
import triton.language as tl

from . import dispatch


@triton.jit
def _row_logprob(row_ptr, target, V, inv_temp, BLOCK_V: tl.constexpr):
    """(lse, logp) of one row: online log-sum-exp over blocks of BLOCK_V logits."""
    running_max = float("-inf")
    running_sum = 0.0
    for start in range(0, V, BLOCK_V):
        cols = start + tl.arange(0, BLOCK_V)
        x = tl.load(row_ptr + cols, mask=cols < V, other=float("-inf")).to(tl.float32) * inv_temp
        new_max = tl.maximum(running_max, tl.max(x, axis=0))
        running_sum = running_sum * tl.exp(running_max - new_max) + tl.sum(tl.exp(x - new_max), axis=0)
        running_max = new_max
    lse = running_max + tl.log(running_sum)
    logp = tl.load(row_ptr + target).to(tl.float32) * inv_temp - lse
    return lse, logp


@triton.jit
def logprob_fwd_kernel(
    logits_ptr, stride_n, stride_t, T, V,  # logits [N, T, V], unit stride over V
    targets_ptr, inv_temp,  # targets [N*T]
    lse_ptr, logp_ptr,  # out [N*T] fp32
    BLOCK_V: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    row_ptr = logits_ptr + (row // T) * stride_n + (row % T) * stride_t
    lse, logp = _row_logprob(row_ptr, tl.load(targets_ptr + row), V, inv_temp, BLOCK_V)
    tl.store(lse_ptr + row, lse)
    tl.store(logp_ptr + row, logp)


@triton.jit
def grpo_fwd_kernel(
    logits_ptr, stride_n, stride_t, T, V,  # logits [N, T, V], unit stride over V
    targets_ptr, inv_temp,  # targets [N*T]
    adv_ptr, weight_ptr, old_ptr, ref_ptr,  # advantage [N]; weight, logp_old, logp_ref [N*T]
    clip_low, clip_high, beta,
    lse_ptr, loss_ptr, coef_ptr, kl_ptr, clipped_ptr,  # out [N*T] fp32
    HAS_OLD: tl.constexpr, HAS_REF: tl.constexpr, BLOCK_V: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    seq = row // T
    row_ptr = logits_ptr + seq * stride_n + (row % T) * stride_t
    lse, logp = _row_logprob(row_ptr, tl.load(targets_ptr + row), V, inv_temp, BLOCK_V)

    adv = tl.load(adv_ptr + seq)
    if HAS_OLD:
        ratio = tl.exp(logp - tl.load(old_ptr + row))
    else:
        ratio = tl.full((), 1.0, tl.float32)  # on-policy: logp_old = logp, so the gradient is -A
    surrogate = ratio * adv
    surrogate_clipped = tl.minimum(tl.maximum(ratio, clip_low), clip_high) * adv
    clipped = surrogate_clipped < surrogate  # the clipped term is the min: zero gradient
    loss = -tl.minimum(surrogate, surrogate_clipped)
    dloss = tl.where(clipped, 0.0, -adv * ratio)
    if HAS_REF:
        d = tl.load(ref_ptr + row) - logp
        kl = tl.exp(d) - d - 1.0
        loss += beta * kl
        dloss += beta * (1.0 - tl.exp(d))
    else:
        kl = tl.full((), 0.0, tl.float32)
    # where(), not w * ...: a padded token's garbage logp_old may give inf, and inf * 0 is NaN
    w = tl.load(weight_ptr + row)
    tl.store(loss_ptr + row, tl.where(w != 0, w * loss, 0.0))
    tl.store(coef_ptr + row, tl.where(w != 0, w * dloss, 0.0))
    tl.store(kl_ptr + row, kl)
    tl.store(clipped_ptr + row, clipped.to(tl.float32))
    tl.store(lse_ptr + row, lse)


@triton.jit
def logprob_bwd_kernel(
    logits_ptr, stride_n, stride_t, T, V,  # logits [N, T, V], unit stride over V
    targets_ptr, inv_temp, lse_ptr, coef_ptr,  # [N*T]; coef = d loss / d logp
    dlogits_ptr,  # out [N*T, V], logits dtype
    BLOCK_V: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    row_ptr = logits_ptr + (row // T) * stride_n + (row % T) * stride_t
    target = tl.load(targets_ptr + row)
    lse = tl.load(lse_ptr + row)
    scale = tl.load(coef_ptr + row) * inv_temp
    for start in range(0, V, BLOCK_V):
        cols = start + tl.arange(0, BLOCK_V)
        x = tl.load(row_ptr + cols, mask=cols < V, other=0.0).to(tl.float32) * inv_temp
        grad = scale * (tl.where(cols == target, 1.0, 0.0) - tl.exp(x - lse))
        tl.store(dlogits_ptr + row * V + cols, grad.to(dlogits_ptr.dtype.element_ty), mask=cols < V)


def _block_v(V: int) -> int:
    return max(16, min(triton.next_power_of_2(V), 4096))


def _rows(logits: torch.Tensor) -> tuple:
    """Launch grid and the shape/stride arguments every kernel takes for logits [N, T, V]."""
    N, T, V = logits.shape
    return (N * T,), (logits, logits.stride(0), logits.stride(1), T, V)


def _backward(logits, targets, lse, coef, temperature, inplace=False):
    """dlogits [N, T, V] (logits dtype) from coef [N*T] fp32 = d loss / d logp; inplace: written
    into the logits themselves when they are contiguous (the kernel stores rows at row * V)."""
    grid, rows = _rows(logits)
    if inplace and logits.is_contiguous():
        dlogits = logits.detach()  # each block is loaded before the same block is stored
        torch.autograd.graph.increment_version(dlogits)  # a kernel write bumps no version counter
    else:
        dlogits = dispatch.empty_output(logits.shape, logits.dtype, logits.device)
    logprob_bwd_kernel[grid](*rows, targets, 1.0 / temperature, lse, coef, dlogits, BLOCK_V=_block_v(logits.shape[2]))
    return dlogits


def _optional_rows(values, placeholder):
    """fp32 contiguous values [N, T], or any tensor for a pointer the kernel will not read."""
    return placeholder if values is None else values.float().contiguous()


class TokenLogprobs(torch.autograd.Function):
    """logits [N, T, V] (unit last stride), targets [N, T] long -> logp [N, T] fp32."""

    @staticmethod
    def forward(ctx, logits, targets, temperature, inplace=False):
        grid, rows = _rows(logits)
        targets = targets.contiguous()
        lse = dispatch.empty_output(targets.shape, torch.float32, logits.device)
        logp = dispatch.empty_output(targets.shape, torch.float32, logits.device)
        logprob_fwd_kernel[grid](*rows, targets, 1.0 / temperature, lse, logp, BLOCK_V=_block_v(logits.shape[2]))
        ctx.save_for_backward(logits, targets, lse)
        ctx.temperature, ctx.inplace = temperature, inplace
        return logp

    @staticmethod
    def backward(ctx, grad_logp):
        logits, targets, lse = ctx.saved_tensors
        coef = grad_logp.float().contiguous()
        return _backward(logits, targets, lse, coef, ctx.temperature, ctx.inplace), None, None, None


class GRPOLoss(torch.autograd.Function):
    """Fused GRPO loss. logits [N, T, V]; targets, weights, logp_old, logp_ref [N, T]; adv [N].

    Returns (loss, kl [N, T], clipped [N, T]); only the loss is differentiable (w.r.t. logits).
    """

    @staticmethod
    def forward(ctx, logits, targets, adv, weights, logp_old, logp_ref, clip_low, clip_high, beta, temperature,
                inplace=False):
        grid, rows = _rows(logits)
        targets = targets.contiguous()
        shape, device = targets.shape, logits.device
        lse, loss, coef, kl, clipped = (dispatch.empty_output(shape, torch.float32, device) for _ in range(5))
        grpo_fwd_kernel[grid](
            *rows, targets, 1.0 / temperature,
            adv.float().contiguous(), weights.float().contiguous(),
            _optional_rows(logp_old, lse), _optional_rows(logp_ref, lse),
            float(clip_low), float(clip_high), float(beta),  # floats: Triton would specialise an int 1
            lse, loss, coef, kl, clipped,
            HAS_OLD=logp_old is not None, HAS_REF=logp_ref is not None, BLOCK_V=_block_v(logits.shape[2]),
        )
        ctx.save_for_backward(logits, targets, lse, coef)
        ctx.temperature, ctx.inplace = temperature, inplace
        ctx.mark_non_differentiable(kl, clipped)
        return loss.sum(), kl, clipped

    @staticmethod
    def backward(ctx, grad_loss, _grad_kl, _grad_clipped):
        logits, targets, lse, coef = ctx.saved_tensors
        dlogits = _backward(logits, targets, lse, coef * grad_loss.float(), ctx.temperature, ctx.inplace)
        return (dlogits,) + (None,) * 10
