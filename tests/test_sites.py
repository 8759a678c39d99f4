"""Intervention sites (mlp, up, query), the effect selection, and `nanobias sites` on the smoke run."""

import hashlib
import json

import pytest
import torch
import torch.nn.functional as F

from nanobias.cli import main
from nanobias.intervention import (SITES, Intervention, column_medians, last_token_recorded, last_token_rewards,
                                   load_intervention, prefill, save_intervention, site_width)
from nanobias.model import GPT, GPTConfig
from nanobias.preferences import BALANCED, make_pairs
from nanobias.reward import reward_model_from_policy
from nanobias.selection import build_intervention, feature_effects, search_k, single_feature_rewards
from nanobias.sites import VARIANTS

C, N_HEAD = 16, 2


def tiny_gpt(seed=0):
    torch.manual_seed(seed)
    return GPT(GPTConfig(block_size=32, vocab_size=61, n_layer=2, n_head=N_HEAD, n_embd=C)).eval()


def manual_forward(model, idx, site, layer, index, value, last_only):
    """model.GPT's forward written out, with the features `index` of `site` in `layer` set to `value`."""
    t = slice(-1, None) if last_only else slice(None)

    def clamp(h):  # [B, T, F] -> the same with the clamp
        h = h.clone()
        h[:, t, index] = value
        return h

    B, T = idx.shape
    x = model.transformer.wte(idx) + model.transformer.wpe(torch.arange(T))
    for l, block in enumerate(model.transformer.h):
        here = l == layer
        qkv = block.attn.c_attn(block.ln_1(x))  # [B, T, 3C]
        qkv = clamp(qkv) if here and site == "query" else qkv
        q, k, v = qkv.view(B, T, 3, N_HEAD, C // N_HEAD).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(B, T, C)
        x = x + block.attn.c_proj(y)
        h = block.mlp.c_fc(block.ln_2(x))
        h = clamp(h) if here and site == "up" else h
        a = F.gelu(h, approximate="tanh")
        a = clamp(a) if here and site == "mlp" else a
        x = x + block.mlp.c_proj(a)
    return model.transformer.ln_f(x)


@pytest.mark.parametrize("positions", ["last", "all"])
@pytest.mark.parametrize("site", SITES)
def test_each_site_clamps_exactly_its_features_as_a_manual_forward_does(site, positions):
    model = tiny_gpt()
    model.lm_head = torch.nn.Identity()  # compare final hidden states, as the reward model reads them
    idx = torch.randint(0, 61, (2, 7), generator=torch.Generator().manual_seed(1))
    index, medians = [2, 9], [0.75, -0.5]  # query: features 2 and 9 of the n_embd = 16 query features
    iv = Intervention(2, site_width(model, site), [(1, i) for i in index], medians, positions, site=site)
    with torch.no_grad():
        plain = model(idx)
        with iv.applied(model), last_token_recorded(model, site) as recorded:
            edited = model(idx)
        expected = manual_forward(model, idx, site, 1, index, torch.tensor(medians), positions == "last")
    torch.testing.assert_close(edited, expected, atol=1e-5, rtol=0)
    if positions == "last":  # a causal model: positions before the last never see the edit
        assert torch.equal(edited[:, :-1], plain[:, :-1])
    else:
        assert not torch.allclose(edited[:, :-1], plain[:, :-1])
    assert not torch.allclose(edited[:, -1], plain[:, -1])
    site_feats = recorded[1][0]  # [B, W] at the last token
    assert site_feats[:, index].eq(torch.tensor(medians)).all() and site_feats.shape[1] == site_width(model, site)
    with last_token_recorded(model, site) as again, torch.no_grad():
        model(idx)
    others = [i for i in range(site_feats.shape[1]) if i not in index]
    torch.testing.assert_close(site_feats[:, others], again[1][0][:, others], atol=1e-6, rtol=0)  # the rest untouched
    assert all(not m._forward_hooks for b in model.transformer.h for m in (b.mlp.c_fc, b.attn.c_attn, b.mlp.neurons))


def test_up_clamps_before_the_gelu_and_mlp_after_it():
    model = tiny_gpt()
    idx = torch.randint(0, 61, (2, 6), generator=torch.Generator().manual_seed(2))
    m = -0.6  # GELU(-0.6) = -0.16...: the same number means different things at the two sites
    up, mlp = (Intervention(2, 64, [(0, 5)], [value], site=site) for value, site in
               ((m, "up"), (m, "mlp")))
    with torch.no_grad():
        with up.applied(model), last_token_recorded(model, "mlp") as after_up:
            out_up = model(idx)
        with mlp.applied(model), last_token_recorded(model, "mlp") as after_mlp:
            out_mlp = model(idx)
        gelu_m = F.gelu(torch.tensor(m), approximate="tanh").item()
        with Intervention(2, 64, [(0, 5)], [gelu_m], site="mlp").applied(model):
            out_mlp_at_gelu_m = model(idx)
    torch.testing.assert_close(after_up[0][0][:, 5], torch.full((2,), gelu_m), atol=1e-6, rtol=0)
    assert after_mlp[0][0][:, 5].eq(m).all()
    assert not torch.allclose(out_up, out_mlp)
    torch.testing.assert_close(out_up, out_mlp_at_gelu_m, atol=1e-5, rtol=0)  # up at m == mlp at GELU(m)


def test_an_intervention_file_without_a_site_loads_as_mlp(tmp_path):
    save_intervention(tmp_path / "iv.json", Intervention(2, 64, [(0, 3)], [0.5], site="mlp"))
    data = json.loads((tmp_path / "iv.json").read_text())
    del data["site"]  # as written before sites existed
    (tmp_path / "old.json").write_text(json.dumps(data))
    assert load_intervention(tmp_path / "old.json").site == "mlp"
    save_intervention(tmp_path / "q.json", Intervention(2, 16, [(1, 3)], [0.5], site="query"))
    assert load_intervention(tmp_path / "q.json").site == "query"
    data["site"] = "gate"
    (tmp_path / "bad.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match="bad.json: intervention site: expected one of"):
        load_intervention(tmp_path / "bad.json")


# ---------------------------------------------------------------- effect selection

@pytest.mark.parametrize("site", ["mlp", "query"])
def test_batched_single_feature_rewards_equal_one_intervention_at_a_time(random_rm, tiny_splits, site):
    rm, enc = random_rm
    pairs = make_pairs(tiny_splits.val, 5, 0)
    batches = prefill(rm, enc, [p.prompt for p in pairs] * 2, [p.chosen.text for p in pairs] +
                      [p.rejected.text for p in pairs], batch_size=4)
    _, acts = last_token_rewards(rm, batches, capture=True, site=site)
    medians = column_medians(acts.flatten(1)).view(acts.shape[1:]).float()  # [L, W]
    width = medians.shape[1]
    batched = single_feature_rewards(rm, batches, medians, site, rows_per_pass=12)  # 3 copies of a 4-row batch
    for layer, i in [(0, 0), (0, 7), (1, width - 1), (1, 3)]:
        one = Intervention(2, width, [(layer, i)], [medians[layer, i].item()], site=site)
        torch.testing.assert_close(batched[:, layer * width + i], last_token_rewards(rm, batches, one),
                                   atol=1e-5, rtol=0)


def planted_length_model(enc):
    """A 2-layer reward model whose only way from length to reward is MLP neuron (0, 5): position
    (= length, in tokens) is written into residual dimension 0, neuron (0, 5) reads it and writes
    dimension 1, the one the head reads; attention writes nothing."""
    torch.manual_seed(0)
    policy = GPT(GPTConfig(block_size=256, vocab_size=enc.n_vocab, n_layer=2, n_head=2, n_embd=C))
    rm = reward_model_from_policy(policy, seed=0).eval()
    gpt = rm.gpt
    with torch.no_grad():
        gpt.transformer.wte.weight.normal_(0, 1, generator=torch.Generator().manual_seed(3))
        gpt.transformer.wte.weight[:, :2] = 0
        gpt.transformer.wpe.weight.zero_()
        # small beside the content, so that LayerNorm barely sees it
        gpt.transformer.wpe.weight[:, 0] = torch.linspace(-0.5, 0.5, 256)
        for block in gpt.transformer.h:
            block.attn.c_proj.weight.zero_()
            block.mlp.c_proj.weight[:2] = 0  # no other neuron writes dimensions 0 and 1
        fc, proj = gpt.transformer.h[0].mlp.c_fc, gpt.transformer.h[0].mlp.c_proj
        fc.weight[5] = 0
        fc.weight[5, 0], fc.bias[5] = 10.0, 5.0  # mostly in GELU's linear part
        proj.weight[:, 5] = 0
        proj.weight[1, 5] = 0.3
        rm.head.weight.zero_()
        rm.head.weight[0, 1] = 1.0
    return rm


@pytest.mark.parametrize("site", ["mlp", "up"])
def test_effect_selection_finds_the_neuron_planted_to_carry_length(random_rm, tiny_splits, site):
    _, enc = random_rm
    rm = planted_length_model(enc)
    pairs = make_pairs(tiny_splits.val, 12, 0, BALANCED)
    batches = prefill(rm, enc, [p.prompt for p in pairs] * 2, [p.chosen.text for p in pairs] +
                      [p.rejected.text for p in pairs])
    rewards, acts = last_token_rewards(rm, batches, capture=True, site=site)
    medians = column_medians(acts.flatten(1)).view(acts.shape[1:]).float()
    effects = feature_effects(rm, enc, pairs, medians, site, 10, rewards.std(unbiased=False).item())  # [A, L*W]
    length = effects[0]
    assert length.argmax().item() == 5  # layer 0, neuron 5
    assert length[5] > 0.4 and length[5] > 100 * length[torch.arange(len(length)) != 5].abs().max()
    iv = build_intervention(effects, acts, {"length": 1}, site=site, selection="effect")
    assert (0, 5) in iv.neurons and len(iv.neurons) == 2  # the 2k features with the largest effect


def test_search_k_chooses_each_k_given_the_others():
    def accuracy(k):  # the best k_length is 2 while k_bold = 0, and 8 once k_bold = 4 (its own best)
        best_length = 8 if k["bold"] == 4 else 2
        return 1.0 - abs(k["length"] - best_length) / 100 - abs(k["bold"] - 4) / 10

    k, history = search_k(accuracy, [0, 2, 4, 8])
    assert k["length"] == 8 and k["bold"] == 4  # the second sweep re-chose length given bold
    assert {"length": 2, "paragraphs": 0, "overlap": 0, "exclamations": 0, "bold": 0} in [h["k"] for h in history]


# ---------------------------------------------------------------- the command

def folder_state(folder):
    return {str(p.relative_to(folder)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_sites_command_on_the_smoke_run_writes_the_table_and_leaves_the_run_alone(smoke_run, tmp_path, capsys, cpu_path):
    before = folder_state(smoke_run)
    out = tmp_path / "sites"
    main(["sites", "--base", str(smoke_run), "--out", str(out), "--threads", "1"])
    assert folder_state(smoke_run) == before
    results = json.loads((out / "sites.json").read_text())
    names = [f"{site}-{selection}" for site, selection in VARIANTS]
    assert [r["name"] for r in results["table"]] == ["base", *names]
    base_eval = json.loads((smoke_run / "reward_eval.json").read_text())
    assert results["table"][0]["acc"] == base_eval["base"]["acc"]  # the same test pairs, the same base model
    for name, row in zip(names, results["table"][1:]):
        iv = load_intervention(out / name / "intervention.json")
        assert iv.site == name.split("-")[0] and row["edited"] == len(iv.neurons) and row["k"] == iv.k
        assert row["total"] == iv.n_layer * iv.n_neurons
        evaluated = json.loads((out / name / "reward_eval.json").read_text())
        assert row["length_sens"] == evaluated["cirm"]["sensitivity"]["length"]
    run_iv = json.loads((smoke_run / "intervention.json").read_text())
    mlp = json.loads((out / "mlp-spearman" / "intervention.json").read_text())
    assert mlp["neurons"] == run_iv["neurons"] and mlp["k"] == run_iv["k"]  # the run's own intervention
    report = (out / "sites.md").read_text()
    assert "| base |" in report and "| query-effect |" in report
    assert (out / "sites.png").read_bytes()[:4] == b"\x89PNG"
    capsys.readouterr()
    main(["sites", "--base", str(smoke_run), "--out", str(out), "--threads", "1"])
    assert capsys.readouterr().out.count("already done") == len(VARIANTS)


def test_sites_errors_are_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["sites", "--out", str(tmp_path / "o")])
    assert "the following arguments are required: --base" in capsys.readouterr().err
    with pytest.raises(SystemExit, match=r"^nanobias sites: error: --base .*: no identity.json \(expected"):
        main(["sites", "--base", str(tmp_path), "--out", str(tmp_path / "o")])
    (tmp_path / "identity.json").write_text(json.dumps({"preset": "smoke"}))
    with pytest.raises(SystemExit, match="its identity.json has no settings and data"):
        main(["sites", "--base", str(tmp_path), "--out", str(tmp_path / "o")])
    (tmp_path / "identity.json").write_text(json.dumps({"preset": "smoke", "settings": {}, "data": "synthetic"}))
    with pytest.raises(SystemExit, match="its reward stage has not finished") as raised:
        main(["sites", "--base", str(tmp_path), "--out", str(tmp_path / "o")])
    assert "\n" not in str(raised.value)
    with pytest.raises(SystemExit, match="no such folder"):
        main(["sites", "--base", str(tmp_path / "missing"), "--out", str(tmp_path / "o")])
    assert not (tmp_path / "o").exists()
