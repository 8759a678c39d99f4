"""nanobias kernels: fused log-prob / GRPO loss and masked GELU, each with a PyTorch reference.

    token_logprobs(logits, targets, temperature=1.0, backend="auto")         -> logp [N, T] fp32
    grpo_loss(logits, targets, mask, rewards, group_size, ..., backend="auto") -> (loss, stats)
    group_advantages(rewards, group_size, scale="group", eps=1e-4)            -> A [N]
    masked_gelu(x, mask, value, backend="auto")                               -> [..., H]

Backends (see `dispatch.py`): "triton" (Triton kernels; on CPU through the interpreter, which
needs TRITON_INTERPRET=1 before this package is imported), "torch" (PyTorch, memory-efficient:
chunked over rows, never a full fp32 [N*T, V] log-softmax), "reference" (`reference.py`, the
readable definition), "auto" (Triton on CUDA or when interpreted, else "torch").
Formulas: `reference.py`. Benchmark: `python -m kernels.bench`, results in BENCHMARKS.md.
"""

from .activation import masked_gelu
from .logprob import grpo_loss, token_logprobs
from .reference import group_advantages

__all__ = ["token_logprobs", "grpo_loss", "group_advantages", "masked_gelu"]
