"""Checkpoints and result files: written atomically, read without pickle.

A checkpoint is a dict of tensors and plain values, `{"model", "optimizer", "step", "meta"}`,
saved with `torch.save` to a temporary file that is then renamed, and read with
`torch.load(weights_only=True)`. A policy's `meta` carries its model config and its tokenizer
as JSON text, so a checkpoint file is all one needs to sample from it.
"""

import json
import os
from dataclasses import asdict
from pathlib import Path

import torch

from nanobias import distributed
from nanobias.model import GPT, GPTConfig
from nanobias.tokenizer import tokenizer_from_json, tokenizer_to_json


def save_checkpoint(path, payload: dict) -> None:
    if not distributed.is_main():
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def load_checkpoint(path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    return torch.load(path, map_location="cpu", weights_only=True)


def write_json(path, obj) -> None:
    if not distributed.is_main():
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    os.replace(tmp, path)


def policy_meta(model: GPT, enc) -> dict:
    return {"kind": "policy", "model_config": asdict(model.config), "tokenizer": tokenizer_to_json(enc)}


def save_policy(path, model: GPT, enc, **meta) -> None:
    save_checkpoint(path, {"model": model.state_dict(), "step": 0, "meta": {**policy_meta(model, enc), **meta}})


def load_model(path, kind: str, build, expected: str, device="cpu"):
    """A checkpoint of `kind` -> (build(GPTConfig) with its weights, in eval mode, tiktoken.Encoding, meta).
    `expected` names the right file in the error for a checkpoint of another kind."""
    ckpt = load_checkpoint(path)
    meta = ckpt.get("meta", {})
    if meta.get("kind") != kind:
        raise ValueError(f"{path} is not a {kind} checkpoint (kind={meta.get('kind')!r}); pass {expected}")
    model = build(GPTConfig(**meta["model_config"]))
    model.load_state_dict(ckpt["model"])
    return model.to(device).eval(), tokenizer_from_json(meta["tokenizer"]), meta


def load_policy(path, device="cpu"):
    """A policy checkpoint -> (GPT in eval mode, tiktoken.Encoding, meta)."""
    return load_model(path, "policy", GPT, "the policy.pt that `nanobias pretrain` or a trainer wrote", device)
