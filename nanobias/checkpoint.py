"""Checkpoints and result files: written atomically, read without pickle.

A checkpoint is a dict of tensors and plain values, `{"model", "optimizer", "step", "meta"}`,
saved with `torch.save` to a temporary file that is then renamed, and read with
`torch.load(weights_only=True)`. Trainers' periodic checkpoints carry `final: False` until the last
step: a policy or reward model is only ever loaded from a finished one. A policy's `meta` carries its model config and its tokenizer
as JSON text, so a checkpoint file is all one needs to sample from it.
"""

import io
import json
import os
from dataclasses import asdict
from pathlib import Path

import torch

from nanobias import distributed
from nanobias.errors import UserError
from nanobias.model import GPT, GPTConfig
from nanobias.tokenizer import tokenizer_from_json, tokenizer_to_json


def write_atomic(path, data: bytes) -> None:
    """Write `data` to a temporary file beside `path`, then rename: a reader never sees half a file,
    and a failed write (disk full, read-only folder) leaves the old file and no temporary one."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise UserError(f"cannot write {path}: {e.strerror or e} (is the disk full, or the folder read-only?)") from e


def save_checkpoint(path, payload: dict) -> None:
    if not distributed.is_main():
        return
    buffer = io.BytesIO()  # serialised in memory, so that a failed write is an OSError naming the cause
    torch.save(payload, buffer)
    write_atomic(path, buffer.getvalue())


def load_checkpoint(path) -> dict:
    """A checkpoint written by save_checkpoint; anything else is a UserError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # empty, truncated or random bytes fail in torch's zip and pickle readers
        why = ("the safe loader (weights_only) refused it" if "Weights only load failed" in str(e)
               else f"{type(e).__name__}: {str(e).splitlines()[0][:100] if str(e) else 'no detail'}")
        raise UserError(f"{path}: not a readable checkpoint ({why}); it is empty, truncated, not written by nanobias "
                        "or holds objects the safe loader will not run: re-run the command that writes it") from e
    if not isinstance(ckpt, dict) or not {"model", "meta"} <= set(ckpt):
        raise UserError(f"{path}: not a nanobias checkpoint (expected a dict with 'model' and 'meta')")
    return ckpt


def write_json(path, obj) -> None:
    if not distributed.is_main():
        return
    write_atomic(path, (json.dumps(obj, indent=2) + "\n").encode())


def read_json(path, expected: str):
    """The JSON value in `path`; a missing or unreadable file is a UserError naming it and `expected`."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: not found; expected {expected}")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: not JSON ({e}); expected {expected}") from None


def policy_meta(model: GPT, enc) -> dict:
    return {"kind": "policy", "model_config": asdict(model.config), "tokenizer": tokenizer_to_json(enc)}


def save_policy(path, model: GPT, enc, **meta) -> None:
    save_checkpoint(path, {"model": model.state_dict(), "step": 0, "meta": {**policy_meta(model, enc), **meta}})


def load_model(path, kind: str, build, expected: str, device="cpu"):
    """A finished checkpoint of `kind` -> (build(GPTConfig) with its weights, in eval mode, tiktoken.Encoding,
    meta). `expected` names the right file in the error for a checkpoint of another kind."""
    ckpt = load_checkpoint(path)
    meta = ckpt["meta"]
    if meta.get("kind") != kind:
        raise UserError(f"{path} is not a {kind} checkpoint (kind={meta.get('kind')!r}); pass {expected}")
    if ckpt.get("final") is False:
        raise UserError(f"{path} is a partial checkpoint (step {ckpt['step']} of {ckpt.get('steps', '?')}): the run "
                        "that wrote it stopped early; run the same command again (with --resume) to finish it")
    try:
        model = build(GPTConfig(**meta["model_config"]))
        model.load_state_dict(ckpt["model"])
        enc = tokenizer_from_json(meta["tokenizer"])
    except (KeyError, TypeError, RuntimeError, ValueError) as e:
        raise UserError(f"{path}: its weights, model config or tokenizer do not fit together ({e}); "
                        "re-run the command that writes it") from e
    return model.to(device).eval(), enc, meta


def load_policy(path, device="cpu"):
    """A policy checkpoint -> (GPT in eval mode, tiktoken.Encoding, meta)."""
    return load_model(path, "policy", GPT, "the policy.pt that `nanobias pretrain` or a trainer wrote", device)
