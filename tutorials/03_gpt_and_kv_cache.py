"""03 - The GPT policy: its shapes, left padding, the KV cache, and group sampling.

Run: python tutorials/03_gpt_and_kv_cache.py [--tiny]

What you will see: a GPT-2-architecture model at the preset's size and its parameter shapes; why
prompts are LEFT-padded and why that changes nothing; the KV cache giving the same logits and the
same samples as recomputing everything, only faster; group sampling, where G completions of one
prompt share one prefilled cache; and the neuron sites that tutorial 06 will read and clamp.
The weights are random (tutorial 04 trains them): everything here is about the machinery.
Library: nanobias/model.py, nanobias/sampling.py.
"""

import time
from dataclasses import replace

import common

args = common.parse_args(__doc__)

import torch  # noqa: E402

from nanobias.kvcache import KVCache  # noqa: E402
from nanobias.model import GPT  # noqa: E402
from nanobias.pretrain import corpus  # noqa: E402
from nanobias.render import render_prompt  # noqa: E402
from nanobias.sampling import completion_texts, left_pad, sample  # noqa: E402
from nanobias.tokenizer import train_bpe  # noqa: E402

preset = common.tutorial_preset(args.tiny)
splits = common.world(preset)
train_docs, _ = corpus(splits, preset.pretrain, seed=common.SEED)
enc = train_bpe(train_docs, preset.pretrain.vocab_size)

common.section("1. The model")
config = replace(preset.model, vocab_size=enc.n_vocab)
torch.manual_seed(common.SEED)
model = GPT(config).eval()
common.say(f"""
    GPT-2's architecture (Radford et al., 2019) at the '{preset.name}' preset's size: token and
    position embeddings, {config.n_layer} pre-LayerNorm blocks (attention, then an MLP with
    {4 * config.n_embd} hidden neurons), a final LayerNorm and a language-model head tied to the
    token embedding. Parameter names follow GPT-2's, so its checkpoints would load.
""")
print(f"{model.num_params():,} parameters (tied embedding counted once, position embeddings left out)")
for name, p in model.named_parameters():
    if name.startswith("transformer.h.") and not name.startswith("transformer.h.0."):
        continue  # every block has the same shapes as block 0
    print(f"  {name:42} {tuple(p.shape)}")

common.section("2. Left padding changes nothing")
common.say("""
    Prompts of different lengths are batched by padding them on the LEFT, with an attention_mask
    marking the real tokens. Two things make a padded row compute exactly what it would alone:
    padding is masked out of attention, and positions count real tokens only
    (pos = cumsum(mask) - 1). A bonus: every row's last real token sits at index -1, where the
    next token is read (and where the reward model reads its score).
""")
prompts = [enc.encode_ordinary(render_prompt(ex)) for ex in splits.train[:4]]
ids, mask = left_pad(prompts, enc.eot_token)  # [B, P]
print(f"batch ids {tuple(ids.shape)}; real tokens per row: {mask.sum(1).tolist()}; row 0 starts with "
      f"{(mask[0] == 0).sum().item()} padding tokens")
with torch.no_grad():
    batched = model(ids, attention_mask=mask)[:, -1]  # [B, V] next-token logits
    alone = torch.cat([model(torch.tensor([p]))[:, -1] for p in prompts])
print(f"max |logits(padded batch) - logits(row alone)| = {(batched - alone).abs().max().item():.2e}")

common.section("3. The KV cache")
common.say("""
    Generating token t+1 needs the keys and values of every earlier token in every layer. Without
    a cache they are recomputed from scratch at every step (cost grows with the square of the
    length); with one, each step runs the new token only and appends its keys and values to a
    preallocated buffer k, v: [n_layer, B, n_head, max_len, head_dim].
""")
prompt = torch.tensor([prompts[0]])
with torch.no_grad():
    cache = KVCache(config, batch_size=1, max_len=prompt.shape[1] + 4)
    stepwise = [model(prompt, cache=cache)[:, -1]]
    token = stepwise[-1].argmax(-1, keepdim=True)
    full = prompt
    for _ in range(3):
        full = torch.cat([full, token], 1)
        stepwise.append(model(token, cache=cache)[:, -1])
        token = stepwise[-1].argmax(-1, keepdim=True)
    recomputed = model(full)[:, -4:]  # [1, 4, V]
diff = (torch.stack(stepwise, 1) - recomputed).abs().max().item()
print(f"cache: {len(cache.k)} layers of keys {tuple(cache.k[0].shape)}, filled {cache.length} tokens; "
      f"max |cached - recomputed logits| over 4 steps = {diff:.2e}")

B, new_tokens = (4, 8) if args.tiny else (8, 48)
timings = {}
for use_cache in (False, True):
    start = time.perf_counter()
    s = sample(model, prompts[:1] * B, enc.eot_token, max_new_tokens=new_tokens, temperature=0.0, use_cache=use_cache)
    timings[use_cache] = (time.perf_counter() - start, s)
(t_plain, s_plain), (t_cache, s_cache) = timings[False], timings[True]
n_generated = int(s_cache.mask.sum())
print(f"greedy sampling, {B} prompts x up to {new_tokens} tokens: same tokens with and without the cache: "
      f"{torch.equal(s_plain.tokens, s_cache.tokens)}")

common.section("4. Group sampling: G completions share one prefilled prompt")
common.say("""
    GRPO scores G completions of the same prompt against each other. sample(..., group_size=G)
    runs each prompt through the model ONCE, then repeats its cache G times (KVCache.repeat_interleave)
    and samples the G continuations in parallel. Rows come out as b*G + g. The random model says
    nonsense, but each group starts from the identical prompt and the samples differ.
""")
G = 4
start = time.perf_counter()
group = sample(model, prompts[:2], enc.eot_token, group_size=G, max_new_tokens=6, temperature=1.0, seed=common.SEED)
t_group = time.perf_counter() - start
print(f"prompt_ids {tuple(group.prompt_ids.shape)} (2 prompts x G={G}), tokens {tuple(group.tokens.shape)}, "
      f"logprobs {tuple(group.logprobs.shape)}")
for row, text in enumerate(completion_texts(enc, group)):
    print(f"  prompt {row // G}, sample {row % G}: {text!r}")

common.section("5. Neuron sites: where tutorial 06 will look")
common.say("""
    Each MLP computes its GELU in a NeuronSite (model.neuron_sites). An ordinary forward hook on
    a site sees its activations [B, T, 4*n_embd]; here each one keeps the last token's [B, 4*n_embd]
    (intervention.last_token_recorded does the same). Set a site's `clamp` to (mask, value,
    last_only) and the masked neurons output fixed values (the intervention of tutorial 06).
""")
recorded = []
hooks = [site.register_forward_hook(lambda site, inputs, a: recorded.append(a[:, -1])) for site in model.neuron_sites]
with torch.no_grad():
    model(ids, attention_mask=mask)
for hook in hooks:
    hook.remove()
print("recorded per layer:", [tuple(a.shape) for a in recorded])

common.section("Result: what the cache buys")
print("| sampling | seconds | new tokens / s |\n|---|---|---|")
print(f"| no cache (recompute the prefix every step) | {t_plain:.2f} | {n_generated / t_plain:,.0f} |")
print(f"| KV cache | {t_cache:.2f} | {n_generated / t_cache:,.0f} |")
print(f"KV cache speed-up: {t_plain / t_cache:.1f}x, identical tokens: {torch.equal(s_plain.tokens, s_cache.tokens)}")
common.finish()
