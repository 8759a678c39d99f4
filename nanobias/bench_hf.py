"""The yardstick of `nanobias bench`: Hugging Face's GPT2LMHeadModel with a nanobias GPT's config,
doing the same work on the same inputs.

Same shape (n_layer, n_head, n_embd, vocabulary, n_positions = block_size, GELU(tanh), LayerNorm
eps 1e-5, tied embeddings), dropout 0, the same AdamW groups. Training: the mean next-token
cross-entropy, backward, one AdamW step. Sampling: `generate` with do_sample, top_k=0 (plain
softmax sampling) and the KV cache, for exactly `new_tokens` tokens (min_new_tokens =
max_new_tokens). GPT-2 always has biases and learned positions; a config without them is
compared with the nearest GPT-2.

transformers is optional (the `bench` extra): only this module imports it, and only when called.
"""

import torch
import torch.nn.functional as F

from nanobias.model import GPTConfig
from nanobias.optim import OptimConfig, make_optimizer

INSTALL = "pip install 'nanobias[bench]' (or pip install transformers)"


def hf_available() -> bool:
    try:
        import transformers  # noqa: F401
    except ImportError:
        return False
    return True


def hf_model(config: GPTConfig, device):
    from transformers import GPT2Config, GPT2LMHeadModel

    last = config.vocab_size - 1  # generate needs end-of-text and padding ids inside the vocabulary
    hf_config = GPT2Config(vocab_size=config.vocab_size, n_positions=config.block_size, n_embd=config.n_embd,
                           n_layer=config.n_layer, n_head=config.n_head, resid_pdrop=0.0, embd_pdrop=0.0,
                           attn_pdrop=0.0, activation_function="gelu_new", layer_norm_epsilon=1e-5,
                           bos_token_id=last, eos_token_id=last, pad_token_id=last)
    torch.manual_seed(0)
    return GPT2LMHeadModel(hf_config).to(device)


def hf_workloads(config: GPTConfig, optim: OptimConfig, x: torch.Tensor, prompts: list[list[int]],
                 new_tokens: int) -> dict:
    """{"train_tok_s": (step, tokens per call), "sample_tok_s_cache": (...)} for HF's model.
    x [B, T + 1] token ids; prompts: equal-length token lists."""
    model = hf_model(config, x.device)
    opt = make_optimizer(model, optim)
    ids = torch.tensor(prompts, device=x.device)  # [R, P]
    eos = model.config.eos_token_id

    def train_step():
        logits = model(input_ids=x[:, :-1]).logits  # [B, T, V]
        loss = F.cross_entropy(logits.flatten(0, 1).float(), x[:, 1:].flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    @torch.no_grad()
    def sample_step():
        model.eval()
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=True, top_k=0,
                             temperature=1.0, top_p=1.0, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                             use_cache=True, pad_token_id=eos, eos_token_id=eos)
        assert out.shape == (ids.shape[0], ids.shape[1] + new_tokens), out.shape
        model.train()

    return {"train_tok_s": (train_step, x[:, :-1].numel()),
            "sample_tok_s_cache": (sample_step, len(prompts) * new_tokens)}
