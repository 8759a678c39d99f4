"""GPT-2 loader, offline: a tiny random GPT-2 in Hugging Face's naming and layout, written here as
safetensors (by the writer below, independent of the reader) and as pytorch_model.bin, loaded
into nanobias's GPT and checked against a plain-torch GPT-2 forward written from the paper."""

import json
import math

import pytest
import torch
import torch.nn.functional as F

from nanobias.gpt2 import load_gpt2, read_safetensors

CONFIG = {"n_layer": 2, "n_head": 2, "n_embd": 16, "n_positions": 24, "vocab_size": 50}
DTYPE_NAMES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16"}


def gpt2_state_dict(seed=0) -> dict[str, torch.Tensor]:
    """Random weights under GPT-2's names, Conv1D weights stored [in, out], mask buffers included."""
    g = torch.Generator().manual_seed(seed)
    C, V, P = CONFIG["n_embd"], CONFIG["vocab_size"], CONFIG["n_positions"]

    def rand(*shape):
        return torch.randn(*shape, generator=g) * 0.3

    sd = {"wte.weight": rand(V, C), "wpe.weight": rand(P, C), "ln_f.weight": 1 + rand(C), "ln_f.bias": rand(C)}
    for i in range(CONFIG["n_layer"]):
        h = f"h.{i}."
        sd |= {h + "ln_1.weight": 1 + rand(C), h + "ln_1.bias": rand(C),
               h + "attn.c_attn.weight": rand(C, 3 * C), h + "attn.c_attn.bias": rand(3 * C),
               h + "attn.c_proj.weight": rand(C, C), h + "attn.c_proj.bias": rand(C),
               h + "ln_2.weight": 1 + rand(C), h + "ln_2.bias": rand(C),
               h + "mlp.c_fc.weight": rand(C, 4 * C), h + "mlp.c_fc.bias": rand(4 * C),
               h + "mlp.c_proj.weight": rand(4 * C, C), h + "mlp.c_proj.bias": rand(C),
               h + "attn.bias": torch.tril(torch.ones(P, P)).view(1, 1, P, P), h + "attn.masked_bias": torch.tensor(-1e4)}
    return sd


def write_safetensors(path, tensors: dict[str, torch.Tensor]) -> None:
    header, chunks, offset = {"__metadata__": {"format": "pt"}}, [], 0
    for name, t in tensors.items():
        raw = t.contiguous().view(-1).view(torch.uint8).numpy().tobytes()
        header[name] = {"dtype": DTYPE_NAMES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + len(raw)]}
        chunks.append(raw)
        offset += len(raw)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)  # the format pads the header to 8 bytes
    path.write_bytes(len(text).to_bytes(8, "little") + text + b"".join(chunks))


def write_folder(folder, sd, fmt="safetensors", config=CONFIG):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({**config, "model_type": "gpt2"}))
    if fmt == "safetensors":
        write_safetensors(folder / "model.safetensors", sd)
    else:
        torch.save({"transformer." + k: v for k, v in sd.items()}, folder / "pytorch_model.bin")
    return folder


def reference_gpt2(sd, idx):
    """GPT-2's forward in plain torch, straight from the Conv1D layout: x @ W + b."""
    C, H = CONFIG["n_embd"], CONFIG["n_head"]
    T = idx.shape[1]

    def ln(x, name):
        return F.layer_norm(x, (C,), sd[name + ".weight"], sd[name + ".bias"], eps=1e-5)

    def conv1d(x, name):
        return x @ sd[name + ".weight"] + sd[name + ".bias"]

    x = sd["wte.weight"][idx] + sd["wpe.weight"][:T]
    for i in range(CONFIG["n_layer"]):
        h = f"h.{i}."
        q, k, v = conv1d(ln(x, h + "ln_1"), h + "attn.c_attn").split(C, dim=-1)
        q, k, v = (t.view(*t.shape[:2], H, C // H).transpose(1, 2) for t in (q, k, v))
        scores = q @ k.transpose(-1, -2) / math.sqrt(C // H)
        scores = scores.masked_fill(torch.ones(T, T).tril() == 0, float("-inf"))
        y = (scores.softmax(-1) @ v).transpose(1, 2).reshape(x.shape)
        x = x + conv1d(y, h + "attn.c_proj")
        a = conv1d(ln(x, h + "ln_2"), h + "mlp.c_fc")
        a = 0.5 * a * (1 + torch.tanh(math.sqrt(2 / math.pi) * (a + 0.044715 * a ** 3)))  # GPT-2's gelu
        x = x + conv1d(a, h + "mlp.c_proj")
    return ln(x, "ln_f") @ sd["wte.weight"].T


@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
def test_loaded_gpt2_matches_reference_forward(tmp_path, fmt):
    sd = gpt2_state_dict()
    model = load_gpt2(write_folder(tmp_path / fmt, sd, fmt))
    idx = torch.randint(0, CONFIG["vocab_size"], (3, CONFIG["n_positions"]), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        got, expected = model(idx), reference_gpt2(sd, idx)
    assert got.shape == (3, CONFIG["n_positions"], CONFIG["vocab_size"])
    assert (got - expected).abs().max().item() < 1e-5
    assert model.config.block_size == CONFIG["n_positions"] and model.config.n_layer == CONFIG["n_layer"]
    assert model.config.position == "learned"  # GPT-2's weights hold a learned position table


def test_gpt2_weights_cannot_start_a_rotary_model(tmp_path):
    from nanobias.errors import UserError
    from nanobias.model import GPTConfig
    from nanobias.pretrain import initial_model

    folder = write_folder(tmp_path, gpt2_state_dict())
    with pytest.raises(UserError, match="model.position='rotary'"):
        initial_model(GPTConfig(position="rotary"), folder)
    assert initial_model(GPTConfig(), folder).config.position == "learned"


def test_safetensors_reader_half_precision_dtypes(tmp_path):
    tensors = {"a": torch.randn(3, 4).half(), "b": torch.randn(5).bfloat16(), "c": torch.arange(6.0).view(2, 3)}
    write_safetensors(tmp_path / "t.safetensors", tensors)
    read = read_safetensors(tmp_path / "t.safetensors")
    assert set(read) == set(tensors)
    for name, t in tensors.items():
        assert read[name].dtype == t.dtype and torch.equal(read[name], t), name


def test_missing_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_gpt2(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(CONFIG))
    with pytest.raises(FileNotFoundError, match="model.safetensors or pytorch_model.bin"):
        load_gpt2(tmp_path)


@pytest.mark.parametrize("field, value", [("activation_function", "gelu"), ("layer_norm_epsilon", 1e-6),
                                          ("scale_attn_weights", False), ("scale_attn_by_inverse_layer_idx", True),
                                          ("reorder_and_upcast_attn", True), ("n_inner", 100)])
def test_gpt2_variants_model_py_does_not_implement_are_refused(tmp_path, field, value):
    folder = write_folder(tmp_path, gpt2_state_dict())
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, field: value}))
    with pytest.raises(ValueError, match=rf"config.json: this GPT-2 variant is not implemented here \({field}="):
        load_gpt2(folder)


def test_the_default_mlp_width_written_out_is_accepted(tmp_path):
    folder = write_folder(tmp_path, gpt2_state_dict())
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "n_inner": 4 * config["n_embd"],
                                                    "activation_function": "gelu_new", "layer_norm_epsilon": 1e-5}))
    assert load_gpt2(folder).config.n_embd == config["n_embd"]


def test_missing_tensor_is_named_with_its_shape(tmp_path):
    sd = gpt2_state_dict()
    del sd["h.1.mlp.c_fc.bias"]
    with pytest.raises(KeyError, match=r"model.safetensors: tensor 'h.1.mlp.c_fc.bias' is missing \(expected shape \(64,\)\)"):
        load_gpt2(write_folder(tmp_path, sd))


def test_wrong_shape_is_named(tmp_path):
    sd = gpt2_state_dict()
    sd["h.0.attn.c_attn.weight"] = sd["h.0.attn.c_attn.weight"].T.contiguous()  # stored as nn.Linear would
    with pytest.raises(ValueError, match=r"pytorch_model.bin: tensor 'h.0.attn.c_attn.weight' has shape "
                                         r"\(48, 16\), expected \(16, 48\) \(Conv1D layout"):
        load_gpt2(write_folder(tmp_path, sd, "bin"))
    with pytest.raises(ValueError, match=r"tensor 'wte.weight' has shape \(50, 16\), expected \(51, 16\)"):
        load_gpt2(write_folder(tmp_path / "v", gpt2_state_dict(), config={**CONFIG, "vocab_size": 51}))


def test_pretraining_starts_from_loaded_gpt2_weights(tmp_path):
    """`nanobias pretrain --init gpt2` in small: pretrain(init=...) trains the loaded model itself."""
    from nanobias.checkpoint import load_checkpoint
    from nanobias.presets import get_preset
    from nanobias.pretrain import PretrainConfig, pretrain
    from nanobias.tokenizer import train_bpe

    docs = ["Who was late? Answer: The nurse.", "Who was early? Answer: Cannot be determined."] * 4
    enc = train_bpe(docs, 270)
    config = {**CONFIG, "vocab_size": 280, "n_positions": 128}
    sd = gpt2_state_dict()
    sd["wte.weight"], sd["wpe.weight"] = torch.randn(280, 16) * 0.3, torch.randn(128, 16) * 0.3
    cfg = PretrainConfig(steps=2, batch_size=2, lr=1e-4, warmup=0, eval_every=2, ckpt_every=2)
    model_cfg = get_preset("smoke").model
    loaded = load_gpt2(write_folder(tmp_path / "gpt2", sd, config=config))
    start = {k: v.clone() for k, v in loaded.state_dict().items()}
    pretrain(cfg, model_cfg, enc, docs, docs, tmp_path / "policy.pt", init=loaded)
    ckpt = load_checkpoint(tmp_path / "policy.pt")
    assert ckpt["meta"]["model_config"]["block_size"] == 128 and ckpt["meta"]["model_config"]["vocab_size"] == 280
    moved = max((ckpt["model"][k] - start[k]).abs().max().item() for k in start)
    assert 0 < moved < 3e-4  # two AdamW steps of lr 1e-4 from GPT-2's weights, not a fresh init
    with pytest.raises(ValueError, match="needs vocab >= 270"):
        small = load_gpt2(write_folder(tmp_path / "small", gpt2_state_dict()))  # vocab 50 < the tokenizer's 270
        pretrain(cfg, model_cfg, enc, docs, docs, tmp_path / "small.pt", init=small)
