"""optim.py: AdamW against torch.optim.AdamW bit for bit, Muon against torch.optim.Muon and the SVD,
the schedule, resuming from a saved state."""

import subprocess
import sys

import pytest
import torch

from nanobias.model import GPT, GPTConfig
from nanobias.optim import OPTIMIZERS, AdamW, Muon, OptimConfig, lr_at, make_optimizer, newton_schulz
from nanobias.pretrain import lm_loss


def fresh_model():
    torch.manual_seed(0)
    return GPT(GPTConfig(block_size=16, vocab_size=40, n_layer=2, n_head=2, n_embd=16))


def random_batch(step):
    """4 rows of a learnable stream x[t+1] = x[t] + 3 (mod 40) from random starts."""
    start = torch.randint(0, 40, (4, 1), generator=torch.Generator().manual_seed(step))
    x = (start + 3 * torch.arange(17)) % 40
    return x[:, :-1], x[:, 1:]


def test_lr_schedule_warmup_then_cosine():
    cfg = OptimConfig(lr=1.0, warmup=10, min_lr_frac=0.1)
    assert lr_at(0, 100, cfg) == pytest.approx(0.1) and lr_at(9, 100, cfg) == pytest.approx(1.0)
    assert lr_at(10, 100, cfg) == pytest.approx(1.0) and lr_at(100, 100, cfg) == pytest.approx(0.1)
    assert lr_at(55, 100, cfg) == pytest.approx(0.55)  # half-way down the cosine: the mean of max and min


def train_steps(model, opt, steps, start=0):
    for step in range(start, start + steps):
        for group in opt.param_groups:
            group["lr"] = 1e-2 * (step + 1)  # a schedule: lr changes every step
        x, y = random_batch(step)
        opt.zero_grad(set_to_none=True)
        lm_loss(model, x, y).backward()
        model.transformer.wpe.weight.grad = None  # a parameter that got no gradient this step is left alone
        opt.step()


def test_adamw_is_torchs_adamw_bit_for_bit():
    ours, theirs = fresh_model(), fresh_model()
    cfg = OptimConfig(weight_decay=0.3)
    opt = make_optimizer(ours, cfg)
    groups = [{"params": g["params"], "weight_decay": g["weight_decay"]} for g in make_optimizer(theirs, cfg).param_groups]
    train_steps(ours, opt, 6)
    train_steps(theirs, torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.95)), 6)
    for (name, a), b in zip(ours.named_parameters(), theirs.parameters()):
        assert torch.equal(a, b), name
    assert any(not torch.equal(a, b) for a, b in zip(ours.parameters(), fresh_model().parameters()))


def test_adamw_state_dict_resumes_exactly(tmp_path):
    straight, resumed = fresh_model(), fresh_model()
    opt = make_optimizer(straight, OptimConfig())
    train_steps(straight, opt, 5)
    first = make_optimizer(resumed, OptimConfig())
    train_steps(resumed, first, 3)
    torch.save(first.state_dict(), tmp_path / "opt.pt")
    again = make_optimizer(resumed, OptimConfig())
    again.load_state_dict(torch.load(tmp_path / "opt.pt", weights_only=True))
    train_steps(resumed, again, 2, start=3)
    for a, b in zip(straight.parameters(), resumed.parameters()):
        assert torch.equal(a, b)
    with pytest.raises(AssertionError, match="parameter groups"):
        AdamW([{"params": list(straight.parameters())}], lr=1e-3).load_state_dict(opt.state_dict())


def test_building_the_optimisers_does_not_import_torch_dynamo():
    code = ("import sys; from nanobias.optim import OptimConfig, make_optimizer; from nanobias.model import GPT, "
            f"GPTConfig\nfor name in {OPTIMIZERS!r}: make_optimizer(GPT(GPTConfig(block_size=8, vocab_size=8, n_layer=1, "
            "n_head=1, n_embd=8)), OptimConfig(optimizer=name)).step()\nprint('torch._dynamo' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_newton_schulz_orthogonalises_like_the_svd():
    """Every singular value of the result within [0.68, 1.2] (not exactly 1: the quintic's trade), and the
    result within a few degrees of U V^T, for tall, wide, odd-sized and batched float64 matrices."""
    torch.manual_seed(0)
    for shape in [(3, 48, 20), (2, 20, 33), (1, 37, 19), (4, 16, 16)]:
        G = torch.randn(shape, dtype=torch.float64)
        out = newton_schulz(G)
        U, _, Vh = torch.linalg.svd(G, full_matrices=False)
        exact = U @ Vh
        cos = (out * exact).sum((-2, -1)) / (out.norm(dim=(-2, -1)) * exact.norm(dim=(-2, -1)))
        assert out.shape == G.shape and (cos > 0.97).all(), (shape, cos)
        if shape[-1] != shape[-2]:  # a random square matrix has singular values near 0, which stay small
            s = torch.linalg.svdvals(out)
            assert s.min() > 0.65 and s.max() < 1.2, (shape, s.min(), s.max())
    assert torch.equal(newton_schulz(torch.zeros(1, 4, 3)), torch.zeros(1, 4, 3))  # no 0 / 0


def test_muon_steps_as_torchs_muon():
    """Three steps on matrices of two shapes (batched together by shape): the weights move as under
    torch.optim.Muon with the AdamW-matching scale, to 3% (torch runs Newton-Schulz in bfloat16)."""
    torch.manual_seed(0)
    start = [torch.randn(48, 20), torch.randn(48, 20), torch.randn(20, 33)]
    ours, theirs = [w.clone().requires_grad_() for w in start], [w.clone().requires_grad_() for w in start]
    opt = Muon([{"params": ours, "weight_decay": 0.1, "muon": True}], lr=0.01)
    reference = torch.optim.Muon(theirs, lr=0.01, weight_decay=0.1, adjust_lr_fn="match_rms_adamw")
    for _ in range(3):
        grads = [torch.randn_like(w) for w in start]
        for a, b, g in zip(ours, theirs, grads):
            a.grad, b.grad = g.clone(), g.clone()
        opt.step()
        reference.step()
    for a, b, w in zip(ours, theirs, start):
        moved, expected = (a - w).detach(), (b - w).detach()
        assert expected.norm() > 0.05 and (moved - expected).norm() < 0.03 * expected.norm()


def test_muon_takes_the_blocks_matrices_and_adamw_the_rest():
    model = fresh_model()
    opt = make_optimizer(model, OptimConfig(optimizer="muon"))
    names = {p: n for n, p in model.named_parameters()}
    muon = {names[p] for g in opt.param_groups if g.get("muon") for p in g["params"]}
    adamw = {names[p] for g in opt.param_groups if not g.get("muon") for p in g["params"]}
    assert muon == {n for n, p in model.named_parameters() if p.dim() == 2 and n.startswith("transformer.h.")}
    assert muon and not muon & adamw and muon | adamw == set(names.values())
    assert "transformer.wte.weight" in adamw and "transformer.h.0.mlp.c_fc.weight" in muon
    with pytest.raises(ValueError, match="optimizer"):
        OptimConfig(optimizer="sgd")


def test_muon_trains_and_resumes_exactly(tmp_path):
    straight, resumed = fresh_model(), fresh_model()
    cfg = OptimConfig(optimizer="muon")
    x, y = random_batch(99)
    before = lm_loss(straight, x, y).item()
    train_steps(straight, make_optimizer(straight, cfg), 5)
    first = make_optimizer(resumed, cfg)
    train_steps(resumed, first, 3)
    torch.save(first.state_dict(), tmp_path / "opt.pt")
    again = make_optimizer(resumed, cfg)
    again.load_state_dict(torch.load(tmp_path / "opt.pt", weights_only=True))
    train_steps(resumed, again, 2, start=3)
    for a, b in zip(straight.parameters(), resumed.parameters()):
        assert torch.equal(a, b)
    assert lm_loss(straight, x, y).item() < before
