"""The KV cache: the keys and values a GPT (model.py) has computed, kept so that the next tokens attend to
them without recomputing them (decoding token by token; a prompt run once for all its group's completions).
"""

import torch


class KVCache:
    """Keys and values of every layer for the tokens seen so far, preallocated, and their token ids.

    k[layer], v[layer]: [B, n_head, max_len, head_dim]; ids: [B, max_len]; `length` tokens are filled.
    A tensor per layer: autograd refuses a write into a tensor whose earlier values it saved, and
    sampling.completion_logits trains through a prompt's cached keys (shared by its group)."""

    def __init__(self, config, batch_size: int, max_len: int, device=None, dtype=torch.float32):  # a GPTConfig
        if max_len > config.block_size:
            raise ValueError(f"KV cache of {max_len} tokens exceeds block_size={config.block_size}")
        shape = (batch_size, config.n_head, max_len, config.n_embd // config.n_head)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layer)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layer)]
        self.ids = torch.zeros((batch_size, max_len), device=device, dtype=torch.long)  # for token_shift
        self.length = 0

    def repeat_interleave(self, repeats: int) -> "KVCache":
        """Row b becomes rows b*repeats .. b*repeats+repeats-1: one prefilled prompt serves a group."""
        out = KVCache.__new__(KVCache)
        out.k = [k.repeat_interleave(repeats, dim=0) for k in self.k]
        out.v = [v.repeat_interleave(repeats, dim=0) for v in self.v]
        out.ids = self.ids.repeat_interleave(repeats, dim=0)
        out.length = self.length
        return out
