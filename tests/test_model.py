
import pytest
import torch
import torch.nn.functional as F

from nanobias.intervention import last_token_recorded
from nanobias.kvcache import KVCache
from nanobias.model import GPT, GPTConfig, NeuronSite, rotate
from nanobias.sampling import sample

# the position schemes, and learned positions with the embeddings of the 3 tokens before mixed in (token_shift)
BOTH = pytest.mark.parametrize("position", ["learned", "rotary", "learned+shift"])


def tiny_model(seed=0, position="learned", **kw):
    torch.manual_seed(seed)
    if position == "learned+shift":
        position, kw = "learned", {**kw, "token_shift": 3}
    cfg = GPTConfig(**{"block_size": 32, "vocab_size": 61, "n_layer": 2, "n_head": 2, "n_embd": 16, **kw},
                    position=position)
    model = GPT(cfg).eval()
    if cfg.token_shift:  # weights unlike each other: a token taken from the wrong place then shows
        with torch.no_grad():
            model.shift.normal_()
    if position == "rotary":  # sharper attention than a fresh init's: a wrong position then shows in the logits
        with torch.no_grad():
            for block in model.transformer.h:
                block.attn.c_attn.weight[:32].mul_(15)  # queries and keys
    return model


GPT2_NAMES = ["transformer.wte.weight", "transformer.wpe.weight"] + [
    f"transformer.h.{i}.{n}" for i in range(2) for n in (
        "ln_1.weight", "ln_1.bias", "attn.c_attn.weight", "attn.c_attn.bias", "attn.c_proj.weight", "attn.c_proj.bias",
        "ln_2.weight", "ln_2.bias", "mlp.c_fc.weight", "mlp.c_fc.bias", "mlp.c_proj.weight", "mlp.c_proj.bias")
] + ["transformer.ln_f.weight", "transformer.ln_f.bias", "lm_head.weight"]


def test_gpt2_parameter_names_and_tied_head():
    model = tiny_model()
    assert list(dict(model.named_parameters(remove_duplicate=False))) == GPT2_NAMES  # GPT-2's, in its order
    assert list(model.state_dict()) == GPT2_NAMES  # no buffers: checkpoints as before
    assert model.lm_head.weight.data_ptr() == model.transformer.wte.weight.data_ptr()
    assert model.num_params() == sum(p.numel() for p in model.parameters()) - 32 * 16  # position table left out


def test_rotary_has_no_position_table_and_checkpoints_no_tables():
    model = tiny_model(position="rotary")
    names = list(dict(model.named_parameters(remove_duplicate=False)))
    assert names == [n for n in GPT2_NAMES if n != "transformer.wpe.weight"]
    assert not any("wpe" in n for n in list(model.state_dict()) + names) and "wpe" not in model.transformer
    assert model.num_params() == sum(p.numel() for p in model.parameters())
    assert "rope_cos" not in model.state_dict()  # rebuilt from the config, never saved
    assert model.rope_cos.dtype == model.rope_sin.dtype == torch.float32 and model.rope_cos.shape == (32, 4)


def test_config_validates_position():
    with pytest.raises(ValueError, match=r"model.position: expected one of \('learned', 'rotary'\), got 'absolute'"):
        GPTConfig(position="absolute")
    for n_embd, n_head in [(18, 2), (16, 3)]:  # head dim 9, and 16 / 3
        with pytest.raises(ValueError, match=f"even integer, got {n_embd} / {n_head}"):
            GPTConfig(n_embd=n_embd, n_head=n_head, position="rotary")
    assert GPTConfig(n_embd=18, n_head=2).position == "learned"  # an odd head dim is fine without rotary


def test_config_picks_the_gelu_form_of_every_mlp():
    with pytest.raises(ValueError, match=r"model.gelu_approximate: expected one of \('tanh', 'none'\), got 'erf'"):
        GPTConfig(gelu_approximate="erf")
    assert GPTConfig().gelu_approximate == "tanh"  # GPT-2's, and what a checkpoint without the field had
    exact = tiny_model(gelu_approximate="none")
    assert all(site.approximate == "none" for site in exact.neuron_sites)
    h = torch.linspace(-4, 4, 64).view(1, 1, 64)
    torch.testing.assert_close(exact.neuron_sites[0](h), 0.5 * h * (1 + torch.erf(h / 2 ** 0.5)))


def test_old_configs_without_position_load_as_learned(tmp_path):
    from dataclasses import asdict

    from nanobias.checkpoint import load_policy, save_policy
    from nanobias.tokenizer import train_bpe

    old = {k: v for k, v in asdict(tiny_model().config).items() if k != "position"}  # a checkpoint from before
    assert GPTConfig(**old) == tiny_model().config
    enc = train_bpe(["Who was late? Answer: The nurse."] * 4, 260)
    model = tiny_model(position="rotary", vocab_size=enc.n_vocab)
    save_policy(tmp_path / "policy.pt", model, enc)
    loaded, _, meta = load_policy(tmp_path / "policy.pt")
    assert meta["model_config"]["position"] == "rotary" and loaded.config == model.config
    idx = torch.randint(0, enc.n_vocab, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(loaded(idx), model(idx))


def test_rotate_matches_complex_multiplication_and_scores_are_relative():
    B, H, T, D = 3, 2, 7, 8
    model = tiny_model(position="rotary")
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(B, H, T, D, generator=g, dtype=torch.float64), torch.randn(B, H, T, D, generator=g, dtype=torch.float64)
    pos = torch.randint(0, 13, (B, T), generator=g)  # any positions (2 * pos < block_size), a set per row

    def rot(x, pos):
        return rotate(x, model.rope_cos[pos][:, None], model.rope_sin[pos][:, None])

    # reference: pairs (x_2i, x_2i+1) as complex numbers, times e^{i p theta_i}, theta_i = 10000^(-2i/D)
    theta = 10000.0 ** (-torch.arange(0, D, 2, dtype=torch.float64) / D)  # [D/2]
    z = torch.view_as_complex(q.reshape(B, H, T, D // 2, 2))
    expected = torch.view_as_real(z * torch.exp(1j * pos[:, None, :, None].double() * theta)).reshape(B, H, T, D)
    torch.testing.assert_close(rot(q, pos), expected, atol=1e-6, rtol=0)
    scores = rot(q, pos) @ rot(k, pos).transpose(-1, -2)  # [B, H, T, T]
    torch.testing.assert_close(rot(q, pos + 5) @ rot(k, pos + 5).transpose(-1, -2), scores, atol=1e-5, rtol=0)
    assert (rot(q, 2 * pos) @ rot(k, 2 * pos).transpose(-1, -2) - scores).abs().max() > 0.1  # not any change
    assert torch.equal(rot(q, torch.zeros_like(pos)), q)  # position 0 is the identity


@BOTH
def test_left_padded_batch_matches_each_row_alone(position):
    model = tiny_model(position=position)
    g = torch.Generator().manual_seed(8)
    rows = [torch.randint(0, 61, (n,), generator=g) for n in (9, 2, 6, 1, 4)]
    P = max(len(r) for r in rows)
    idx = torch.zeros(len(rows), P, dtype=torch.long)
    mask = torch.zeros(len(rows), P, dtype=torch.long)
    for b, r in enumerate(rows):
        idx[b, P - len(r):] = r
        mask[b, P - len(r):] = 1
    with torch.no_grad():
        batched = model(idx, attention_mask=mask)
        for b, r in enumerate(rows):
            torch.testing.assert_close(batched[b, P - len(r):], model(r[None])[0], atol=1e-5, rtol=0)
        shifted = model(torch.cat([idx[:1, 3:], idx[:1, :3]], 1))[0]  # the same tokens, in another order
        assert (shifted - model(idx[:1])[0]).abs().max() > 1e-3


@BOTH
def test_kv_cache_token_by_token_matches_full_forward(position):
    model = tiny_model(position=position)
    idx = torch.randint(0, 61, (3, 20), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full = model(idx)
        cache = KVCache(model.config, 3, 20)
        steps = [model(idx[:, :5], cache=cache)]  # prefill 5, then one token at a time
        steps += [model(idx[:, t:t + 1], cache=cache) for t in range(5, 20)]
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=0)


@BOTH
def test_left_padded_batch_with_cache_matches_each_row_alone(position):
    model = tiny_model(position=position)
    g = torch.Generator().manual_seed(2)
    rows = [torch.randint(0, 61, (n,), generator=g) for n in (7, 3, 5)]
    cont = torch.randint(0, 61, (3, 6), generator=g)  # tokens decoded after each prompt
    P = max(len(r) for r in rows)
    idx = torch.zeros(3, P, dtype=torch.long)
    mask = torch.zeros(3, P, dtype=torch.long)
    for b, r in enumerate(rows):
        idx[b, P - len(r):] = r
        mask[b, P - len(r):] = 1
    with torch.no_grad():
        cache = KVCache(model.config, 3, P + 6)
        out = [model(idx, attention_mask=mask, cache=cache)[:, -1:]]
        for t in range(6):
            mask = torch.cat([mask, torch.ones(3, 1, dtype=torch.long)], 1)
            out.append(model(cont[:, t:t + 1], attention_mask=mask, cache=cache))
        batched = torch.cat(out, 1)  # [3, 7, V]: logits after the prompt, then after each new token
        for b, r in enumerate(rows):
            alone = model(torch.cat([r, cont[b]])[None])[0, len(r) - 1:]
            torch.testing.assert_close(batched[b], alone, atol=1e-5, rtol=0)
            # the same padded batch without a cache agrees too
            seq = torch.cat([idx, cont], 1)
            full = model(seq, attention_mask=mask)[b, P - 1:]
            torch.testing.assert_close(full, alone, atol=1e-5, rtol=0)


@BOTH
def test_a_decode_step_masks_like_a_full_forward_even_for_a_padding_query(position):
    """A decode step (T == 1) builds its mask its own way; it must agree with the full forward's,
    including a new token marked as padding, which still sees itself and stays finite."""
    model = tiny_model(position=position)
    idx = torch.randint(0, 61, (3, 8), generator=torch.Generator().manual_seed(9))
    mask = torch.tensor([[0, 0, 1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1, 1, 0], [0, 1, 1, 0, 1, 1, 1, 1]])
    with torch.no_grad():
        full = model(idx, attention_mask=mask)[:, -1]  # [3, V]
        cache = KVCache(model.config, 3, 8)
        model(idx[:, :-1], attention_mask=mask[:, :-1], cache=cache)
        step = model(idx[:, -1:], attention_mask=mask, cache=cache)[:, 0]
    assert torch.isfinite(step).all()
    torch.testing.assert_close(step, full, atol=1e-5, rtol=0)


@BOTH
def test_padding_between_tokens_is_no_token(position):
    """A completion left-padded after its cached prompt (reward.rewards) leaves padding between real
    tokens: positions, attention and the token shift all skip it, so the logits are the row's own."""
    model = tiny_model(position=position)
    row = torch.randint(0, 61, (1, 9), generator=torch.Generator().manual_seed(5))
    holed = torch.cat([row[:, :5], torch.zeros(1, 3, dtype=torch.long), row[:, 5:]], 1)  # [1, 12]
    mask = torch.tensor([[1] * 5 + [0] * 3 + [1] * 4])
    with torch.no_grad():
        alone = model(row)
        full = model(holed, attention_mask=mask)
        cache = KVCache(model.config, 1, 12)
        model(holed[:, :5], attention_mask=mask[:, :5], cache=cache)
        cached = model(holed[:, 5:], attention_mask=mask, cache=cache)
    torch.testing.assert_close(full[:, 8:], alone[:, 5:], atol=1e-5, rtol=0)
    torch.testing.assert_close(cached[:, 3:], alone[:, 5:], atol=1e-5, rtol=0)


@BOTH
def test_repeat_interleave_cache_shares_a_prefill(position):
    model = tiny_model(position=position)
    idx = torch.randint(0, 61, (2, 6), generator=torch.Generator().manual_seed(3))
    nxt = torch.randint(0, 61, (6, 1), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        cache = KVCache(model.config, 2, 7)
        model(idx, cache=cache)
        grouped = model(nxt, cache=cache.repeat_interleave(3))[:, 0]  # [6, V]
        separate = model(torch.cat([idx.repeat_interleave(3, 0), nxt], 1))[:, -1]
    torch.testing.assert_close(grouped, separate, atol=1e-5, rtol=0)


def test_token_shift_input_is_the_formula_and_stops_at_a_document_start():
    """h_0[t] = wte[x_t] + sum_k shift[k-1] * wte[x_{t-k}] + wpe[t], the terms before a document's
    start (padding, or another packed document) left out."""
    model = tiny_model(position="learned+shift")
    seen = []
    model.transformer.drop.register_forward_hook(lambda module, inputs, output: seen.append(inputs[0]))
    idx = torch.tensor([[7, 8, 9, 10, 11, 12], [0, 0, 3, 4, 5, 6]])
    doc = torch.tensor([[1, 1, 1, 2, 2, 2], [0, 0, 1, 1, 1, 1]])  # row 0: two packed documents; row 1: padding
    with torch.no_grad():
        model(idx, attention_mask=doc)
        wte, wpe, shift = model.transformer.wte.weight, model.transformer.wpe.weight, model.shift
        for b, t in [(0, 2), (0, 3), (0, 5), (1, 2), (1, 5)]:
            start = max(s for s in range(t + 1) if s == 0 or doc[b, s - 1] != doc[b, t])  # where its document starts
            expected = wte[idx[b, t]] + wpe[t - start] + sum(shift[k - 1] * wte[idx[b, t - k]]
                                                             for k in range(1, 4) if t - k >= start)
            torch.testing.assert_close(seen[0][b, t], expected, atol=1e-6, rtol=0)


def test_rotary_cached_sampling_equals_uncached():
    model = tiny_model(position="rotary")
    prompts = [[1, 2, 3, 4, 5, 6, 7], [8, 9], [10, 11, 12, 13]]
    a = sample(model, prompts, 60, group_size=3, max_new_tokens=12, temperature=1.0, seed=5)
    b = sample(model, prompts, 60, group_size=3, max_new_tokens=12, temperature=1.0, seed=5, use_cache=False)
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.mask, b.mask) and a.mask.sum() > 3 * 3 * 2
    torch.testing.assert_close(a.logprobs, b.logprobs, atol=1e-5, rtol=0)


def test_hidden_states_and_block_size_error():
    model = tiny_model()
    logits, hidden = model(torch.zeros(2, 4, dtype=torch.long), return_hidden=True)
    assert logits.shape == (2, 4, 61) and hidden.shape == (2, 4, 16)
    try:
        model(torch.zeros(1, 33, dtype=torch.long))
    except ValueError as e:
        assert "block_size=32" in str(e)
    else:
        raise AssertionError("expected a ValueError")


def test_hook_capture_records_last_token_and_site_is_plain_gelu_by_default():
    model = tiny_model()
    idx = torch.randint(0, 61, (2, 5), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        before = model(idx)
        with last_token_recorded(model) as recorded:
            after = model(idx)
    torch.testing.assert_close(before, after, atol=0, rtol=0)
    assert all(len(r) == 1 and r[0].shape == (2, 64) for r in recorded)
    assert all(not site._forward_hooks for site in model.neuron_sites)  # the hooks are removed on exit
    h = model.transformer.h[0]
    x = model.transformer.wte(idx) + model.transformer.wpe(torch.arange(5))
    x = x + h.attn(h.ln_1(x))
    expected = torch.nn.functional.gelu(h.mlp.c_fc(h.ln_2(x)), approximate="tanh")[:, -1]
    torch.testing.assert_close(recorded[0][0], expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("approximate", ["tanh", "none"])
@pytest.mark.parametrize("last_only", [True, False])
def test_neuron_site_clamp_outputs_value_with_zero_gradient(last_only, approximate):
    H = 64
    mask = torch.zeros(H, dtype=torch.bool)
    mask[[3, 17, 40]] = True
    value = torch.zeros(H).index_copy_(0, torch.tensor([3, 17, 40]), torch.tensor([0.5, -1.0, 2.0]))
    h = torch.randn(2, 5, H, generator=torch.Generator().manual_seed(6), requires_grad=True)
    plain = F.gelu(h, approximate=approximate)
    site = NeuronSite(approximate)
    site.clamp = (mask, value, last_only)
    a = site(h)
    clamped = slice(-1, None) if last_only else slice(None)  # the positions the clamp acts on
    assert torch.equal(a[:, clamped][..., mask], value[mask].expand(2, a[:, clamped].shape[1], 3))
    torch.testing.assert_close(a[..., ~mask], plain[..., ~mask], atol=1e-6, rtol=0)  # other neurons: GELU
    if last_only:  # earlier positions are untouched, masked neurons included
        torch.testing.assert_close(a[:, :-1], plain[:, :-1], atol=1e-6, rtol=0)
    a.backward(torch.randn(a.shape, generator=torch.Generator().manual_seed(7)))
    assert h.grad[:, clamped][..., mask].eq(0).all()
    assert h.grad[..., ~mask].ne(0).all()
    if last_only:
        assert h.grad[:, :-1][..., mask].ne(0).all()
    site.clamp = None
    assert torch.equal(site(h), plain)
