"""nanobias.kernels.dispatch: which backend serves a call, Triton as an optional dependency, and
the package's place (`nanobias.kernels`; nothing named `kernels` at the top level)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import nanobias.kernels as kernels
from nanobias.kernels import dispatch

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.usefixtures("poison_outputs")


def test_auto_resolves_to_triton_only_where_it_can_run(monkeypatch):
    assert dispatch.resolve_backend("auto", torch.device("cpu"), "op") == "triton"  # conftest: interpreted
    assert dispatch.resolve_backend("reference", torch.device("cpu"), "op") == "reference"
    with pytest.raises(ValueError, match="op: backend must be one of"):
        dispatch.resolve_backend("cuda", torch.device("cpu"), "op")
    monkeypatch.setattr(dispatch, "triton_interpreted", lambda: False)
    assert dispatch.resolve_backend("auto", torch.device("cpu"), "op") == "torch"
    logits, targets = torch.randn(2, 3, 10), torch.zeros(2, 3, dtype=torch.long)
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        kernels.token_logprobs(logits, targets, backend="triton")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        kernels.fused_grpo_loss(logits, targets, torch.zeros(2), torch.ones(2, 3), None, None, 0.2, 0.2, 0.0)


def test_poisoned_outputs_are_nan():
    """The `poison_outputs` fixture the kernel tests rely on really fills new buffers with NaN."""
    assert dispatch.empty_output((2, 3), torch.float32, torch.device("cpu")).isnan().all()


def test_kernels_import_and_run_without_triton():
    """Triton is optional off Linux: with it unimportable, "auto" falls back to the torch path."""
    script = (
        "import sys; sys.modules['triton'] = None\n"  # makes `import triton` raise ImportError
        "import torch\n"
        "from nanobias import grpo, kernels\n"
        "from nanobias.kernels import dispatch\n"
        "assert not dispatch.HAVE_TRITON\n"
        "logits, targets = torch.randn(2, 3, 5), torch.zeros(2, 3, dtype=torch.long)\n"
        "ref = torch.log_softmax(logits, -1)[..., 0]\n"
        "assert torch.allclose(kernels.token_logprobs(logits, targets), ref)\n"
        "loss, _ = grpo.grpo_loss(logits, targets, torch.ones(2, 3), torch.tensor([0.0, 1.0]), 2)\n"
        "assert torch.isfinite(loss)\n"
        "try:\n"
        "    kernels.token_logprobs(logits, targets, backend='triton')\n"
        "except RuntimeError as e:\n"
        "    assert 'needs the triton package' in str(e)\n"
        "else:\n"
        "    raise AssertionError('backend=triton without triton did not raise')\n"
        "print('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-2000:]


def test_a_cpu_run_never_imports_triton_and_the_interpreter_can_still_be_chosen_later():
    """Triton costs ~0.3 s of every process's start, so a CPU run that does not interpret the kernels
    never imports it; TRITON_INTERPRET=1 set later still builds interpreted kernels on their first call."""
    script = (
        "import os, sys\n"
        "import torch\n"
        "from nanobias import kernels, reproduce, rl\n"
        "from nanobias.kernels import dispatch\n"
        "logits, targets = torch.randn(2, 3, 5), torch.zeros(2, 3, dtype=torch.long)\n"
        "ref = torch.log_softmax(logits, -1)[..., 0]\n"
        "assert torch.allclose(kernels.token_logprobs(logits, targets), ref)\n"
        "kernels.masked_gelu(torch.randn(2, 4), torch.tensor([True, False] * 2), torch.zeros(4))\n"
        "assert dispatch.HAVE_TRITON and 'triton' not in sys.modules, sorted(sys.modules)\n"
        "os.environ['TRITON_INTERPRET'] = '1'\n"
        "assert dispatch.resolve_backend('auto', torch.device('cpu'), 'op') == 'triton'\n"
        "assert torch.allclose(kernels.token_logprobs(logits, targets), ref)\n"
        "print('ok')\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-2000:]


def test_the_package_is_nanobias_kernels_and_does_not_import_the_trainer(tmp_path):
    """Run from a neutral folder, so that the repository root is not on sys.path: only the
    installed package is found. The old top-level name `kernels` must not import ours (Hugging
    Face's own `kernels` package, which the bench extra's transformers brings, may), and
    nanobias.kernels must not pull in nanobias.grpo (which imports it: that would be a cycle)."""
    script = (
        "import importlib, sys\n"
        "try:\n"
        "    found = importlib.import_module('kernels')\n"  # the package's old top-level name
        "except ImportError:\n"
        "    pass\n"
        "else:\n"
        "    assert not hasattr(found, 'fused_grpo_loss'), f'our kernels package is still importable: {found!r}'\n"
        "import nanobias.kernels\n"
        "assert callable(nanobias.kernels.fused_grpo_loss) and callable(nanobias.kernels.token_logprobs)\n"
        "assert 'nanobias.grpo' not in sys.modules\n"
        "print('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-2000:]
    assert not (REPO / "kernels").exists()
