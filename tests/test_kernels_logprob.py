"""nanobias.kernels.logprob: token log-probs on the "torch" (chunked) and "triton" (interpreted)
backends against the float64 reference, and the fused GRPO loss against the readable
nanobias.grpo.grpo_loss in float64 (grpo_loss with backend "triton" is fused_grpo_loss; with
"torch" it is the chunked log-probs followed by grpo.py's own per-token loss)."""

import math

import pytest
import torch

from nanobias import grpo, kernels
from nanobias.kernels import logprob, reference

BACKENDS = ["torch", "triton"]


pytestmark = pytest.mark.usefixtures("poison_outputs")


def make_logits(shape, dtype, seed, scale=3.0):
    g = torch.Generator(torch.get_default_device()).manual_seed(seed)
    return (torch.randn(shape, generator=g, dtype=torch.float64) * scale).to(dtype)


def make_targets(shape, V, seed):
    return torch.randint(0, V, shape, generator=torch.Generator(torch.get_default_device()).manual_seed(seed))


def grads(fn, logits, weights=None):
    """(value, d sum(weights * value) / d logits) of fn at logits, in logits' dtype."""
    leaf = logits.detach().clone().requires_grad_()
    value = fn(leaf)
    (value if weights is None else value * weights.to(value.dtype)).sum().backward()
    return value.detach(), leaf.grad


def tolerance(dtype):
    # fp16 gradients are stored in fp16 (relative rounding 5e-4); log-probs are fp32 for every input
    return dict(atol=2e-3, rtol=2e-3) if dtype == torch.float16 else dict(atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("V", [1, 3, 1000, 5027])
def test_token_logprobs_match_float64_reference(backend, dtype, V, monkeypatch):
    monkeypatch.setattr(logprob, "CHUNK_ELEMENTS", 2 * V)  # chunks of 2 rows: the torch path splits T
    logits = make_logits((2, 3, V), dtype, seed=V)
    targets = make_targets((2, 3), V, seed=V + 1)
    weights = make_logits((2, 3), torch.float32, seed=V + 2, scale=1.0)
    for temperature in (1.0, 0.7):
        value, grad = grads(lambda x: kernels.token_logprobs(x, targets, temperature, backend=backend), logits, weights)
        ref_value, ref_grad = grads(lambda x: reference.token_logprobs(x, targets, temperature), logits.double(), weights)
        assert value.dtype == torch.float32 and grad.dtype == dtype
        torch.testing.assert_close(value.double(), ref_value, atol=2e-5, rtol=1e-5)
        torch.testing.assert_close(grad.double(), ref_grad, **tolerance(dtype))


def test_torch_path_bf16(monkeypatch):
    """bf16 runs through the chunked path on CPU too (the interpreter's bf16 is not trusted: GPU only)."""
    monkeypatch.setattr(logprob, "CHUNK_ELEMENTS", 2 * 1000)
    logits = make_logits((2, 3, 1000), torch.bfloat16, seed=12)
    targets = make_targets((2, 3), 1000, seed=13)
    value, grad = grads(lambda x: kernels.token_logprobs(x, targets, 0.7, backend="torch"), logits)
    ref_value, ref_grad = grads(lambda x: reference.token_logprobs(x, targets, 0.7), logits.double())
    assert grad.dtype == torch.bfloat16
    torch.testing.assert_close(value.double(), ref_value, atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(grad.double(), ref_grad, atol=1e-4, rtol=2 ** -8)  # half a bf16 ulp


@pytest.mark.parametrize("backend", BACKENDS)
def test_token_logprobs_accepts_strided_and_2d_logits(backend):
    V = 37
    full = make_logits((2, 5, V), torch.float32, seed=1)
    targets = make_targets((2, 4), V, seed=2)
    shifted = full[:, :-1]  # the usual next-token slice: not viewable as [N*T, V]
    transposed = make_logits((V, 2, 4), torch.float32, seed=3).permute(1, 2, 0)  # stride over V != 1
    for logits in (shifted, transposed):
        value, grad = grads(lambda x: kernels.token_logprobs(x, targets, backend=backend), logits)
        ref_value, ref_grad = grads(lambda x: reference.token_logprobs(x, targets), logits.double())
        torch.testing.assert_close(value.double(), ref_value, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(grad.double(), ref_grad, atol=1e-6, rtol=1e-5)
    rows = full.reshape(10, V)
    row_targets = make_targets((10,), V, seed=4)
    value = kernels.token_logprobs(rows, row_targets, backend=backend)
    assert value.shape == (10,)
    torch.testing.assert_close(value.double(), reference.token_logprobs(rows.double(), row_targets), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_token_logprobs_extreme_logits_stay_finite(backend):
    V = 300
    g = torch.Generator(torch.get_default_device()).manual_seed(5)
    logits = torch.where(torch.rand(2, 3, V, generator=g) < 0.5, -1e4, 1e4)
    logits[0, 0] = 1e4  # all equal: log(1/V)
    targets = make_targets((2, 3), V, seed=6)
    for dtype in (torch.float32, torch.float16):
        value, grad = grads(lambda x: kernels.token_logprobs(x, targets, 0.7, backend=backend), logits.to(dtype))
        assert torch.isfinite(value).all() and torch.isfinite(grad).all()
        ref_value, ref_grad = grads(lambda x: reference.token_logprobs(x, targets, 0.7), logits.double())
        # |x / T| ~ 1.4e4 has an fp32 spacing of 1e-3, so log-probs near 0 carry that absolute error
        torch.testing.assert_close(value.double(), ref_value, atol=2e-3, rtol=1e-6)
        torch.testing.assert_close(grad.double(), ref_grad, atol=1e-3, rtol=1e-3)
    assert value[0, 0].item() == pytest.approx(-math.log(V), abs=2e-3)


def test_chunked_path_passes_gradcheck_across_chunk_boundaries(monkeypatch):
    monkeypatch.setattr(logprob, "CHUNK_ELEMENTS", 14)  # 2 rows of V = 7 per chunk
    logits = make_logits((2, 3, 7), torch.float64, seed=7).requires_grad_()  # T = 3 > 2: chunks split T
    targets = make_targets((2, 3), 7, seed=8)

    def check(x, t):
        return torch.autograd.gradcheck(lambda y: kernels.token_logprobs(y, t, 0.8, backend="torch"), (x,), fast_mode=True)

    assert check(logits, targets)
    short = make_logits((5, 1, 7), torch.float64, seed=9).requires_grad_()  # T = 1 < 2: chunks of sequences
    assert check(short, make_targets((5, 1), 7, seed=10))


def grpo_case(N, T, V, dtype, seed):
    """A batch of N = 2 groups of N/2 with padded tails, one fully masked row, one equal-reward group."""
    logits = make_logits((N, T, V), dtype, seed)
    targets = make_targets((N, T), V, seed + 1)
    lengths = torch.randint(1, T + 1, (N,), generator=torch.Generator(torch.get_default_device()).manual_seed(seed + 2))
    lengths[1] = 0
    mask = torch.arange(T)[None, :] < lengths[:, None]  # [N, T] completion tokens, then padding
    rewards = make_logits((N,), torch.float32, seed + 3, scale=1.0)
    rewards[N // 2:] = 0.5
    logp = reference.token_logprobs(logits, targets).float()
    logp_old = logp + 0.3 * make_logits((N, T), torch.float32, seed + 4, scale=1.0)
    logp_ref = logp + 0.3 * make_logits((N, T), torch.float32, seed + 5, scale=1.0)
    return logits, targets, mask, rewards, logp_old, logp_ref


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("agg", grpo.AGGS)
@pytest.mark.parametrize("scale", grpo.SCALES)
def test_grpo_loss_matches_float64_reference(backend, agg, scale, monkeypatch):
    monkeypatch.setattr(logprob, "CHUNK_ELEMENTS", 3 * 1000)  # chunks of 3 rows across T = 5
    logits, targets, mask, rewards, logp_old, logp_ref = grpo_case(4, 5, 1000, torch.float32, seed=11)
    args = dict(logp_old=logp_old, logp_ref=logp_ref, eps_low=0.2, eps_high=0.28, beta=0.05, temperature=0.9,
                scale=scale, agg=agg)

    def run(fn, x):
        leaf = x.detach().clone().requires_grad_()
        loss, stats = fn(leaf, targets, mask, rewards, 2, **args)
        loss.backward()
        return loss.detach(), stats, leaf.grad

    loss, stats, grad = run(lambda *a, **k: grpo.grpo_loss(*a, **k, backend=backend), logits)
    ref_loss, ref_stats, ref_grad = run(lambda *a, **k: grpo.grpo_loss(*a, **k, backend="reference"), logits.double())
    torch.testing.assert_close(loss.double(), ref_loss, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(grad.double(), ref_grad, atol=1e-7, rtol=1e-5)
    assert stats["kl"].item() == pytest.approx(ref_stats["kl"].item(), rel=1e-5)
    assert stats["clip_frac"].item() == ref_stats["clip_frac"].item() > 0
    assert grad[1].eq(0).all()  # the fully masked sequence


@pytest.mark.parametrize("backend", BACKENDS)
def test_grpo_loss_fp16_and_odd_vocab(backend):
    logits, targets, mask, rewards, logp_old, logp_ref = grpo_case(4, 3, 5027, torch.float16, seed=21)
    leaf = logits.clone().requires_grad_()
    loss, _ = grpo.grpo_loss(leaf, targets, mask, rewards, 2, logp_old, logp_ref, beta=0.1, agg="dapo",
                             backend=backend)
    loss.backward()
    ref_leaf = logits.double().requires_grad_()
    ref_loss, _ = grpo.grpo_loss(ref_leaf, targets, mask, rewards, 2, logp_old, logp_ref, beta=0.1, agg="dapo",
                                 backend="reference")
    ref_loss.backward()
    assert leaf.grad.dtype == torch.float16
    torch.testing.assert_close(loss.double(), ref_loss, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(leaf.grad.double(), ref_leaf.grad, atol=1e-5, rtol=2e-3)


@pytest.mark.parametrize("backend", BACKENDS)
def test_grpo_on_policy_gradient_is_advantage_weighted_logprob(backend):
    """logp_old None: ratio 1, loss = -sum w A, gradient = gradient of -sum w A logp."""
    logits, targets, mask, rewards, _, _ = grpo_case(4, 4, 50, torch.float32, seed=31)
    leaf = logits.clone().requires_grad_()
    loss, stats = grpo.grpo_loss(leaf, targets, mask, rewards, 2, agg="dr_grpo", backend=backend)
    loss.backward()
    adv = grpo.group_advantages(rewards, 2)[:, None].double()
    w = mask.double() / mask.numel()
    assert loss.item() == pytest.approx(-(w * adv).sum().item(), abs=1e-7)
    assert stats["kl"].item() == 0 and stats["clip_frac"].item() == 0
    ref_leaf = logits.double().requires_grad_()
    (-(w * adv * reference.token_logprobs(ref_leaf, targets))).sum().backward()
    torch.testing.assert_close(leaf.grad.double(), ref_leaf.grad, atol=1e-7, rtol=1e-5)
    assert leaf.grad[2:].eq(0).all()  # the group whose rewards are all equal teaches nothing


@pytest.mark.parametrize("backend", BACKENDS)
def test_grpo_padding_and_extreme_logits_give_no_nan(backend):
    logits, targets, mask, rewards, _, _ = grpo_case(2, 3, 64, torch.float32, seed=41)
    extreme = torch.where(logits > 0, 1e4, -1e4)
    logp = reference.token_logprobs(extreme, targets, 0.5)
    garbage = torch.full_like(logp, float("nan"))  # what padding may hold: it must not leak into the result
    runs = {}
    for name, m, old, ref in [("clean", mask, logp + 0.1, logp - 0.1),
                              ("garbage", mask, torch.where(mask, logp + 0.1, garbage), torch.where(mask, logp - 0.1, garbage)),
                              ("all padding", torch.zeros_like(mask), garbage, garbage)]:
        leaf = extreme.clone().requires_grad_()
        loss, stats = grpo.grpo_loss(leaf, targets, m, rewards, 2, logp_old=old, logp_ref=ref, beta=0.1,
                                     temperature=0.5, backend=backend)
        loss.backward()
        assert torch.isfinite(loss) and torch.isfinite(leaf.grad).all(), name
        assert all(torch.isfinite(v) for v in stats.values()), name
        runs[name] = loss, leaf.grad
    torch.testing.assert_close(runs["garbage"], runs["clean"], atol=0, rtol=0)
    assert runs["all padding"][0].item() == 0 and runs["all padding"][1].eq(0).all()


def test_fused_grpo_loss_per_token_outputs_match_grpo_py():
    """kl and clipped [N, T], which grpo.py averages into its stats, token by token against the
    loss as grpo.py writes it out (float64), and the loss as the weighted sum of per-token terms."""
    logits, targets, mask, rewards, logp_old, logp_ref = grpo_case(4, 5, 300, torch.float32, seed=61)
    eps_low, eps_high, beta = 0.2, 0.28, 0.05
    adv = grpo.group_advantages(rewards, 2)  # [N]
    weights = grpo.aggregation_weights(mask, "dapo")  # [N, T]
    loss, kl, clipped = kernels.fused_grpo_loss(logits, targets, adv, weights, logp_old, logp_ref, eps_low, eps_high,
                                                beta, 0.9)
    assert kl.shape == clipped.shape == (4, 5) and kl.dtype == clipped.dtype == torch.float32
    logp = reference.token_logprobs(logits.double(), targets, 0.9)  # [N, T]
    ratio = torch.exp(logp - logp_old.double())
    A = adv.double()[:, None]
    surrogate, surrogate_clipped = ratio * A, ratio.clamp(1 - eps_low, 1 + eps_high) * A
    d = logp_ref.double() - logp
    ref_kl = torch.exp(d) - d - 1
    torch.testing.assert_close(kl.double(), ref_kl, atol=1e-6, rtol=1e-5)
    assert torch.equal(clipped, (surrogate_clipped < surrogate).float())
    per_token = -torch.minimum(surrogate, surrogate_clipped) + beta * ref_kl
    torch.testing.assert_close(loss.double(), (weights.double() * per_token).sum(), atol=1e-6, rtol=1e-5)
    on_policy, kl0, _ = kernels.fused_grpo_loss(logits, targets, adv, weights, None, None, eps_low, eps_high, 0.0)
    assert kl0.eq(0).all()  # no logp_ref: no KL term
    assert on_policy.item() == pytest.approx(-(weights * adv[:, None]).sum().item(), abs=1e-7)  # ratio 1


def test_bad_inputs_raise_clear_errors():
    logits = make_logits((2, 3, 10), torch.float32, seed=51)
    targets = make_targets((2, 3), 10, seed=52)
    with pytest.raises(ValueError, match=r"targets must lie in \[0, 10\)"):
        kernels.token_logprobs(logits, targets + 10)
    with pytest.raises(ValueError, match="targets must be long with shape"):
        kernels.token_logprobs(logits, targets[:, :2])
    with pytest.raises(ValueError, match="temperature must be > 0"):
        kernels.token_logprobs(logits, targets, temperature=0.0)
    with pytest.raises(ValueError, match="backend must be one of"):
        kernels.token_logprobs(logits, targets, backend="cuda")
    adv, weights = torch.zeros(2), torch.ones(2, 3)
    with pytest.raises(ValueError, match="logits must be a floating tensor of 3-D"):
        kernels.fused_grpo_loss(logits[0], targets[0], adv, weights[0], None, None, 0.2, 0.2, 0.0)
    with pytest.raises(ValueError, match=r"advantages must have shape \[N\] = \(2,\)"):
        kernels.fused_grpo_loss(logits, targets, torch.zeros(3), weights, None, None, 0.2, 0.2, 0.0)
    with pytest.raises(ValueError, match=r"weights must have shape \[N, T\] = \(2, 3\)"):
        kernels.fused_grpo_loss(logits, targets, adv, weights[:, :2], None, None, 0.2, 0.2, 0.0)
    with pytest.raises(ValueError, match="beta = 0.1 > 0 needs logp_ref"):
        kernels.fused_grpo_loss(logits, targets, adv, weights, None, None, 0.2, 0.2, 0.1)
    with pytest.raises(ValueError, match="need 0 <= eps_low < 1"):
        kernels.fused_grpo_loss(logits, targets, adv, weights, None, None, 1.0, 0.2, 0.0)


def inplace_case(seed):
    """Awkward shapes for the in-place tests: T = 5 and V = 997 (neither a power of two), 2 of 3
    sequences with extreme logits, one fully masked (zero-weight) row."""
    logits = make_logits((3, 5, 997), torch.float32, seed)
    logits[2] = torch.where(logits[2] > 0, 1e4, -1e4)
    targets = make_targets((3, 5), 997, seed + 1)
    weights = make_logits((3, 5), torch.float32, seed + 2, scale=1.0)
    weights[1] = 0
    return logits, targets, weights


def backward_of(fn, logits, weights):
    """(leaf after backward, its gradient) of sum(weights * fn(leaf)), leaf a copy of logits."""
    leaf = logits.clone().requires_grad_()
    (fn(leaf) * weights).sum().backward()
    return leaf.detach(), leaf.grad


@pytest.mark.parametrize("backend", BACKENDS)
def test_default_backward_leaves_logits_untouched(backend, monkeypatch):
    monkeypatch.setattr(logprob, "CHUNK_ELEMENTS", 3 * 997)
    logits, targets, weights = inplace_case(seed=71)
    after, grad = backward_of(lambda x: kernels.token_logprobs(x, targets, 0.7, backend=backend), logits, weights)
    assert torch.equal(after, logits) and grad.data_ptr() != after.data_ptr()
    mask = weights != 0
    rewards = torch.tensor([1.0, 0.0, 0.5])
    leaf = logits.clone().requires_grad_()  # grpo_loss: fused_grpo_loss on "triton"
    grpo.grpo_loss(leaf, targets, mask, rewards, 3, backend=backend)[0].backward()
    assert torch.equal(leaf.detach(), logits)


@pytest.mark.parametrize("backend", BACKENDS)
def test_inplace_backward_writes_the_gradient_into_the_logits(backend, monkeypatch):
    monkeypatch.setattr(logprob, "CHUNK_ELEMENTS", 3 * 997)  # chunks of 3 rows across T = 5
    logits, targets, weights = inplace_case(seed=81)
    ref_grad = backward_of(lambda x: reference.token_logprobs(x, targets, 0.7), logits.double(), weights.double())[1]
    default = backward_of(lambda x: kernels.token_logprobs(x, targets, 0.7, backend=backend), logits, weights)[1]
    after, grad = backward_of(lambda x: kernels.token_logprobs(x, targets, 0.7, backend=backend,
                                                               inplace_backward=True), logits, weights)
    torch.testing.assert_close(grad.double(), ref_grad, atol=1e-3, rtol=1e-3)  # extreme rows: see above
    torch.testing.assert_close(grad, default, atol=0, rtol=0)  # the same arithmetic, another buffer
    assert grad[1].eq(0).all() and torch.isfinite(grad).all()
    if grad.data_ptr() == after.data_ptr():  # the engine handed the buffer through to .grad
        assert grad.untyped_storage().data_ptr() == after.untyped_storage().data_ptr()
    else:  # it copied: the logits must still hold the gradient
        assert torch.equal(after, grad)

    # fp16: the logits hold their own gradient in fp16, as the fresh buffer does
    half = logits.half()
    after, grad = backward_of(lambda x: kernels.token_logprobs(x, targets, backend=backend, inplace_backward=True),
                              half, weights)
    default = backward_of(lambda x: kernels.token_logprobs(x, targets, backend=backend), half, weights)[1]
    assert grad.dtype == torch.float16 and torch.equal(grad, default) and torch.equal(after, grad)


@pytest.mark.parametrize("backend", BACKENDS)
def test_inplace_backward_on_strided_logits_and_a_second_backward(backend):
    V = 37
    targets = make_targets((2, 4), V, seed=92)
    fn = lambda x, **kw: kernels.token_logprobs(x, targets, 0.9, backend=backend, **kw)  # noqa: E731
    # stride over V != 1: the kernels read (and overwrite) a private contiguous copy; the caller's
    # logits stay as they were
    base = make_logits((V, 2, 4), torch.float32, seed=93).requires_grad_()
    fn(base.permute(1, 2, 0), inplace_backward=True).sum().backward()
    expected = backward_of(lambda x: fn(x.permute(1, 2, 0)), base.detach(), torch.ones(2, 4))[1]
    assert torch.equal(base.grad, expected) and torch.equal(base.detach(), make_logits((V, 2, 4), torch.float32, 93))
    # the shifted next-token slice: correct gradient either way ("torch" writes into the slice,
    # "triton" needs contiguous rows and falls back to a fresh buffer)
    full = make_logits((2, 5, V), torch.float32, seed=94)
    leaf = full.clone().requires_grad_()
    fn(leaf[:, :-1], inplace_backward=True).sum().backward()
    expected = backward_of(lambda x: fn(x[:, :-1]), full, torch.ones(2, 4))[1]
    assert torch.equal(leaf.grad, expected)
    # backward overwrote what a second backward would read: autograd refuses instead of using it
    leaf = full.clone().requires_grad_()
    logp = kernels.token_logprobs(leaf, make_targets((2, 5), V, seed=95), backend=backend, inplace_backward=True)
    logp.sum().backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        logp.sum().backward()


def test_fused_grpo_loss_inplace_backward_matches_default(monkeypatch):
    logits, targets, mask, rewards, _, _ = grpo_case(4, 5, 997, torch.float32, seed=101)
    logits[3] = torch.where(logits[3] > 0, 1e4, -1e4)
    logp = reference.token_logprobs(logits, targets, 0.9)  # old and reference policies near the current one
    logp_old, logp_ref = logp + 0.1, logp - 0.1
    runs = {}
    for inplace in (False, True):
        leaf = logits.clone().requires_grad_()
        loss, _ = grpo.grpo_loss(leaf, targets, mask, rewards, 2, logp_old, logp_ref, beta=0.05, temperature=0.9,
                                 backend="triton", inplace_backward=inplace)
        loss.backward()
        runs[inplace] = leaf.detach(), leaf.grad
    assert torch.equal(runs[False][0], logits)
    after, grad = runs[True]
    torch.testing.assert_close(grad, runs[False][1], atol=0, rtol=0)
    assert torch.equal(after, grad) and grad[1].eq(0).all()
