"""nanobias.kernels.bench runs on CPU: its command line, and its providers computing the same
values (what they are compared on must be one op; nothing here is timed)."""

import os
import subprocess
import sys
from pathlib import Path

import torch

from nanobias.kernels.bench import Case, make_inputs, providers

REPO = Path(__file__).resolve().parents[1]


def test_help_runs_on_cpu():
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}  # no GPU, whatever the machine has
    result = subprocess.run([sys.executable, "-m", "nanobias.kernels.bench", "--help"], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Benchmark the kernels against PyTorch" in result.stdout and "--quick" in result.stdout


def test_cpu_providers_agree():
    cpu = torch.device("cpu")
    for case in (Case("grpo_loss", (2, 3, 50), torch.float32), Case("masked_gelu", (4, 30), torch.float32)):
        fns = providers(case.op, cpu)
        assert "eager" in fns and "triton" not in fns  # the interpreter would time Python
        values = {name: fn(make_inputs(case, cpu)) for name, fn in fns.items()}
        for name, value in values.items():  # the exact GELU's providers against the exact GELU
            same = values["eager_exact" if name.endswith("_exact") else "eager"]
            torch.testing.assert_close(value, same, atol=1e-6, rtol=1e-5, msg=f"{case.op} {name}")
