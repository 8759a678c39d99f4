"""Which implementation serves a call, and how kernels allocate their outputs.

Backends (the `backend=` argument of token_logprobs and masked_gelu; fused_grpo_loss is Triton only):
- "triton": the Triton kernels. On CUDA tensors they run compiled; on CPU tensors they run
  through Triton's interpreter, which needs `TRITON_INTERPRET=1` set before the first kernel
  call imports the kernel modules (Triton decides at decoration time whether a kernel is
  interpreted); setting it before `nanobias.kernels` is imported is always early enough.
- "torch": PyTorch only, memory-efficient: the log-prob ops walk the rows in chunks and never
  hold a full fp32 `[N*T, V]` log-softmax; backward recomputes each chunk's softmax.
- "reference": `reference.py`, the readable full-materialisation definition.
- "auto": "triton" on CUDA tensors, and on CPU tensors when the kernels are interpreted;
  "torch" otherwise (including every platform without Triton, which is optional off Linux).
"""

import importlib.util
import os
import sys

import torch

# Triton is optional off Linux (pyproject); without it every op runs on the torch backend. It is
# found here, not imported: importing it costs ~0.3 s of every process's start, and a CPU run that
# does not interpret the kernels never needs it (the kernel modules import it on first use).
HAVE_TRITON = importlib.util.find_spec("triton") is not None

BACKENDS = ("auto", "triton", "torch", "reference")


def triton_interpreted() -> bool:
    """True when the Triton kernels were built for the interpreter (TRITON_INTERPRET=1 at import), or
    would be if they were built now."""
    if not HAVE_TRITON:
        return False
    if f"{__package__}.activation_triton" not in sys.modules and "TRITON_INTERPRET" not in os.environ:
        return False  # not built yet, and Triton would compile them: no need to import it to know
    from triton.runtime.interpreter import InterpretedFunction

    from .activation_triton import masked_gelu_fwd_kernel

    return isinstance(masked_gelu_fwd_kernel, InterpretedFunction)


def resolve_backend(backend: str, device: torch.device, op: str) -> str:
    """The concrete backend ("triton" | "torch" | "reference") for an op on tensors on `device`."""
    if backend not in BACKENDS:
        raise ValueError(f"{op}: backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        use_triton = HAVE_TRITON and (device.type == "cuda" or triton_interpreted())
        return "triton" if use_triton else "torch"
    if backend == "triton":
        if not HAVE_TRITON:
            raise RuntimeError(f"{op}: backend='triton' needs the triton package; use backend='torch'")
        if device.type != "cuda" and not triton_interpreted():
            raise RuntimeError(
                f"{op}: backend='triton' on {device.type} tensors needs TRITON_INTERPRET=1 in the "
                "environment before `nanobias.kernels` is imported; use backend='torch' on CPU"
            )
    return backend


def empty_output(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Uninitialised buffer for a kernel to fill completely (tests replace this to poison with NaN)."""
    return torch.empty(shape, dtype=dtype, device=device)
