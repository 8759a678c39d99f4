"""Pretrained GPT-2 as the starting policy: load a Hugging Face-format folder into nanobias's GPT.

The folder holds `config.json` (n_layer, n_head, n_embd, n_positions, vocab_size) and the weights
as `model.safetensors` (preferred) or `pytorch_model.bin`. model.py already uses GPT-2's parameter
names, so loading is renaming plus two layout details of the original checkpoint:

- GPT-2's linear layers are `Conv1D` modules whose weight is stored [in, out]; nn.Linear keeps
  [out, in], so c_attn, c_proj and c_fc weights are transposed.
- `attn.bias` / `attn.masked_bias` are the causal-mask buffers of the original code, not
  parameters; they are ignored (model.py builds its mask itself). `lm_head.weight` is tied to
  `wte.weight` and not read.

The safetensors file is read by the small reader below rather than the `safetensors` package: the
format is an 8-byte little-endian header length, a JSON header {name: {dtype, shape,
data_offsets}} and the raw bytes, so 30 lines replace a dependency. Pair it with tiktoken's `gpt2`
encoding (`nanobias.tokenizer.get_tokenizer("gpt2")`): the vocabulary the weights were trained on.
"""

import json
from pathlib import Path

import torch

from nanobias.errors import UserError
from nanobias.model import GPT, GPTConfig

SAFETENSORS_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}
CONV1D_WEIGHTS = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def read_safetensors(path) -> dict[str, torch.Tensor]:
    """A .safetensors file -> {name: tensor} (F32, F16 or BF16; tensors share one buffer)."""
    path = Path(path)
    data = bytearray(path.read_bytes())  # writable, so torch.frombuffer does not warn
    if len(data) < 8:
        raise ValueError(f"{path}: too short for a safetensors file ({len(data)} bytes)")
    n_header = int.from_bytes(data[:8], "little")
    try:
        header = json.loads(data[8:8 + n_header])
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: the safetensors header is not valid JSON ({e})") from e
    header.pop("__metadata__", None)
    tensors = {}
    for name, info in header.items():
        if info["dtype"] not in SAFETENSORS_DTYPES:
            raise ValueError(f"{path}: tensor {name!r} has dtype {info['dtype']}; "
                             f"expected one of {sorted(SAFETENSORS_DTYPES)}")
        dtype, shape = SAFETENSORS_DTYPES[info["dtype"]], info["shape"]
        start, end = info["data_offsets"]
        numel = (end - start) // dtype.itemsize
        if numel != torch.Size(shape).numel() or 8 + n_header + end > len(data):
            raise ValueError(f"{path}: tensor {name!r} of shape {shape} does not fit its bytes {start}..{end}")
        # the format is little-endian, as is every machine torch runs on in practice
        tensors[name] = torch.frombuffer(data, dtype=dtype, count=numel, offset=8 + n_header + start).view(shape)
    return tensors


# config.json fields of GPT-2 variants that model.py does not implement, and the values it does
SUPPORTED = {
    "activation_function": lambda v: v == "gelu_new",
    "layer_norm_epsilon": lambda v: v == 1e-5,
    "scale_attn_weights": lambda v: v is True,
    "scale_attn_by_inverse_layer_idx": lambda v: v is False,
    "reorder_and_upcast_attn": lambda v: v is False,
    "add_cross_attention": lambda v: v is False,
    "n_inner": lambda v: v is None,
    "tie_word_embeddings": lambda v: v is True,
}


def read_config(directory: Path, dropout: float = 0.0) -> GPTConfig:
    path = directory / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: --init-dir must be a Hugging Face GPT-2 folder "
                                f"(config.json and {' or '.join(WEIGHT_FILES)})")
    config = json.loads(path.read_text())
    config.setdefault("n_positions", config.get("n_ctx"))  # older GPT-2 configs call it n_ctx
    if config.get("n_inner") == 4 * config.get("n_embd", 0):
        config["n_inner"] = None  # the default, written out
    unsupported = {k: config[k] for k, ok in SUPPORTED.items() if k in config and not ok(config[k])}
    if unsupported:  # loading them anyway gives logits off by up to ~0.3: refuse
        raise UserError(f"{path}: this GPT-2 variant is not implemented here ("
                        + ", ".join(f"{k}={v!r}" for k, v in unsupported.items())
                        + "); nanobias implements gelu_new, layer_norm_epsilon 1e-5, scaled attention, "
                          "an MLP of 4 * n_embd and tied embeddings")
    missing = [k for k in ("n_layer", "n_head", "n_embd", "n_positions", "vocab_size") if config.get(k) is None]
    if missing:
        raise KeyError(f"{path}: missing {', '.join(missing)}")
    return GPTConfig(block_size=config["n_positions"], vocab_size=config["vocab_size"], n_layer=config["n_layer"],
                     n_head=config["n_head"], n_embd=config["n_embd"], dropout=dropout, bias=True,
                     gelu_approximate="tanh")


def read_weights(directory: Path) -> tuple[dict[str, torch.Tensor], Path]:
    """{name: tensor} from model.safetensors or pytorch_model.bin, names without "transformer."."""
    for name in WEIGHT_FILES:
        path = directory / name
        if path.is_file():
            tensors = read_safetensors(path) if path.suffix == ".safetensors" else \
                torch.load(path, map_location="cpu", weights_only=True)
            return {k.removeprefix("transformer."): v for k, v in tensors.items()}, path
    raise FileNotFoundError(f"{directory}: no {' or '.join(WEIGHT_FILES)} (GPT-2 weights in Hugging Face format)")


def load_gpt2(directory, dropout: float = 0.0) -> GPT:
    """A Hugging Face GPT-2 folder -> nanobias GPT in fp32 (eval mode) with its weights."""
    directory = Path(directory)
    model = GPT(read_config(directory, dropout))
    tensors, path = read_weights(directory)
    state = {}
    for name, param in model.state_dict().items():
        if name == "lm_head.weight":
            continue  # tied to transformer.wte.weight
        key = name.removeprefix("transformer.")
        conv1d = key.endswith(CONV1D_WEIGHTS)
        expected = tuple(param.shape[::-1] if conv1d else param.shape)  # as stored in GPT-2's file
        if key not in tensors:
            raise KeyError(f"{path}: tensor {key!r} is missing (expected shape {expected})")
        tensor = tensors[key]
        if tuple(tensor.shape) != expected:
            raise ValueError(f"{path}: tensor {key!r} has shape {tuple(tensor.shape)}, expected {expected}"
                             + (" (Conv1D layout [in, out])" if conv1d else "") + f" from {directory / 'config.json'}")
        state[name] = (tensor.t() if conv1d else tensor).float()
    state["lm_head.weight"] = state["transformer.wte.weight"]
    model.load_state_dict(state)
    return model.eval()
