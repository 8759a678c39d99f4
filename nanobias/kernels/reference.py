"""Readable PyTorch definitions of what the kernels compute (the specification the tests check).

- Token log-probs: `logp[n, t] = log_softmax(logits[n, t] / temperature)[targets[n, t]]`,
  materialising the full `[N, T, V]` log-softmax in fp32: simple and exact, and the memory cost
  the "torch" and "triton" backends remove. Gradients come from autograd.
- Masked GELU, the MLP activation with the neuron intervention fused in:
  `where(mask, value, gelu(x))` per neuron, GELU exact or tanh-approximated; masked neurons get zero gradient.

The GRPO loss that `fused_grpo_loss` computes is defined in nanobias/grpo.py (`grpo_loss`).
"""

import torch
import torch.nn.functional as F


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """logits [..., V], targets [...] (long) -> log-probs [...] in fp32 (fp64 for fp64 logits)."""
    compute = torch.promote_types(logits.dtype, torch.float32)  # fp32, or fp64 for fp64 logits
    logp_all = torch.log_softmax(logits.to(compute) / temperature, dim=-1)  # [..., V], the memory cost
    return logp_all.gather(-1, targets.unsqueeze(-1)).squeeze(-1)


GELU_FORMS = ("tanh", "none")  # torch's `approximate`: GPT-2's tanh approximation, or the exact erf form


def masked_gelu(x: torch.Tensor, mask: torch.Tensor | None, value: torch.Tensor | None,
                approximate: str = "tanh") -> torch.Tensor:
    """x [..., H], mask [H] bool, value [H] -> [..., H]; mask None is plain GELU."""
    a = F.gelu(x, approximate=approximate)
    if mask is None:
        return a
    return torch.where(mask, value.detach().to(a.dtype), a)
