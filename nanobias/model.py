"""The GPT policy: GPT-2's architecture at any size, with a KV cache and a neuron site in every MLP.

A decoder-only transformer (Radford et al., 2019): learned token embeddings and positions (below),
then `n_layer` pre-LayerNorm blocks `x = x + attn(ln_1(x)); x = x + mlp(ln_2(x))`, a final LayerNorm
and a language-model head tied to the token embedding. Parameter names follow GPT-2's
(`transformer.h.0.attn.c_attn.weight`, ...) so its weights can be loaded into this class.

Positions (`GPTConfig.position`): "learned" (GPT-2's; the default, the only one its weights load
into) adds a learned table `transformer.wpe` [block_size, C] to the token embedding. "rotary" (RoPE,
Su et al., 2021) has no table: after the split into heads, every query and key (head dim D, position
p) has its interleaved pairs (x_{2i}, x_{2i+1}), i < D/2, rotated by the angle p * theta_i:

    x_{2i} + i x_{2i+1}  ->  (x_{2i} + i x_{2i+1}) e^{i p theta_i},   theta_i = 10000^(-2i/D)

and values are not, so a score q_m . k_n depends on m - n alone. Keys are cached already rotated.

Padding: batches of prompts with different lengths are LEFT-padded. `attention_mask` [B, S]
marks the real tokens of everything seen so far (cached + new); positions count real tokens
only, so a left-padded row gets the same logits as the same row alone, and the last real token is
always at index -1, where the reward model reads. A packed row (pretraining: no work on padding)
numbers its documents 1, 2, ... in the mask: a token sees only its own document, whose positions
restart at 0.

Token shift (`GPTConfig.token_shift` = K; 0 is GPT-2, the `cpu` preset has 4), a departure from
GPT-2 (RWKV's token shift, Peng et al., 2023; a Canon layer at the input, Allen-Zhu, 2025):

    h_0[t] = wte[x_t] + sum_{k=1..K} shift[k-1] * wte[x_{t-k}] + wpe[t]      shift: [K, C], init 2^-(k-1)

x_{t-k} being the k-th real token before t in its document (no term where there is none). To say
who struggled, the policy must find the name after ". The"; without the shift it first has to learn
heads that look a few positions back, and reads disambiguated contexts much later (README, "Speed").
The KV cache keeps the token ids, so a decode step finds the tokens before it.

Neuron sites: `mlp.neurons` (NeuronSite) is where the intervention of Shinoda et al. (2026) clamps
the MLP's activation; forward hooks read it and the other sites, the pre-activation `mlp.c_fc(x)` and
the attention query (`attn.c_attn`'s first C) (intervention.py).
"""

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from nanobias.kernels import masked_gelu
from nanobias.kernels.reference import GELU_FORMS
from nanobias.kvcache import KVCache

POSITIONS = ("learned", "rotary")
ROPE_BASE = 10000.0


@dataclass
class GPTConfig:
    block_size: int = 256  # longest sequence (positions)
    vocab_size: int = 2048
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    dropout: float = 0.0
    bias: bool = True  # GPT-2 has biases in Linear and LayerNorm
    position: str = "learned"  # "learned" (GPT-2's table wpe) | "rotary" (RoPE on queries and keys)
    token_shift: int = 0  # K: the embeddings of the K tokens before each token join its input (module docstring)
    # GELU as torch's `approximate`: "tanh" is GPT-2's; "none", the exact erf form, is faster on a CPU
    gelu_approximate: str = "tanh"

    def __post_init__(self):
        if self.position not in POSITIONS:
            raise ValueError(f"model.position: expected one of {POSITIONS}, got {self.position!r}")
        if self.gelu_approximate not in GELU_FORMS:
            raise ValueError(f"model.gelu_approximate: expected one of {GELU_FORMS}, got {self.gelu_approximate!r}")
        if self.token_shift < 0:
            raise ValueError(f"model.token_shift: expected 0 (GPT-2's inputs) or more earlier tokens, got {self.token_shift}")
        if self.position == "rotary" and self.n_embd % (2 * self.n_head):
            raise ValueError(f"model.position='rotary' rotates pairs of dimensions, so the head dim n_embd / n_head "
                             f"must be an even integer, got {self.n_embd} / {self.n_head}")


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [..., B, H, T, D], cos and sin [B, 1, T, D/2] -> x with each pair (x_{2i}, x_{2i+1}) rotated."""
    x1, x2 = x[..., 0::2], x[..., 1::2]  # [B, H, T, D/2]; bf16 * fp32 tables computes in fp32
    out = torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)  # [B, H, T, D/2, 2]
    return out.flatten(-2).type_as(x)  # interleaved back to [B, H, T, D]


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        assert config.n_embd % config.n_head == 0
        self.n_head = config.n_head
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = config.dropout

    def forward(self, x, attn_mask=None, cache=None, layer=0, rope=None):
        B, T, C = x.shape
        qkv = self.c_attn(x).view(B, T, 3, self.n_head, C // self.n_head).permute(2, 0, 3, 1, 4)  # [3, B, H, T, D]
        q, k, v = qkv.unbind(0)  # [B, H, T, D] each
        if rope is not None:  # (cos, sin) at the new tokens' positions: cached keys were rotated at theirs
            q, k = rotate(qkv[:2], *rope).unbind(0)  # both in one call
        if cache is not None:
            start = cache.length
            cache.k[layer][:, :, start:start + T] = k
            cache.v[layer][:, :, start:start + T] = v
            k, v = cache.k[layer][:, :, :start + T], cache.v[layer][:, :, :start + T]  # [B, H, S, D]
        dropout = self.dropout if self.training else 0.0
        if attn_mask is None and cache is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout)
        else:  # attn_mask None with a cache means T == 1: the new token sees every cached one
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.c_proj(y)


class NeuronSite(nn.Module):
    """GELU of the MLP's hidden layer (`approximate`: GPTConfig.gelu_approximate), and the one place where
    neurons are clamped.

    `clamp`: None, or (mask [H] bool, value [H], last_only bool). When set, the masked neurons
    output `value` and get no gradient; with last_only, only at the last position (the token the
    reward head reads), else at every position. `intervention.Intervention.applied` sets it and
    restores it afterwards.
    """

    def __init__(self, approximate: str = "tanh"):
        super().__init__()
        self.clamp = None
        self.approximate = approximate

    def forward(self, h):  # h: [B, T, H] pre-activation
        if self.clamp is None:
            return F.gelu(h, approximate=self.approximate)
        mask, value, last_only = self.clamp
        if last_only:
            return torch.cat([F.gelu(h[:, :-1], approximate=self.approximate),
                              masked_gelu(h[:, -1:], mask, value, approximate=self.approximate)], dim=1)
        return masked_gelu(h, mask, value, approximate=self.approximate)


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.neurons = NeuronSite(config.gelu_approximate)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(self.neurons(self.c_fc(x))))


class Block(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x, attn_mask=None, cache=None, layer=0, rope=None):
        x = x + self.attn(self.ln_1(x), attn_mask, cache, layer, rope)
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),
            **({"wpe": nn.Embedding(config.block_size, config.n_embd)} if config.position == "learned" else {}),
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
            ln_f=nn.LayerNorm(config.n_embd, bias=config.bias),
        ))
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.transformer.wte.weight = self.lm_head.weight  # weight tying, as in GPT-2
        if config.token_shift:  # [K, C]: row k-1 weighs the embedding of the token k back, channel by channel
            self.shift = nn.Parameter(0.5 ** torch.arange(config.token_shift, dtype=torch.float)[:, None]
                                      * torch.ones(config.n_embd))
        self.apply(self._init_weights)
        # GPT-2 scales the residual projections by 1/sqrt(2 * n_layer): each block adds two of them
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))
        if config.position == "rotary":  # angles run up to block_size radians: fp64, then fp32 cos and sin
            D = config.n_embd // config.n_head
            theta = ROPE_BASE ** (-torch.arange(0, D, 2, dtype=torch.float64) / D)  # [D/2]
            angle = torch.arange(config.block_size, dtype=torch.float64)[:, None] * theta  # [block_size, D/2]
            # not persistent: rebuilt from the config, so checkpoints do not carry them
            self.register_buffer("rope_cos", angle.cos().float(), persistent=False)
            self.register_buffer("rope_sin", angle.sin().float(), persistent=False)

    def _init_weights(self, module):
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_params(self) -> int:
        """Parameters, counting the tied embedding once and leaving out position embeddings."""
        table = self.transformer.wpe.weight.numel() if "wpe" in self.transformer else 0
        return sum(p.numel() for p in self.parameters()) - table

    @property
    def neuron_sites(self) -> list[NeuronSite]:
        return [block.mlp.neurons for block in self.transformer.h]

    def forward(self, idx, attention_mask=None, cache: KVCache | None = None, return_hidden=False):
        """idx [B, T] -> logits [B, T, V] (and the final hidden states [B, T, C] if asked).

        attention_mask [B, S] (S = cached + T tokens): 0 = padding, else the number of the document
        a token belongs to (1 for a row of one document; a packed row numbers its documents 1, 2, ...).
        With a cache, the T new tokens are appended to it (one document per row).
        """
        B, T = idx.shape
        past = cache.length if cache is not None else 0
        if past + T > self.config.block_size:
            raise ValueError(f"sequence of {past + T} tokens exceeds block_size={self.config.block_size}")
        attn_mask, doc = None, None
        if attention_mask is not None:
            doc = attention_mask.long()  # [B, S]
            key_real = doc != 0
            # a query sees its document's real keys up to itself, and always itself (padding rows stay finite)
            if T == 1:  # a decode step: every key is up to the query, and the last one is itself
                pos = (key_real.sum(1, keepdim=True) - 1).clamp(min=0)  # [B, 1]
                sees = key_real.clone()
                sees[:, -1] = True
                sees = sees[:, None]  # [B, 1, S]
            else:
                index = torch.arange(past + T, device=idx.device)  # [S]
                # the tokens of its own document up to and including each token: its position + 1
                count = F.one_hot(doc, int(doc.max()) + 1).cumsum(1).gather(2, doc[..., None])[..., 0]  # [B, S]
                # a padding token takes the position a decode step gives it: the real tokens before it, minus 1
                pos = torch.where(key_real, count, key_real.long().cumsum(1)).sub(1).clamp(min=0)[:, past:]  # [B, T]
                query = doc[:, past:, None]  # [B, T, 1]; a padding query sees every real key, as in a decode step
                same = ((query == doc[:, None, :]) | (query == 0)) & key_real[:, None, :]  # [B, T, S]
                sees = (same & (index[None, :] <= index[past:, None])) | (index[None, :] == index[past:, None])
            # additive, built once for every layer (SDPA would turn a boolean mask into this in each)
            attn_mask = torch.zeros(sees.shape, device=idx.device, dtype=self.transformer.wte.weight.dtype)
            attn_mask = attn_mask.masked_fill_(~sees, float("-inf"))[:, None]  # [B, 1, T, S], broadcast over heads
        else:
            pos = torch.arange(past, past + T, device=idx.device)[None, :]  # [1, T]: broadcast over rows
            if cache is not None and T > 1:
                attn_mask = (torch.arange(past + T, device=idx.device)[None, :]
                             <= torch.arange(past, past + T, device=idx.device)[:, None])  # [T, S]
        x, rope = self.transformer.wte(idx), None  # [B, T, C]
        if self.config.token_shift:
            x = x + self.previous_embeddings(idx, doc, cache)
        if cache is not None:
            cache.ids[:, past:past + T] = idx
        if self.config.position == "learned":
            x = x + self.transformer.wpe(pos)
        else:  # each [B, 1, T, D/2], broadcast over heads
            rope = (self.rope_cos[pos][:, None], self.rope_sin[pos][:, None])
        x = self.transformer.drop(x)
        for layer, block in enumerate(self.transformer.h):
            x = block(x, attn_mask, cache, layer, rope)
        if cache is not None:
            cache.length += T
        hidden = self.transformer.ln_f(x)  # [B, T, C]
        logits = self.lm_head(hidden)  # [B, T, V]
        return (logits, hidden) if return_hidden else logits

    def previous_embeddings(self, idx, doc, cache) -> torch.Tensor:
        """sum_k shift[k-1] * wte[x_{t-k}] for the T new tokens [B, T, C] (module docstring); padding between
        two tokens (a completion left-padded after its cached prompt: reward.rewards) is no token.

        count[s], the real tokens at positions <= s, never decreases along a row, so the k-th real token
        before t is the first position whose count reaches count[t] - k: one binary search finds every
        (t, k) at once (a decode step of a small model pays per operator call, not per element)."""
        past, K = (cache.length if cache is not None else 0), self.config.token_shift
        seen = idx if cache is None else torch.cat([cache.ids[:, :past], idx], 1)  # [B, S]
        doc = torch.ones_like(seen) if doc is None else doc
        real = doc != 0
        count = real.long().cumsum(1)  # [B, S]
        want = count[:, past:, None] - torch.arange(1, K + 1, device=idx.device)  # [B, T, K]
        at = torch.searchsorted(count, want.flatten(1)).clamp(max=seen.shape[1] - 1)  # [B, T*K]
        new_doc = doc[:, past:, None]  # [B, T, 1]
        # it exists, the new token is real, and it is in the same document
        has = (want >= 1) & (new_doc != 0) & (doc.gather(1, at).view_as(want) == new_doc)  # [B, T, K]
        before = seen.gather(1, at).view_as(want)  # [B, T, K] token ids
        out = 0  # term by term: one sum over a K axis would round differently from the README's runs
        for k, weight in enumerate(self.shift):
            out = out + weight * self.transformer.wte(before[..., k]) * has[..., k, None]
        return out
