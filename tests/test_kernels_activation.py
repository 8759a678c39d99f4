"""nanobias.kernels.activation (masked_gelu): the "torch" and "triton" (interpreted) backends
against a float64 reference and the GELU formulas (exact and tanh) worked out by hand."""

import math

import pytest
import torch

import nanobias.kernels as kernels

BACKENDS = ["torch", "triton"]


pytestmark = pytest.mark.usefixtures("poison_outputs")


FORMS = ["tanh", "none"]


def gelu_by_hand(x: float, approximate: str) -> float:
    if approximate == "none":
        return 0.5 * x * (1 + math.erf(x / math.sqrt(2)))
    return 0.5 * x * (1 + math.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))


def make_case(shape, dtype, seed):
    g = torch.Generator(torch.get_default_device()).manual_seed(seed)
    H = shape[-1]
    x = (torch.randn(shape, generator=g, dtype=torch.float64) * 3).to(dtype)
    mask = torch.rand(H, generator=g) < 0.3
    value = torch.randn(H, generator=g)
    dout = torch.randn(shape, generator=g).to(dtype)
    return x, mask, value, dout


def run(x, mask, value, dout, backend, approximate="tanh"):
    leaf = x.detach().clone().requires_grad_()
    out = kernels.masked_gelu(leaf, mask, value, backend=backend, approximate=approximate)
    out.backward(dout)
    return out.detach(), leaf.grad


@pytest.mark.parametrize("approximate", FORMS)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("shape", [(1, 1), (2, 3), (3, 5, 50), (7, 1100)])
def test_masked_gelu_matches_float64_reference(backend, dtype, shape, approximate):
    x, mask, value, dout = make_case(shape, dtype, seed=shape[-1])
    out, grad = run(x, mask, value, dout, backend, approximate)
    ref_out, ref_grad = run(x.double(), mask, value.double(), dout.double(), "reference", approximate)
    tol = dict(atol=2e-3, rtol=2e-3) if dtype == torch.float16 else dict(atol=1e-5, rtol=1e-5)
    assert out.dtype == grad.dtype == dtype
    torch.testing.assert_close(out.double(), ref_out, **tol)
    torch.testing.assert_close(grad.double(), ref_grad, **tol)
    assert out[..., mask].eq(value[mask].to(dtype)).all()  # clamped neurons output exactly their value
    assert grad[..., mask].eq(0).all()  # and get exactly zero gradient


@pytest.mark.parametrize("approximate", FORMS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_plain_gelu_matches_hand_formula(backend, approximate):
    points = [-1e4, -30.0, -3.0, -0.5, 0.0, 0.5, 1.0, 3.0, 30.0, 1e4]
    x = torch.tensor(points).repeat(2, 1)
    out, grad = run(x, None, None, torch.ones_like(x), backend, approximate)
    assert out[0].tolist() == pytest.approx([gelu_by_hand(p, approximate) for p in points], rel=1e-5, abs=1e-6)
    h = 1e-4  # central difference of the hand formula in float64
    slopes = [(gelu_by_hand(p + h, approximate) - gelu_by_hand(p - h, approximate)) / (2 * h) for p in points]
    assert grad[0].tolist() == pytest.approx(slopes, rel=1e-4, abs=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_masked_gelu_on_the_models_last_position_slice(backend):
    """The reward model clamps only the last position: x = h[:, -1:] is not contiguous."""
    h, mask, value, _ = make_case((2, 4, 40), torch.float32, seed=1)
    x = h[:, -1:]
    out, grad = run(x, mask, value, torch.ones_like(x), backend)
    ref_out, ref_grad = run(x.double(), mask, value.double(), torch.ones_like(x).double(), "reference")
    assert out.shape == (2, 1, 40)
    torch.testing.assert_close(out.double(), ref_out, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(grad.double(), ref_grad, atol=1e-5, rtol=1e-5)


def test_bad_arguments_raise_clear_errors():
    x = torch.randn(2, 8)
    with pytest.raises(ValueError, match=r"mask must be bool of shape \[H\] = \(8,\)"):
        kernels.masked_gelu(x, torch.ones(8), torch.zeros(8))
    with pytest.raises(ValueError, match=r"mask must be bool of shape \[H\] = \(8,\)"):
        kernels.masked_gelu(x, torch.ones(7, dtype=torch.bool), torch.zeros(7))
    with pytest.raises(ValueError, match="value must have shape"):
        kernels.masked_gelu(x, torch.ones(8, dtype=torch.bool), None)
    with pytest.raises(ValueError, match="x must be a floating tensor"):
        kernels.masked_gelu(x.long(), None, None)
    with pytest.raises(ValueError, match="backend must be one of"):
        kernels.masked_gelu(x, None, None, backend="numpy")
    with pytest.raises(ValueError, match="approximate must be one of"):
        kernels.masked_gelu(x, None, None, approximate="erf")
