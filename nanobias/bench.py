"""Throughput of a preset's model: training tokens/s (forward + backward + AdamW) and sampling
tokens/s with and without the KV cache. A benchmark, not a test: it prints numbers."""

import time
from dataclasses import replace

import torch

from nanobias.model import GPT
from nanobias.presets import get_preset
from nanobias.pretrain import lm_loss
from nanobias.sampling import sample
from nanobias.train import make_optimizer


def _rate(fn, units_per_call: int, seconds: float) -> float:
    fn()  # warm-up
    calls, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        fn()
        calls += 1
    return calls * units_per_call / (time.perf_counter() - start)


def bench_model(preset, seconds: float = 10.0, seq_len: int = 128, device: str | None = None) -> dict:
    """`preset`: a presets.Preset (the CLI's, with its --set overrides) or a preset's name."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    preset = get_preset(preset) if isinstance(preset, str) else preset
    preset_name = preset.name
    torch.manual_seed(0)
    model = GPT(replace(preset.model, vocab_size=preset.pretrain.vocab_size)).to(device)
    cfg = preset.pretrain
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, preset.pretrain.vocab_size, (cfg.batch_size, seq_len + 1), generator=g).to(device)
    opt = make_optimizer(model, cfg)

    def train_step():
        loss = lm_loss(model, x[:, :-1], x[:, 1:])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    prompts = torch.randint(0, preset.pretrain.vocab_size - 1, (16, 64), generator=g).tolist()
    new_tokens = 64
    no_eot = preset.pretrain.vocab_size  # an id never sampled, so every row runs all new_tokens
    results = {"device": device, "preset": preset_name, "params_M": model.num_params() / 1e6,
               "train_tok_s": _rate(train_step, cfg.batch_size * seq_len, seconds)}
    model.eval()
    for use_cache in (True, False):
        results[f"sample_tok_s_{'cache' if use_cache else 'no_cache'}"] = _rate(
            lambda: sample(model, prompts, no_eot, max_new_tokens=new_tokens, use_cache=use_cache),
            len(prompts) * new_tokens, seconds)
    print(f"{preset_name} model ({results['params_M']:.2f}M params) on {device}, {torch.get_num_threads()} threads")
    print(f"  training (fwd+bwd+AdamW, {cfg.batch_size}x{seq_len}): {results['train_tok_s']:,.0f} tokens/s")
    print(f"  sampling 16 prompts x 64 new tokens, KV cache:    {results['sample_tok_s_cache']:,.0f} tokens/s")
    print(f"  sampling 16 prompts x 64 new tokens, no cache:    {results['sample_tok_s_no_cache']:,.0f} tokens/s")
    return results
