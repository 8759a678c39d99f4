"""Triton kernels for the masked GELU (reference: `reference.masked_gelu`).

    out = where(mask, value, gelu(x)),   dx = where(mask, 0, dout * gelu'(x))

in either form (EXACT, a compile-time switch: one kernel per form, no branch per element):

    exact:  gelu(x) = x * Phi(x),        Phi(x) = 0.5 * (1 + erf(x / sqrt(2)))
            gelu'(x) = Phi(x) + x * exp(-x^2 / 2) / sqrt(2 pi)
    tanh:   gelu(x) = x * s,   s = sigmoid(2u) = 0.5 * (1 + tanh(u)),   u = sqrt(2/pi) * (x + 0.044715 x^3)
            gelu'(x) = s + 2 x s (1 - s) du/dx,   du/dx = sqrt(2/pi) (1 + 3 * 0.044715 x^2)

Elementwise over x [M, H] in 2-D tiles, so each tile loads its columns' mask and value once.
Loads are converted to fp32; outputs are stored in x's dtype.
"""

import torch
import triton
import triton.language as tl

from . import dispatch

SQRT_2_OVER_PI = tl.constexpr(0.7978845608028654)  # jit functions read only constexpr globals
SQRT_HALF = tl.constexpr(0.7071067811865476)
INV_SQRT_2PI = tl.constexpr(0.3989422804014327)


@triton.jit
def _tile(M, H, BLOCK_M: tl.constexpr, BLOCK_H: tl.constexpr):
    """Row and column indices of this program's tile, and which of them lie inside [M, H]."""
    rows = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    return rows, cols, (rows[:, None] < M) & (cols[None, :] < H)


@triton.jit
def _sigmoid_2u(x):
    """sigmoid(2u) = 0.5 * (1 + tanh(u)); 2u clamped to +-80, where fp32 sigmoid is already 0 or 1
    (without the clamp exp overflows to inf: harmless on a GPU, a warning in the interpreter)."""
    two_u = 2.0 * SQRT_2_OVER_PI * (x + 0.044715 * x * x * x)
    return tl.sigmoid(tl.minimum(tl.maximum(two_u, -80.0), 80.0))


@triton.jit
def masked_gelu_fwd_kernel(x_ptr, mask_ptr, value_ptr, out_ptr, M, H, HAS_MASK: tl.constexpr, EXACT: tl.constexpr,
                           BLOCK_M: tl.constexpr, BLOCK_H: tl.constexpr):
    rows, cols, inside = _tile(M, H, BLOCK_M, BLOCK_H)
    offsets = rows[:, None] * H + cols[None, :]
    x = tl.load(x_ptr + offsets, mask=inside, other=0.0).to(tl.float32)
    if EXACT:
        out = x * 0.5 * (1.0 + tl.math.erf(x * SQRT_HALF))
    else:
        out = x * _sigmoid_2u(x)
    if HAS_MASK:
        masked = tl.load(mask_ptr + cols, mask=cols < H, other=0) != 0
        value = tl.load(value_ptr + cols, mask=cols < H, other=0.0)
        out = tl.where(masked[None, :], value[None, :], out)
    tl.store(out_ptr + offsets, out.to(out_ptr.dtype.element_ty), mask=inside)


@triton.jit
def masked_gelu_bwd_kernel(x_ptr, mask_ptr, dout_ptr, dx_ptr, M, H, HAS_MASK: tl.constexpr, EXACT: tl.constexpr,
                           BLOCK_M: tl.constexpr, BLOCK_H: tl.constexpr):
    rows, cols, inside = _tile(M, H, BLOCK_M, BLOCK_H)
    offsets = rows[:, None] * H + cols[None, :]
    x = tl.load(x_ptr + offsets, mask=inside, other=0.0).to(tl.float32)
    dout = tl.load(dout_ptr + offsets, mask=inside, other=0.0).to(tl.float32)
    if EXACT:  # exp(-x^2 / 2) underflows to 0 for |x| > ~14: the slope is then Phi's 0 or 1, as it should be
        dx = dout * (0.5 * (1.0 + tl.math.erf(x * SQRT_HALF)) + x * tl.exp(-0.5 * x * x) * INV_SQRT_2PI)
    else:
        s = _sigmoid_2u(x)
        du = SQRT_2_OVER_PI * (1.0 + 3.0 * 0.044715 * x * x)
        dx = dout * (s + 2.0 * x * s * (1.0 - s) * du)
    if HAS_MASK:
        masked = tl.load(mask_ptr + cols, mask=cols < H, other=0) != 0
        dx = tl.where(masked[None, :], 0.0, dx)
    tl.store(dx_ptr + offsets, dx.to(dx_ptr.dtype.element_ty), mask=inside)


def _launch(M: int, H: int):
    """(grid, block sizes): tiles of about 4096 elements, as wide as H allows up to 1024 columns."""
    block_h = max(16, min(triton.next_power_of_2(H), 1024))
    block_m = max(1, 4096 // block_h)
    return (triton.cdiv(M, block_m), triton.cdiv(H, block_h)), dict(BLOCK_M=block_m, BLOCK_H=block_h)


class MaskedGelu(torch.autograd.Function):
    """x [M, H] contiguous, mask [H] bool or None, value [H] or None, exact (erf GELU, else tanh) -> [M, H]
    in x's dtype."""

    @staticmethod
    def forward(ctx, x, mask, value, exact):
        M, H = x.shape
        grid, blocks = _launch(M, H)
        has_mask = mask is not None
        mask_i8 = mask.to(torch.int8).contiguous() if has_mask else x  # x: a pointer the kernel will not read
        value_f32 = value.detach().float().contiguous() if has_mask else x
        out = dispatch.empty_output(x.shape, x.dtype, x.device)
        masked_gelu_fwd_kernel[grid](x, mask_i8, value_f32, out, M, H, HAS_MASK=has_mask, EXACT=exact, **blocks)
        ctx.save_for_backward(x, mask_i8)
        ctx.has_mask, ctx.exact = has_mask, exact
        return out

    @staticmethod
    def backward(ctx, dout):
        x, mask_i8 = ctx.saved_tensors
        M, H = x.shape
        grid, blocks = _launch(M, H)
        dx = dispatch.empty_output(x.shape, x.dtype, x.device)
        masked_gelu_bwd_kernel[grid](x, mask_i8, dout.contiguous(), dx, M, H, HAS_MASK=ctx.has_mask, EXACT=ctx.exact,
                                     **blocks)
        return dx, None, None, None
