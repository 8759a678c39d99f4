"""`nanobias bench` on the smoke preset: every number it reports is there, positive and consistent
with the others. Nothing here asserts a speed."""

import json
import os
import subprocess
import sys
from itertools import groupby
from pathlib import Path

import pytest

from nanobias.bench import ROWS, bench_config, copy_argv, interleaved_rates, stage_times
from nanobias.bench_hf import INSTALL, hf_available, hf_model
from nanobias.cli import main
from nanobias.errors import UserError
from nanobias.model import GPT
from nanobias.presets import get_preset

REPO = Path(__file__).resolve().parents[1]


def test_rates_are_measured_in_turn():
    calls = []
    rates = interleaved_rates({"a": (lambda: calls.append("a"), 3), "b": (lambda: calls.append("b"), 5)}, seconds=0.0)
    assert "".join(calls) == "abab"  # a warm-up, then the one call each that a budget of 0 s allows
    assert rates["a"] > 0 and rates["b"] > 0
    calls.clear()
    interleaved_rates({"a": (lambda: calls.append("a"), 1), "b": (lambda: calls.append("b"), 1)}, seconds=0.05)
    assert "".join(k for k, _ in groupby(calls)) == "ab" * 6  # warm-up, then runs of a and b in each of 5 turns


def test_the_copies_get_the_same_arguments_but_their_own_output():
    argv = ["bench", "--preset", "smoke", "--json", "out.json", "--set", "model.n_layer=1", "--run=runs/x",
            "--no-compare", "--seconds", "2", "--run", "runs/y"]
    assert copy_argv(argv) == ["--preset", "smoke", "--set", "model.n_layer=1", "--seconds", "2"]


def test_bench_reports_rates_ratios_shares_and_stage_times(tmp_path, capsys):
    run = tmp_path / "run"
    (run / "stages").mkdir(parents=True)
    for stage, seconds in [("pretrain", 125.0), ("reward", 3.0)]:
        (run / "stages" / f"{stage}.json").write_text(json.dumps({"seconds": seconds, "result": {}, "identity": "x"}))
    out = tmp_path / "bench.json"
    main(["bench", "--preset", "smoke", "--seconds", "0.01", "--run", str(run), "--json", str(out)])
    printed = capsys.readouterr().out
    r = json.loads(out.read_text())
    assert r["preset"] == "smoke" and r["params_M"] > 0
    assert set(r["nanobias"]) == set(ROWS) and all(v > 0 for v in r["nanobias"].values())
    if hf_available():
        assert set(r["hf"]) == {"train_tok_s", "sample_tok_s_cache"} and all(v > 0 for v in r["hf"].values())
        for key, ratio in r["nanobias_over_hf"].items():
            assert abs(ratio - r["nanobias"][key] / r["hf"][key]) < 1e-9 * ratio
        assert "nanobias/HF" in printed
        config = bench_config(get_preset("smoke"))  # the same shape and architecture: as many parameters
        assert sum(p.numel() for p in hf_model(config, "cpu").parameters()) == sum(
            p.numel() for p in GPT(config).parameters())
    else:
        assert r["hf"] is None and INSTALL in printed
    assert len(r["two_at_once"]) == len(r["share_of_solo"]) == 2
    for copy, share in zip(r["two_at_once"], r["share_of_solo"]):
        assert set(copy) == set(share) == {"train_tok_s", "sample_tok_s_cache"}
        for key, rate in copy.items():
            assert rate > 0 and abs(share[key] - rate / r["nanobias"][key]) < 1e-9 * share[key]
    assert r["stages"] == {"pretrain": 125.0, "reward": 3.0}
    assert "two at once" in printed and "pretrain 2m05s" in printed and "summed 2m08s" in printed


def test_the_library_never_imports_transformers():
    code = ("import sys, nanobias.cli, nanobias.bench, nanobias.sampling, nanobias.reproduce; "
            "assert 'transformers' not in sys.modules")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, check=True, timeout=300)


def test_a_run_folder_without_stage_times_is_one_clear_error(tmp_path):
    with pytest.raises(UserError, match="no stages"):
        stage_times(tmp_path)
    (tmp_path / "stages").mkdir()
    (tmp_path / "stages" / "pretrain.json").write_text('{"result": {}}')
    with pytest.raises(UserError, match="pretrain.json has no"):
        stage_times(tmp_path)
