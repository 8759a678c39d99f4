"""The optimisers every trainer shares and their schedule: AdamW, and Muon for the blocks' matrices.

Learning rate: linear warmup over `warmup` steps, then cosine decay to `min_lr_frac * lr` (`lr_at`).
Each step: backward, gradients averaged over ranks, the global norm clipped to `grad_clip`, one
update (`optimizer_step`); a non-finite loss stops the run first (`stop_if_diverged`). Weight decay
acts on matrices only.

`optimizer` "adamw" (the default) updates every parameter by AdamW. "muon" (the `cpu` preset's
pretraining; the `gpu` preset's is not yet measured with it) updates the 2-D weights of the
transformer blocks by Muon and the rest (embeddings, the token shift, biases, LayerNorms) by AdamW,
as modded-nanogpt and nanochat do.
Muon (Jordan et al., 2024) orthogonalises the momentum of each weight matrix W [m, n]:

    B <- mu * B + (1 - mu) * G                       momentum, mu = 0.95
    U  = (1 - mu) * G + mu * B                       Nesterov
    O  = NS5(U) ~ U' V'^T, where U = U' S V'^T       five Newton-Schulz steps (below)
    W <- W * (1 - lr * weight_decay) - lr * 0.2 * sqrt(max(m, n)) * O

so every direction of the update moves by about the same amount, however small its share of the
gradient. The factor 0.2 * sqrt(max(m, n)) gives O the RMS of an AdamW update (Liu et al., 2025,
"Muon is Scalable for LLM Training"), so AdamW's learning rate and weight decay carry over: one lr
for both optimisers. What it buys the `cpu` preset's pretraining: README, "Speed".

Both are written out here rather than taken from torch.optim: building a torch.optim optimiser imports
torch._dynamo (torch 2.13 wraps Optimizer.__init__ in _disable_dynamo), 1.8 s of every process that
trains, where a nano model's whole stage can take seconds. AdamW is torch.optim.AdamW's update bit
for bit, Muon is torch.optim.Muon's (adjust_lr_fn="match_rms_adamw") in float32 where torch's
Newton-Schulz runs in bfloat16 (tests/test_optim.py).
"""

import math
from dataclasses import dataclass

import torch

from nanobias import distributed
from nanobias.errors import TrainingDiverged, check

OPTIMIZERS = ("adamw", "muon")


@dataclass
class OptimConfig:
    """The optimiser and its schedule; every trainer's config extends it (RL trainers with their own defaults)."""
    lr: float = 1e-3
    warmup: int = 50
    min_lr_frac: float = 0.1  # cosine decay to this share of lr; 1.0: constant after warmup
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    optimizer: str = "adamw"  # "adamw" | "muon": Muon for the blocks' weight matrices, AdamW for the rest

    def __post_init__(self):
        check(self, {"lr": self.lr > 0, "warmup": self.warmup >= 0, "min_lr_frac": 0 <= self.min_lr_frac <= 1,
                     "weight_decay": self.weight_decay >= 0, "grad_clip": self.grad_clip > 0,
                     "optimizer": self.optimizer in OPTIMIZERS},
              f"lr, grad_clip > 0; warmup, weight_decay >= 0; 0 <= min_lr_frac <= 1; optimizer one of {OPTIMIZERS}")


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
    CPU). On a GPU torch's foreach path would launch fewer kernels (this loop: ~7 per parameter).
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
            self.adamw(group)

    def adamw(self, group: dict) -> None:
        lr, (beta1, beta2), eps, decay = group["lr"], group["betas"], group["eps"], group["weight_decay"]
        for p in group["params"]:
            if p.grad is None:
                continue
            state = self.state.get(p)
            if state is None:
                state = self.state[p] = {"step": 0, "exp_avg": torch.zeros_like(p), "exp_avg_sq": torch.zeros_like(p)}
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
        self.state = {params[i]: {k: v.to(params[i]) if torch.is_tensor(v) else v for k, v in s.items()}
                      for i, s in saved["state"].items()}


def newton_schulz(G: torch.Tensor, steps: int = 5, eps: float = 1e-7) -> torch.Tensor:
    """G [N, m, n] -> about U V^T of each matrix's SVD G = U S V^T (Keller Jordan's quintic iteration).

    After scaling by the Frobenius norm (so every singular value s <= 1) each step maps s to
    a s + b s^3 + c s^5, coefficients chosen for the steepest rise near 0: five steps take every s
    above ~1% of the largest into about [0.7, 1.2], not exactly 1, which trains as well as the exact
    U V^T at a fraction of an SVD's cost. The Gram matrix X X^T is taken on the short side."""
    a, b, c = 3.4445, -4.7750, 2.0315
    tall = G.size(-2) > G.size(-1)
    X = G.mT if tall else G
    X = X / X.norm(dim=(-2, -1), keepdim=True).clamp(min=eps)
    for _ in range(steps):
        A = X @ X.mT  # [N, short, short]
        X = a * X + (b * A + c * A @ A) @ X
    return X.mT if tall else X


class Muon(AdamW):
    """Muon for the parameter groups marked "muon" (module docstring), AdamW for the others. The matrices
    of one shape are orthogonalised together, one batched product per Newton-Schulz step instead of
    one per matrix: the `cpu` model's 16 matrices in 4 batches."""

    def __init__(self, groups: list[dict], lr: float, betas=(0.9, 0.95), eps: float = 1e-8, momentum: float = 0.95):
        super().__init__(groups, lr, betas, eps)
        self.momentum = momentum

    @torch.no_grad()
    def step(self) -> None:
        for group in self.param_groups:
            if group.get("muon"):
                self.muon(group)
            else:
                self.adamw(group)

    def muon(self, group: dict) -> None:
        mu, lr, decay = self.momentum, group["lr"], group["weight_decay"]
        by_shape: dict[tuple, list] = {}
        for p in group["params"]:
            if p.grad is not None:
                by_shape.setdefault(tuple(p.shape), []).append(p)
        for shape, params in by_shape.items():
            updates = []
            for p in params:
                if p not in self.state:  # not setdefault: that would allocate a new zero buffer every step
                    self.state[p] = {"momentum_buffer": torch.zeros_like(p)}
                buf = self.state[p]["momentum_buffer"]
                buf.lerp_(p.grad, 1 - mu)
                updates.append(p.grad.lerp(buf, mu))
            orthogonal = newton_schulz(torch.stack(updates).float())  # [N, m, n]
            scale = 0.2 * math.sqrt(max(shape))  # AdamW's update RMS
            for p, o in zip(params, orthogonal):
                if decay != 0:
                    p.mul_(1 - lr * decay)
                p.add_(o.to(p.dtype), alpha=-lr * scale)


def make_optimizer(model: torch.nn.Module, cfg: OptimConfig) -> AdamW:
    """cfg.optimizer over the model's trainable parameters; weight decay on matrices only. Muon takes the
    2-D weights inside the transformer blocks (`transformer.h.*`): not the embeddings, whose rows are
    looked up one token at a time rather than multiplied as a whole."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if cfg.optimizer == "adamw":
        groups = [{"params": [p for _, p in named if p.dim() >= 2], "weight_decay": cfg.weight_decay},
                  {"params": [p for _, p in named if p.dim() < 2], "weight_decay": 0.0}]
        return AdamW(groups, lr=cfg.lr, betas=(0.9, 0.95))
    in_blocks = [p for n, p in named if p.dim() == 2 and "transformer.h." in n]
    others = [p for n, p in named if not (p.dim() == 2 and "transformer.h." in n)]
    groups = [{"params": in_blocks, "weight_decay": cfg.weight_decay, "muon": True},
              {"params": [p for p in others if p.dim() >= 2], "weight_decay": cfg.weight_decay},
              {"params": [p for p in others if p.dim() < 2], "weight_decay": 0.0}]
    return Muon(groups, lr=cfg.lr, betas=(0.9, 0.95))


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


def stop_if_diverged(value: torch.Tensor, quantity: str, causes: str = "") -> None:
    """Raise TrainingDiverged if `value` (any shape) is not finite on any process (they all stop together);
    `causes`, if given, names what likely made it so (else the caller's rl.at_step does)."""
    if not torch.isfinite(distributed.all_sum(value.detach().float().sum())):
        values = value.detach().flatten()
        raise TrainingDiverged(f"{quantity} is {values[~torch.isfinite(values)][0].item()}; stopped."
                               + (f" Likely cause: {causes}" if causes else ""))
