import pytest
import torch
import torch.nn.functional as F

from nanobias.intervention import last_token_recorded
from nanobias.model import GPT, GPTConfig, KVCache, NeuronSite


def tiny_model(seed=0, **kw):
    torch.manual_seed(seed)
    cfg = GPTConfig(block_size=32, vocab_size=61, n_layer=2, n_head=2, n_embd=16, **kw)
    return GPT(cfg).eval()


def test_gpt2_parameter_names_and_tied_head():
    model = tiny_model()
    names = set(dict(model.named_parameters(remove_duplicate=False)))
    for n in ["transformer.wte.weight", "transformer.wpe.weight", "transformer.h.0.ln_1.weight",
              "transformer.h.0.attn.c_attn.weight", "transformer.h.0.attn.c_proj.bias",
              "transformer.h.1.mlp.c_fc.weight", "transformer.h.1.mlp.c_proj.weight",
              "transformer.ln_f.bias", "lm_head.weight"]:
        assert n in names, n
    assert model.lm_head.weight.data_ptr() == model.transformer.wte.weight.data_ptr()


def test_kv_cache_token_by_token_matches_full_forward():
    model = tiny_model()
    idx = torch.randint(0, 61, (3, 20), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full = model(idx)
        cache = KVCache(model.config, 3, 20)
        steps = [model(idx[:, :5], cache=cache)]  # prefill 5, then one token at a time
        steps += [model(idx[:, t:t + 1], cache=cache) for t in range(5, 20)]
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=0)


def test_left_padded_batch_with_cache_matches_each_row_alone():
    model = tiny_model()
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


def test_repeat_interleave_cache_shares_a_prefill():
    model = tiny_model()
    idx = torch.randint(0, 61, (2, 6), generator=torch.Generator().manual_seed(3))
    nxt = torch.randint(0, 61, (6, 1), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        cache = KVCache(model.config, 2, 7)
        model(idx, cache=cache)
        grouped = model(nxt, cache=cache.repeat_interleave(3))[:, 0]  # [6, V]
        separate = model(torch.cat([idx.repeat_interleave(3, 0), nxt], 1))[:, -1]
    torch.testing.assert_close(grouped, separate, atol=1e-5, rtol=0)


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


@pytest.mark.parametrize("last_only", [True, False])
def test_neuron_site_clamp_outputs_value_with_zero_gradient(last_only):
    H = 64
    mask = torch.zeros(H, dtype=torch.bool)
    mask[[3, 17, 40]] = True
    value = torch.zeros(H).index_copy_(0, torch.tensor([3, 17, 40]), torch.tensor([0.5, -1.0, 2.0]))
    h = torch.randn(2, 5, H, generator=torch.Generator().manual_seed(6), requires_grad=True)
    plain = F.gelu(h, approximate="tanh")
    site = NeuronSite()
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
