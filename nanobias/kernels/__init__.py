"""nanobias.kernels: token log-probs, the fused GRPO loss and the masked GELU, as Triton kernels
next to their PyTorch references.

    token_logprobs(logits [N, T, V], targets [N, T], temperature=1.0, backend="auto",
                   inplace_backward=False) -> logp [N, T] fp32
        logp = log_softmax(logits / temperature)[targets]   (also logits [M, V], targets [M]);
        inplace_backward=True (also on fused_grpo_loss): backward writes dlogits into the logits,
        destroying them; for callers that never read the logits after backward (logprob.py)
    fused_grpo_loss(logits, targets, advantages [N], weights [N, T], logp_old, logp_ref,
                    eps_low, eps_high, beta, temperature=1.0, inplace_backward=False)
        -> (loss, kl [N, T], clipped [N, T])
        the GRPO loss of nanobias/grpo.py in one pass per row; Triton only
    masked_gelu(x [..., H], mask [H], value [H], backend="auto", approximate="tanh") -> [..., H]
        where(mask, value, gelu(x)): the neuron intervention inside the MLP; GELU exact ("none") or tanh

Backends (`dispatch.py`): "triton" (the kernels; on CPU through the interpreter, which needs
TRITON_INTERPRET=1 before this package is imported), "torch" (PyTorch, memory-efficient: chunked
over rows, never a full fp32 [N*T, V] log-softmax), "reference" (`reference.py`, the readable
definition), "auto" (Triton on CUDA or when interpreted, else "torch"). The GRPO advantages,
aggregation weights and the loss itself are defined in nanobias/grpo.py, which picks
`fused_grpo_loss` when its backend resolves to "triton". Benchmark: `python -m
nanobias.kernels.bench`, results in BENCHMARKS.md.
"""

from .activation import masked_gelu
from .logprob import fused_grpo_loss, token_logprobs

__all__ = ["token_logprobs", "fused_grpo_loss", "masked_gelu"]
