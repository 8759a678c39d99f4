"""Masked GELU: the MLP activation with the neuron intervention fused in.

    out[..., h] = value[h]            if mask[h]     (the neuron is clamped, zero gradient)
                  gelu(x[..., h])      otherwise

with GELU in the form the model uses: `approximate` "tanh" (GPT-2's) or "none" (the exact erf form),
as torch.nn.functional.gelu takes it.

This is the median replacement of Shinoda et al. (2026): the bias neurons of the
reward model take their validation medians. Backends: "triton" (`activation_triton.py`);
"torch" and "reference" are the PyTorch composition of `reference.masked_gelu`, which is
elementwise already and so has nothing to chunk. `value` is a constant (gets no gradient).
"""

import torch

from . import dispatch, reference
from .reference import GELU_FORMS


def masked_gelu(x: torch.Tensor, mask: torch.Tensor | None, value: torch.Tensor | None,
                backend: str = "auto", approximate: str = "tanh") -> torch.Tensor:
    """x [..., H] floating, mask [H] bool (None: plain GELU), value [H] -> [..., H], x's dtype."""
    op = "kernels.masked_gelu"
    chosen = dispatch.resolve_backend(backend, x.device, op)
    if approximate not in GELU_FORMS:
        raise ValueError(f"{op}: approximate must be one of {GELU_FORMS} (as torch's gelu), got {approximate!r}")
    if not x.is_floating_point() or x.dim() < 1:
        raise ValueError(f"{op}: x must be a floating tensor [..., H], got {x.dtype} {tuple(x.shape)}")
    H = x.shape[-1]
    if mask is not None:
        if mask.dtype != torch.bool or tuple(mask.shape) != (H,):
            raise ValueError(f"{op}: mask must be bool of shape [H] = ({H},), got {mask.dtype} {tuple(mask.shape)}")
        if value is None or tuple(value.shape) != (H,):
            raise ValueError(f"{op}: value must have shape [H] = ({H},) when mask is set, "
                             f"got {None if value is None else tuple(value.shape)}")
    if chosen != "triton":
        return reference.masked_gelu(x, mask, value, approximate)
    if x.numel() == 0:
        return x.clone()
    from . import activation_triton  # imports Triton, on the first call only (dispatch.py)

    exact = approximate == "none"
    out = activation_triton.MaskedGelu.apply(x.reshape(-1, H).contiguous(), mask, value, exact)  # [M, H]
    return out.view(x.shape)
