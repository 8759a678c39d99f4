"""The training loop of pretraining and the reward model.

The optimiser and its schedule (optim.py), periodic evaluation, metrics appended to a JSONL
file, periodic checkpoints (checkpoint.py; `final` only after the last step), a non-finite loss
stopping the run at its step. The caller gives `batch_loss(step)`:
the batch is a pure function of the step, so a resumed run replays exactly the batches an
uninterrupted one would have seen and ends with the same weights.
"""

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch

from nanobias import device, distributed
from nanobias.checkpoint import load_checkpoint, save_checkpoint, write_atomic
from nanobias.errors import TrainingDiverged, UserError, check
from nanobias.optim import OptimConfig, make_optimizer, optimizer_step, set_lr
from nanobias.progress import Progress


@dataclass
class TrainConfig(OptimConfig):
    """A supervised stage (pretraining, the reward model): its optimiser and its length."""
    steps: int = 1000
    batch_size: int = 32
    eval_every: int = 200
    ckpt_every: int = 200

    def __post_init__(self):
        super().__post_init__()
        check(self, {"steps": self.steps >= 1, "batch_size": self.batch_size >= 1,
                     "eval_every": self.eval_every >= 1, "ckpt_every": self.ckpt_every >= 1},
              "steps, batch_size, eval_every, ckpt_every >= 1")


def read_metrics(path) -> list[dict]:
    """The records of a metrics JSONL file. A torn last line (the run was killed mid-write) is dropped;
    any other line that is not a JSON record with a "step" is a UserError naming the file and line."""
    lines = Path(path).read_text(errors="replace").splitlines()
    records = []
    for i, line in enumerate(lines, 1):
        try:
            record = json.loads(line)
            record["step"]
        except (json.JSONDecodeError, TypeError, KeyError) as e:
            if i == len(lines):
                break
            raise UserError(f"{path}, line {i}: not a metrics record ({e}); delete the file to start "
                            "its log afresh") from e
        records.append(record)
    return records


def train(model: torch.nn.Module, batch_loss: Callable[[int], tuple[torch.Tensor, dict]], cfg: TrainConfig,
          ckpt_path, meta: dict, evaluate: Callable[[], dict] | None = None, resume: bool = False,
          desc: str = "train") -> dict:
    """Run `cfg.steps` optimiser steps of `batch_loss(step) -> (loss, {name: float})`; every `eval_every`
    steps and at the end, `evaluate() -> {name: float}` (e.g. "val_loss") joins the step's record.

    Writes `ckpt_path` ({"model", "optimizer", "step", "meta"}) every `ckpt_every` steps and at
    the end, and `<ckpt_path>.metrics.jsonl`. Returns the last logged metrics.
    """
    ckpt_path = Path(ckpt_path)
    metrics_path = ckpt_path.with_name(ckpt_path.stem + ".metrics.jsonl")
    device.prepare(model)
    params = list(model.parameters())
    opt = make_optimizer(model, cfg)
    start = 0
    if resume and ckpt_path.is_file():
        ckpt = load_checkpoint(ckpt_path)
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        start = ckpt["step"]
    distributed.sync_parameters(model)
    # metrics from steps after the checkpoint belong to a run that is being replaced
    if distributed.is_main():
        kept = []
        if start > 0 and metrics_path.is_file():
            kept = [json.dumps(r) for r in read_metrics(metrics_path) if r["step"] < start]
        write_atomic(metrics_path, "".join(ln + "\n" for ln in kept).encode())

    def checkpoint(step):
        save_checkpoint(ckpt_path, {"model": model.state_dict(), "optimizer": opt.state_dict(), "step": step,
                                    "steps": cfg.steps, "final": step == cfg.steps,
                                    "meta": {**meta, "train_config": asdict(cfg)}})

    progress = Progress(cfg.steps, desc, unit="step", already_done=start)
    last = {}
    model.train()
    for step in range(start, cfg.steps):
        lr = set_lr(opt, step, cfg.steps, cfg)
        with device.autocast():
            loss, stats = batch_loss(step)
        # averaged before the check, so that every rank stops together
        logged = distributed.mean_over_ranks({"loss": loss.item(), **stats})
        if not math.isfinite(logged["loss"]):
            raise TrainingDiverged(
                f"{desc}: loss is {logged['loss']} at step {step}; stopped. The last good checkpoint "
                f"{ckpt_path} is kept (if one was written). Try a lower --lr.")
        grad_norm = optimizer_step(opt, loss, params, cfg.grad_clip)
        last = {"step": step, "loss": logged.pop("loss"), "lr": lr, "grad_norm": grad_norm, **logged}
        done = step + 1
        if not distributed.is_main():
            continue
        if evaluate is not None and (done % cfg.eval_every == 0 or done == cfg.steps):
            model.eval()
            with torch.no_grad(), device.autocast():
                last.update(evaluate())
            model.train()
        with open(metrics_path, "a") as f:
            f.write(json.dumps(last) + "\n")
        if done % cfg.ckpt_every == 0 or done == cfg.steps:
            checkpoint(done)
        shown = {k: v for k, v in last.items() if k in ("loss", "val_loss", "acc", "acc_disambig")}
        progress.update(done, force=(done == cfg.steps), lr=f"{lr:.2e}", **shown)
    distributed.barrier()  # the other ranks may read the final checkpoint next
    model.eval()
    return last
