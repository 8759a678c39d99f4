"""The optimiser every trainer shares, and the training loop of pretraining and the reward model.

AdamW (weight decay on matrices only), learning rate with linear warmup then cosine decay to
`min_lr_frac * lr`, gradient-norm clipping, periodic validation loss, metrics appended to a JSONL
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
from nanobias.errors import TrainingDiverged, UserError
from nanobias.progress import Progress


@dataclass
class OptimConfig:
    """AdamW and its schedule; every trainer's config extends it (RL trainers with their own defaults)."""
    lr: float = 1e-3
    warmup: int = 50
    min_lr_frac: float = 0.1  # cosine decay to this share of lr; 1.0: constant after warmup
    weight_decay: float = 0.1
    grad_clip: float = 1.0

    def __post_init__(self):
        check(self, {"lr": self.lr > 0, "warmup": self.warmup >= 0, "min_lr_frac": 0 <= self.min_lr_frac <= 1,
                     "weight_decay": self.weight_decay >= 0, "grad_clip": self.grad_clip > 0},
              "lr, grad_clip > 0; warmup, weight_decay >= 0; 0 <= min_lr_frac <= 1")


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


def check(cfg, checks: dict[str, bool], rule: str) -> None:
    """Raise ValueError naming the first setting of `cfg` whose check failed, and the rule."""
    bad = [k for k, ok in checks.items() if not ok]
    if bad:
        raise ValueError(f"bad setting {type(cfg).__name__}.{bad[0]}={getattr(cfg, bad[0])!r} ({rule})")


def stop_if_diverged(value: torch.Tensor, quantity: str, causes: str = "") -> None:
    """Raise TrainingDiverged if `value` (any shape) is not finite on any process (they all stop together);
    `causes`, if given, names what likely made it so (else the caller's rl.at_step does)."""
    if not torch.isfinite(distributed.all_sum(value.detach().float().sum())):
        values = value.detach().flatten()
        raise TrainingDiverged(f"{quantity} is {values[~torch.isfinite(values)][0].item()}; stopped."
                               + (f" Likely cause: {causes}" if causes else ""))


def lr_at(step: int, steps: int, cfg: OptimConfig) -> float:
    """Step `step` of `steps`: linear warmup, then cosine decay from lr to min_lr_frac * lr."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, steps - cfg.warmup)
    return cfg.lr * (cfg.min_lr_frac + (1 - cfg.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))


class AdamW:
    """AdamW (Loshchilov & Hutter, 2019), each parameter p with gradient g at step t:

        p  <- p * (1 - lr * weight_decay)                    decoupled weight decay
        m  <- beta1 * m + (1 - beta1) * g                    first moment
        v  <- beta2 * v + (1 - beta2) * g^2                  second moment
        p  <- p - lr / (1 - beta1^t) * m / (sqrt(v / (1 - beta2^t)) + eps)

    torch.optim.AdamW's update exactly as its single-tensor path computes it (the path it takes on a
    CPU), so a run is bit for bit the same with either (tests/test_train.py). Why our own: building a
    torch.optim optimiser imports torch._dynamo (torch 2.13 wraps Optimizer.__init__ in
    _disable_dynamo), 1.8 s of every process that trains, where a nano model's whole stage can take
    seconds. On a GPU torch's foreach path would launch fewer kernels (this loop: ~7 per parameter).
    `param_groups`, `state_dict` and `load_state_dict` work as torch's, for the schedule and resuming.
    """

    def __init__(self, groups: list[dict], lr: float, betas=(0.9, 0.95), eps: float = 1e-8):
        self.param_groups = [{"lr": lr, "betas": tuple(betas), "eps": eps, "weight_decay": 0.0, **g,
                              "params": list(g["params"])} for g in groups]
        self.state: dict[torch.Tensor, dict] = {}  # parameter -> {"step", "exp_avg", "exp_avg_sq"}

    def zero_grad(self, set_to_none: bool = True) -> None:
        assert set_to_none, "gradients are always dropped, as torch's default"
        for group in self.param_groups:
            for p in group["params"]:
                p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        for group in self.param_groups:
            lr, (beta1, beta2), eps, decay = group["lr"], group["betas"], group["eps"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state.get(p)
                if state is None:
                    state = self.state[p] = {"step": 0, "exp_avg": torch.zeros_like(p),
                                             "exp_avg_sq": torch.zeros_like(p)}
                state["step"] += 1
                t, m, v, g = state["step"], state["exp_avg"], state["exp_avg_sq"], p.grad
                if decay != 0:
                    p.mul_(1 - lr * decay)
                m.lerp_(g, 1 - beta1)
                v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
                denom = (v.sqrt() / (1 - beta2 ** t) ** 0.5).add_(eps)
                p.addcdiv_(m, denom, value=-lr / (1 - beta1 ** t))

    def state_dict(self) -> dict:
        """As torch's: parameters by their index over the groups, so a checkpoint holds no tensor twice."""
        index = {p: i for i, p in enumerate(p for group in self.param_groups for p in group["params"])}
        return {"state": {index[p]: dict(s) for p, s in self.state.items()},
                "param_groups": [{**group, "params": [index[p] for p in group["params"]]}
                                 for group in self.param_groups]}

    def load_state_dict(self, saved: dict) -> None:
        params = [p for group in self.param_groups for p in group["params"]]
        sizes = [len(g["params"]) for g in saved["param_groups"]]
        assert sizes == [len(g["params"]) for g in self.param_groups], f"parameter groups of {sizes} parameters"
        for group, saved_group in zip(self.param_groups, saved["param_groups"]):
            group.update({k: v for k, v in saved_group.items() if k != "params"})
            group["betas"] = tuple(group["betas"])
        self.state = {params[i]: {"step": int(s["step"]), "exp_avg": s["exp_avg"].to(params[i]),
                                  "exp_avg_sq": s["exp_avg_sq"].to(params[i])} for i, s in saved["state"].items()}


def make_optimizer(model: torch.nn.Module, cfg: OptimConfig) -> AdamW:
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    return AdamW(groups, lr=cfg.lr, betas=(0.9, 0.95))


def set_lr(opt: AdamW, step: int, steps: int, cfg: OptimConfig) -> float:
    """Give every parameter group the scheduled learning rate of `step` (of `steps`); returns it."""
    lr = lr_at(step, steps, cfg)
    for group in opt.param_groups:
        group["lr"] = lr
    return lr


def optimizer_step(opt: AdamW, loss: torch.Tensor, params: list, grad_clip: float) -> float:
    """Backward, gradients averaged over ranks, norm clipped, one step. Returns the (global) gradient norm."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    distributed.average_gradients(params)
    grad_norm = torch.nn.utils.clip_grad_norm_(params, grad_clip).item()
    opt.step()
    return grad_norm


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
