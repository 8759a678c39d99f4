"""Pretraining: teach a GPT the answer format, and a planted bias.

The corpus is rendered training examples, prompt + completion + end-of-text (data.py). Ambiguous
contexts are answered with the biased answer at rate `bias_rate` and "unknown" otherwise;
disambiguated contexts are answered correctly. A model trained on it learns to read contexts
*and* to fall back on the stereotype when the context does not say: the biased base policy the
rest of the pipeline debiases. Loss: next-token cross-entropy on random windows of the packed
token stream,  L = -mean_t log p(x_{t+1} | x_<=t).
"""

from dataclasses import replace

import torch
import torch.nn.functional as F

from nanobias.checkpoint import policy_meta
from nanobias.data import Splits, pretraining_documents
from nanobias.model import GPT
from nanobias.presets import Preset
from nanobias.tokenizer import save_tokenizer, train_bpe
from nanobias.train import train


def corpus(splits: Splits, preset: Preset, seed: int) -> tuple[list[str], list[str]]:
    """Pretraining documents for (train, val); they differ by template, so val measures transfer."""
    return (pretraining_documents(splits.train, preset.bias_rate, seed, preset.long_rate),
            pretraining_documents(splits.val, preset.bias_rate, seed + 1, preset.long_rate))


def train_tokenizer(docs: list[str], vocab_size: int, path):
    enc = train_bpe(docs, vocab_size)
    save_tokenizer(enc, path)
    return enc


def encode_documents(enc, docs: list[str]) -> torch.Tensor:
    """Documents -> one token stream [N], each document followed by end-of-text."""
    ids = []
    for doc in docs:
        ids += enc.encode_ordinary(doc) + [enc.eot_token]
    return torch.tensor(ids, dtype=torch.long)


def random_windows(stream: torch.Tensor, batch_size: int, seq_len: int, generator: torch.Generator):
    """Inputs and next-token targets, both [B, seq_len], from random offsets of the stream."""
    starts = torch.randint(0, len(stream) - seq_len - 1, (batch_size,), generator=generator)
    x = torch.stack([stream[s:s + seq_len] for s in starts.tolist()])
    y = torch.stack([stream[s + 1:s + 1 + seq_len] for s in starts.tolist()])
    return x, y


def lm_loss(model: GPT, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    logits = model(x)  # [B, T, V]
    return F.cross_entropy(logits.flatten(0, 1), y.flatten())


def pretrain(preset: Preset, enc, train_docs: list[str], val_docs: list[str], ckpt_path, seed: int = 0,
             resume: bool = False) -> GPT:
    """Train a fresh GPT of the preset's size on the documents; writes the policy checkpoint."""
    train_stream, val_stream = encode_documents(enc, train_docs), encode_documents(enc, val_docs)
    cfg = preset.pretrain
    seq_len = min(preset.seq_len, len(train_stream) - 2, len(val_stream) - 2)
    torch.manual_seed(seed)  # the weight init
    model = GPT(replace(preset.model, vocab_size=enc.n_vocab))

    def batch_loss(step):
        # the batch is a function of (seed, step) alone, so a resumed run sees the same batches
        g = torch.Generator().manual_seed(seed * 1_000_003 + step)
        return lm_loss(model, *random_windows(train_stream, cfg.batch_size, seq_len, g)), {}

    def val_loss():
        g = torch.Generator().manual_seed(seed + 12345)
        return sum(lm_loss(model, *random_windows(val_stream, cfg.batch_size, seq_len, g)).item()
                   for _ in range(4)) / 4

    print(f"pretrain: {model.num_params() / 1e6:.2f}M parameters, {len(train_stream):,} training tokens, "
          f"{cfg.steps} steps x {cfg.batch_size} x {seq_len} tokens")
    train(model, batch_loss, cfg, ckpt_path, meta=policy_meta(model, enc), val_loss=val_loss, resume=resume,
          desc="pretrain")
    return model
