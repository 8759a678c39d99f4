"""Group sampling: G completions for each of B prompts, with a KV cache and a shared prompt prefix.

GRPO (BiasGRPO, Sec. 3) scores a *group* of completions of the same prompt against each other.
Each prompt is prefilled once; its KV cache is then repeated G times, so the prompt costs one
forward pass however large the group. Prompts are left-padded (see model.py), so every row's
next token is read at position -1.

Each step draws from softmax(logits / temperature), optionally cut to the top-k tokens and to
the smallest set whose probability reaches top-p; temperature 0 is greedy. A row stops at
end-of-text or after `max_new_tokens`. The returned log-probs are those of the sampled tokens
under softmax(logits / temperature) before the top-k/top-p cut: the policy the GRPO ratio uses.

Seeds: one seed for the batch, or one per prompt. With one per prompt each group draws from its
own generator, so a prompt's completions do not depend on the other prompts in the batch.
"""

from dataclasses import dataclass

import torch

from nanobias.errors import TrainingDiverged, UserError
from nanobias.kvcache import KVCache
from nanobias.model import GPT


@dataclass
class Samples:
    prompt_ids: torch.Tensor  # [B*G, P] left-padded prompts, row b*G+g is prompt b
    prompt_mask: torch.Tensor  # [B*G, P] 1 = real prompt token
    tokens: torch.Tensor  # [B*G, N] completion ids; after the stop token, filled with `pad_id`
    mask: torch.Tensor  # [B*G, N] 1 for generated tokens up to and including end-of-text
    logprobs: torch.Tensor  # [B*G, N] sampling log-probs, 0 where mask is 0
    group_size: int = 1  # G: rows b*G .. b*G+G-1 share prompt b (completion_logits runs it once)


def left_pad(seqs: list[list[int]], pad_id: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Token lists -> (ids [B, P], mask [B, P]) with padding on the left."""
    P = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), P), pad_id, dtype=torch.long, device=device)
    mask = torch.zeros((len(seqs), P), dtype=torch.long, device=device)
    for b, s in enumerate(seqs):
        if s:
            ids[b, P - len(s):] = torch.tensor(s, dtype=torch.long, device=device)
            mask[b, P - len(s):] = 1
    return ids, mask


def next_token(logits: torch.Tensor, temperature: float, top_k: int | None, top_p: float | None,
               generator: torch.Generator | list[torch.Generator]) -> tuple[torch.Tensor, torch.Tensor]:
    """logits [R, V] -> (token [R], its log-prob under softmax(logits / temperature)) [R].

    The draw inverts the cumulative distribution: token = the first i with p_1 + ... + p_i > u * sum(p),
    u ~ U[0, 1), one uniform per row. torch.multinomial draws V exponentials per row instead (the
    race argmax p_i / E_i): at V = 1024 on CPU they are 0.26 of the 0.31 ms a 16-row draw took.
    With a list of n generators the R rows are n equal blocks (groups), and block j's uniforms come
    from generator j, so a group's tokens do not depend on the other groups in the batch."""
    logits = logits.float()
    if temperature == 0:
        token = logits.argmax(-1)
        return token, torch.log_softmax(logits, -1).gather(-1, token[:, None])[:, 0]
    scaled = logits / temperature if temperature != 1 else logits  # x / 1 == x: skip the op
    logp = torch.log_softmax(scaled, -1)  # [R, V]
    cut = scaled  # never written in place: it may be the caller's logits
    if top_k is not None and top_k < cut.size(-1):
        kth = torch.topk(cut, top_k, dim=-1).values[:, -1:]
        cut = cut.masked_fill(cut < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(cut, descending=True, dim=-1)
        cum = torch.softmax(sorted_logits, -1).cumsum(-1)
        drop = cum - torch.softmax(sorted_logits, -1) >= top_p  # keep tokens until the mass reaches top_p
        cut = cut.scatter(-1, order, sorted_logits.masked_fill(drop, float("-inf")))
    # fp64 sums: the last cumulative value is the total to one part in 1e16, whatever V
    cdf = torch.softmax(cut, -1).double().cumsum(-1)  # [R, V]
    generators = generator if isinstance(generator, list) else [generator]
    u = torch.empty((cdf.size(0), 1), dtype=torch.float64, device=cdf.device)
    for block, g in zip(u.chunk(len(generators)), generators):
        block.uniform_(generator=g)
    # right=True: "> u", so a token of probability 0 (cut by top-k/top-p) repeats its left
    # neighbour's value and is never the first to pass
    token = torch.searchsorted(cdf, u * cdf[:, -1:], right=True)[:, 0].clamp(max=cdf.size(1) - 1)  # [R]
    return token, logp.gather(-1, token[:, None])[:, 0]


def sample(model: GPT, prompts: list[list[int]], eot_id: int, group_size: int = 1, max_new_tokens: int = 32,
           temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
           seed: int | list[int] = 0, use_cache: bool = True) -> Samples:
    """Sample `group_size` completions for each prompt (token lists). Same seed, same samples;
    `seed` is one int, or a list with one seed per prompt (see the module docstring)."""
    # inference mode skips autograd's bookkeeping on every op, a tenth of a small model's decode step;
    # tensors made in it cannot enter autograd, so the trainers get copies
    with torch.inference_mode():
        samples = _sample(model, prompts, eot_id, group_size, max_new_tokens, temperature, top_k, top_p, seed,
                          use_cache)
    return Samples(**{name: t.clone() if torch.is_tensor(t) else t for name, t in vars(samples).items()})


def _sample(model, prompts, eot_id, group_size, max_new_tokens, temperature, top_k, top_p, seed, use_cache) -> Samples:
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if isinstance(seed, list) and len(seed) != len(prompts):
        raise ValueError(f"sample: {len(seed)} seeds for {len(prompts)} prompts; give one per prompt or one int")
    device = next(model.parameters()).device
    generator = [torch.Generator(device=device).manual_seed(s) for s in seed] if isinstance(seed, list) \
        else torch.Generator(device=device).manual_seed(seed)
    ids, mask = left_pad(prompts, eot_id, device)  # [B, P]
    ids, mask = ids.repeat_interleave(group_size, 0), mask.repeat_interleave(group_size, 0)  # [R, P], R = B*G
    R, P = ids.shape
    if P + max_new_tokens > model.config.block_size:
        raise UserError(f"sample: a prompt of {P} tokens and {max_new_tokens} new ones need {P + max_new_tokens} "
                        f"positions, more than this policy's block_size={model.config.block_size}: its training "
                        "prompts were shorter (a policy pretrained on the synthetic world, used on BBQ?). Use a "
                        "policy pretrained on this data, or fewer new tokens")
    was_training = model.training
    model.eval()
    if use_cache:
        cache = KVCache(model.config, len(prompts), P + max_new_tokens, device, next(model.parameters()).dtype)
        prefill_mask = mask[::group_size]
        logits = model(ids[::group_size], attention_mask=prefill_mask, cache=cache)[:, -1]  # [B, V]
        logits = logits.repeat_interleave(group_size, 0)  # [R, V]
        cache = cache.repeat_interleave(group_size)
    else:
        logits = model(ids, attention_mask=mask)[:, -1]
    if not torch.isfinite(logits).all():  # once per call: broken weights show at the prompt already
        raise TrainingDiverged("sample: the policy's logits are not finite, so its weights have diverged "
                               "(a learning rate too high for the last update?)")
    tokens = torch.full((R, max_new_tokens), eot_id, dtype=torch.long, device=device)
    out_mask = torch.zeros((R, max_new_tokens), dtype=torch.long, device=device)
    logprobs = torch.zeros((R, max_new_tokens), device=device)
    done = torch.zeros(R, dtype=torch.bool, device=device)
    full_mask = torch.ones((R, P + max_new_tokens), dtype=torch.bool, device=device)  # step t reads [:, :P + t + 1]
    full_mask[:, :P] = mask.bool()
    # whether every row has stopped is read on the host; on an accelerator that waits for the queued
    # steps, so it is asked every few steps there (the steps in between only write end-of-text)
    check_every = 1 if device.type == "cpu" else 8
    for t in range(max_new_tokens):
        token, logp = next_token(logits, temperature, top_k, top_p, generator)
        live = ~done
        token = torch.where(live, token, eot_id)  # finished rows keep feeding end-of-text
        tokens[:, t] = token
        out_mask[:, t] = live
        logprobs[:, t] = torch.where(live, logp, 0.0)
        done |= token == eot_id
        if t == max_new_tokens - 1 or ((t + 1) % check_every == 0 and done.all()):
            break
        step_mask = full_mask[:, :P + t + 1]  # [R, P + t + 1]
        if use_cache:
            logits = model(token[:, None], attention_mask=step_mask, cache=cache)[:, -1]
        else:
            logits = model(torch.cat([ids, tokens[:, :t + 1]], 1), attention_mask=step_mask)[:, -1]
    model.train(was_training)
    return Samples(ids, mask, tokens, out_mask, logprobs, group_size)


def completion_batch(prompts: list[list[int]], completions: list[list[int]], pad_id: int, device=None,
                     group_size: int = 1) -> Samples:
    """Given prompts (left-padded) and completions (right-padded) as one batch of Samples; with
    `group_size` G, rows b*G .. b*G+G-1 must share one prompt (completion_logits then runs it once)."""
    prompt_ids, prompt_mask = left_pad(prompts, pad_id, device)  # [R, L]
    N = max(len(c) for c in completions)
    tokens = torch.full((len(completions), N), pad_id, dtype=torch.long, device=device)  # [R, N]
    mask = torch.zeros((len(completions), N), dtype=torch.long, device=device)
    for row, c in enumerate(completions):
        tokens[row, :len(c)] = torch.tensor(c, dtype=torch.long, device=device)
        mask[row, :len(c)] = 1
    return Samples(prompt_ids, prompt_mask, tokens, mask, torch.zeros(tokens.shape, device=device), group_size)


def completion_texts(enc, samples: Samples) -> list[str]:
    """Decode each row's completion, without the end-of-text token."""
    texts = []
    for row, m in zip(samples.tokens.tolist(), samples.mask.tolist()):
        toks = [t for t, keep in zip(row, m) if keep and t != enc.eot_token]
        texts.append(enc.decode(toks))
    return texts


def completion_logits(model: GPT, samples: Samples, return_hidden: bool = False):
    """The logits that predict each completion token given the prompt and the tokens before it.

    Returns logits [R, N, V] (and hidden states [R, N, C], the input of a value head): position
    t holds the prediction of `samples.tokens[:, t]`.

    A group's G rows share their prompt (samples.group_size), so the prompt runs once per group and
    its cached keys and values serve the G completions, gradients flowing back through them: a
    GRPO batch of B prompts of P tokens and B*G completions of N costs B*P + B*G*N tokens of
    forward and backward instead of B*G*(P + N) (about 2.5x fewer at the cpu preset's G = 8).
    """
    G, (R, P), N = samples.group_size, samples.prompt_ids.shape, samples.tokens.shape[1]
    if G == 1:  # one forward over prompt + completion
        seq = torch.cat([samples.prompt_ids, samples.tokens], 1)  # [R, P + N]
        attention_mask = torch.cat([samples.prompt_mask, torch.ones_like(samples.tokens)], 1)
        logits, hidden = model(seq, attention_mask=attention_mask, return_hidden=True)
        logits, hidden = logits[:, P - 1:-1], hidden[:, P - 1:-1]
        return (logits, hidden) if return_hidden else logits
    param = next(model.parameters())
    cache = KVCache(model.config, R // G, P + N - 1, param.device, param.dtype)
    logits, hidden = model(samples.prompt_ids[::G], attention_mask=samples.prompt_mask[::G], cache=cache,
                           return_hidden=True)
    logits, hidden = logits[:, -1:].repeat_interleave(G, 0), hidden[:, -1:].repeat_interleave(G, 0)  # [R, 1, .]
    if N > 1:  # the completions but their last token, each after its group's cached prompt
        attention_mask = torch.cat([samples.prompt_mask, torch.ones_like(samples.tokens[:, :-1])], 1)
        rest, rest_hidden = model(samples.tokens[:, :-1], attention_mask=attention_mask,
                                  cache=cache.repeat_interleave(G), return_hidden=True)  # [R, N - 1, .]
        logits, hidden = torch.cat([logits, rest], 1), torch.cat([hidden, rest_hidden], 1)
    return (logits, hidden) if return_hidden else logits


def completion_logprobs(model: GPT, samples: Samples, temperature: float = 1.0, backend: str = "auto") -> torch.Tensor:
    """log p(token_t | prompt, tokens_<t) of each completion token [R, N] (0 where mask is 0)."""
    from nanobias.kernels import token_logprobs

    logits = completion_logits(model, samples)
    return token_logprobs(logits, samples.tokens, temperature=temperature, backend=backend) * samples.mask
