"""`nanobias sweep` from conftest's shared smoke run (smoke_run, read only): equal budgets, the outputs,
resuming, new seeds, the base run's numbers at the base's value, and bad input as one-line errors."""

import json
import shutil
import subprocess
import sys

import pytest
from conftest import CLI_ENV

from nanobias.cli import main


def listing(folder):
    """Every file under `folder` with its size and modification time: what a sweep must leave alone."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(folder.rglob("*"))}


def stage_result(folder, name):
    return json.loads((folder / "stages" / f"{name}.json").read_text())["result"]


@pytest.fixture(scope="module")
def group_sweep(smoke_run, tmp_path_factory):
    """`nanobias sweep rl.group_size=2,4 --seeds 1` from the smoke run: (base listing before, out, printed)."""
    before = listing(smoke_run)
    out = tmp_path_factory.mktemp("sweep") / "G"
    printed = run_cli(["sweep", "rl.group_size=2,4", "--base", str(smoke_run), "--seeds", "1", "--out", str(out)])
    return before, out, printed


def run_cli(argv) -> str:
    """`nanobias ARGV` as a user runs it (a subprocess with CLI_ENV, as the base run was made): -> its stdout."""
    proc = subprocess.run([sys.executable, "-m", "nanobias", *argv], env=CLI_ENV, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, (proc.stdout[-2000:], proc.stderr[-2000:])
    return proc.stdout


def test_a_group_size_sweep_spends_equal_calls_and_writes_its_outputs(group_sweep, smoke_run):
    before, out, printed = group_sweep
    assert listing(smoke_run) == before  # the base run is read, never written
    sweep = json.loads((out / "sweep.json").read_text())
    assert sweep["labels"] == ["2", "4"] and sweep["methods"] == ["grpo"] and sweep["seeds"] == [0]
    budgets = [sweep["runs"][v]["budget"] for v in ("2", "4")]
    assert [(b["prompts_per_step"], b["group_size"]) for b in budgets] == [(8, 2), (4, 4)]
    assert budgets[0]["reward_model_calls"] == budgets[1]["reward_model_calls"]
    for v, b in zip(("2", "4"), budgets):  # the trainer ran with that budget: its steps' reward batches
        history = stage_result(out / f"rl.group_size={v}", "grpo")["history"]
        assert len(history) == b["steps"]
    report = (out / "sweep.md").read_text()
    assert "| 2 | grpo |" in report and "| 4 | grpo |" in report and "Equal reward-model calls" in report
    assert (out / "sweep.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "rl.group_size=2" / "grpo.pt").is_file() and not (out / "rl.group_size=2" / "ppo.pt").exists()
    runs = [sweep["runs"][v]["methods"]["grpo"] for v in ("2", "4")]
    assert runs[0]["stability_seeds"] != runs[1]["stability_seeds"]
    assert [r["policy_seeds"][0]["n"] for r in runs] == [r["policy"]["n"] for r in runs]


def test_the_base_value_reproduces_the_base_run(group_sweep, smoke_run):
    """G = 4 is the smoke preset's: same policy, reward model, seed and code -> the base run's GRPO exactly."""
    _, out, _ = group_sweep
    sweep = json.loads((out / "sweep.json").read_text())
    results = json.loads((smoke_run / "results.json").read_text())
    assert sweep["runs"]["4"]["methods"]["grpo"]["policy_seeds"] == results["policy_seeds"]["grpo"]
    assert sweep["runs"]["4"]["methods"]["grpo"]["stability_seeds"] == results["stability_seeds"]["grpo"]
    assert stage_result(out / "rl.group_size=4", "grpo") == stage_result(smoke_run, "grpo")


def test_a_rerun_skips_every_stage_and_more_seeds_train_only_the_new_one(group_sweep, smoke_run, tmp_path):
    before, out, _ = group_sweep
    copy = tmp_path / "G"
    shutil.copytree(out, copy)
    argv = ["sweep", "rl.group_size=2,4", "--base", str(smoke_run), "--out", str(copy)]
    printed = run_cli([*argv, "--seeds", "1"])
    assert "start" not in printed and printed.count("already done") == 4  # 2 values x (grpo, eval-grpo)
    printed = run_cli([*argv, "--seeds", "2"])
    assert "[grpo] start" not in printed and printed.count("[grpo@seed-1] start") == 2
    assert printed.count("[eval-grpo@seed-1] start") == 2 and "[eval-grpo] start" not in printed
    sweep = json.loads((copy / "sweep.json").read_text())
    assert sweep["seeds"] == [0, 1] and len(sweep["runs"]["2"]["methods"]["grpo"]["policy_seeds"]) == 2
    assert "± " in (copy / "sweep.md").read_text() and listing(smoke_run) == before


def test_a_reward_key_trains_a_reward_model_per_value(smoke_run, tmp_path):
    before = listing(smoke_run)
    out = tmp_path / "lr"
    run_cli(["sweep", "reward.lr=1e-3,3e-3", "--base", str(smoke_run), "--out", str(out), "--methods", "grpo"])
    assert listing(smoke_run) == before
    sweep = json.loads((out / "sweep.json").read_text())
    assert sweep["labels"] == ["0.001", "0.003"] and sweep["stages"][:3] == ["reward", "intervene", "reward_eval"]
    rewards = [(out / f"reward.lr={v}" / "reward.pt").read_bytes() for v in ("0.001", "0.003")]
    assert rewards[0] != rewards[1]
    # 1e-3 is the smoke preset's: the same reward model as the base run's, by the same code and seed
    assert json.loads((out / "reward.lr=0.001" / "reward_eval.json").read_text())["base"] == \
        json.loads((smoke_run / "reward_eval.json").read_text())["base"]
    assert "Reward model" in (out / "sweep.md").read_text()


@pytest.mark.parametrize("argv, expected", [
    (["pretrain.steps=10,20"], "sweep pretrain.steps: a sweep starts from --base's policy"),
    (["model.n_layer=1,2"], "sweep model.n_layer: a sweep starts from --base's policy"),
    (["grpo.nope=1,2"], "sweep 'grpo.nope=1': expected KEY=VALUE"),
    (["rl.group_size=4,x"], "sweep 'rl.group_size=x': rl.group_size takes a int"),
    (["rl.group_size=4,5"], "sweep rl.group_size=5: the base run's B*G = 16 reward-model calls"),
    (["rl.group_size="], "sweep 'rl.group_size=': expected KEY=V1,V2,..."),
    (["rl.group_size=4,4"], "a value is given twice"),
    (["grpo.beta=0.1", "--methods", "grpo,sft"], "--methods grpo,sft: expected names from"),
])
def test_bad_input_is_one_line_naming_the_flag(smoke_run, tmp_path, capsys, argv, expected):
    with pytest.raises(SystemExit) as e:
        main(["sweep", *argv, "--base", str(smoke_run), "--out", str(tmp_path / "out")])
    assert expected in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "out").exists()


def test_a_missing_or_unfinished_base_is_refused(smoke_run, tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "unfinished").mkdir()
    shutil.copyfile(smoke_run / "identity.json", tmp_path / "unfinished" / "identity.json")  # no stage markers
    for base, expected in (("nothing", "no such folder"), ("empty", "no identity.json (expected"),
                           ("unfinished", "its pretrain stage has not finished")):
        with pytest.raises(SystemExit) as e:
            main(["sweep", "grpo.beta=0.1", "--base", str(tmp_path / base), "--out", str(tmp_path / "out")])
        assert f"--base {tmp_path / base}: {expected}" in str(e.value), str(e.value)
    with pytest.raises(SystemExit) as e:
        main(["sweep", "grpo.beta=0.1", "--base", str(smoke_run), "--out", str(smoke_run / "sweep")])
    assert "--out" in str(e.value) and "the base run is only read" in str(e.value)
    assert not (tmp_path / "out").exists() and not (smoke_run / "sweep").exists()
