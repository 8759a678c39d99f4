"""`nanobias reproduce` on conftest's shared smoke run (smoke_run): the results contract, the report
and plots, and what a re-run in this process does (on a copy of the folder)."""

import json
import shutil
import subprocess
import sys

import pytest
from conftest import CLI_ENV, SMOKE_REPRODUCE

from nanobias.cli import main
from nanobias.reproduce import POLICIES

METRICS = {"acc_ambig", "acc_disambig", "s_amb", "s_dis", "invalid_rate", "mean_len", "heldout", "per_category"}


def test_reproduce_writes_the_results_contract_report_and_plots(smoke_run):
    results = json.loads((smoke_run / "results.json").read_text())
    assert results["preset"] == "smoke" and results["data"] == "synthetic" and results["seed"] == 0
    assert set(POLICIES) <= set(results["policy"])
    for name in POLICIES:
        assert METRICS <= set(results["policy"][name]), name
        assert 0 <= results["policy"][name]["acc_ambig"] <= 1
        assert set(results["policy"][name]["heldout"]["per_category"]) == {"SES"}
        for where in (results["policy"][name], results["policy"][name]["heldout"]):
            assert set(where["choice"]) == {"raw", "norm"} and where["choice"]["norm"]["invalid_rate"] == 0
        assert "SES" not in results["policy"][name]["per_category"]
    for name in ("base", "cirm", "length_penalty", "lwr"):
        assert {"acc", "acc_biased", "acc_unbiased", "sensitivity"} <= set(results["reward_model"][name])
    assert {"edited", "total", "per_layer"} <= set(results["reward_model"]["neurons"])
    for name in ("grpo", "ppo", "dpo"):
        assert set(results["stability"][name]) == {"reward_fluctuation", "final_reward_mean"}
    assert {"pretrain", "reward", "grpo", "eval", "total"} <= set(results["seconds"])
    report = (smoke_run / "report.md").read_text()
    assert f"nanobias {' '.join(SMOKE_REPRODUCE)} --out {smoke_run}" in report and "| grpo_cirm |" in report
    assert "Multiple-choice scoring (log-likelihood of each option)" in report and "| grpo_cirm | norm |" in report
    for png in ("reward_curves", "policy_metrics", "completion_length", "neurons_per_layer",
                "reward_biased_unbiased"):
        assert (smoke_run / f"{png}.png").read_bytes()[:4] == b"\x89PNG", png
    assert not list(smoke_run.glob("**/*.tmp"))


def test_a_rerun_skips_finished_stages(smoke_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(smoke_run, run)  # copy2: modification times kept
    before = (run / "grpo.pt").stat().st_mtime_ns
    main([*SMOKE_REPRODUCE, "--out", str(run)])
    printed = capsys.readouterr().out
    assert printed.count("already done") == 9 and "[grpo] start" not in printed  # pretrain .. eval
    assert "[pretrain] already done" in printed
    assert (run / "grpo.pt").stat().st_mtime_ns == before


def test_an_empty_intervention_reuses_grpo_as_grpo_cirm(smoke_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(smoke_run, run)
    chosen = json.loads((run / "intervention.json").read_text())
    (run / "intervention.json").write_text(json.dumps({**chosen, "neurons": [], "medians": []}))
    (run / "stages" / "grpo_cirm.json").unlink()
    (run / "grpo_cirm.pt").unlink()
    main([*SMOKE_REPRODUCE, "--out", str(run)])
    assert "GRPO+CIRM is GRPO's run, copied" in capsys.readouterr().out
    assert (run / "grpo_cirm.pt").read_bytes() == (run / "grpo.pt").read_bytes()
    stage = {name: json.loads((run / "stages" / f"{name}.json").read_text())["result"] for name in ("grpo", "grpo_cirm")}
    assert stage["grpo_cirm"] == stage["grpo"]


def test_a_report_without_held_out_categories_has_no_held_out_table(smoke_run, tmp_path):
    from nanobias.report import write_report

    assert "Held-out categories (SES), never trained on:" in (smoke_run / "report.md").read_text()
    results = json.loads((smoke_run / "results.json").read_text())
    stages = {name: json.loads((smoke_run / "stages" / f"{name}.json").read_text())["result"]
              for name in (*POLICIES[1:], "eval")}
    for metrics in (*results["policy"].values(), *stages["eval"].values()):
        metrics["heldout"] = {}
    results["eval_categories"] = []
    write_report(tmp_path, results, {name: stages[name]["history"] for name in POLICIES[1:]}, stages["eval"])
    report = (tmp_path / "report.md").read_text()
    assert "Held-out categories" not in report and "| grpo_cirm |" in report and "| grpo_cirm | norm |" in report


@pytest.mark.parametrize("argv, message", [
    (["--eval-categories", "Astrology"], "unknown category 'Astrology'"),
    (["--data", "bbq"], "--data bbq needs --bbq-dir"),
    (["--preset", "huge"], "invalid choice"),
])
def test_bad_flags_are_rejected_before_any_work(argv, message, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["reproduce", "--out", str(tmp_path / "never"), *argv])
    assert message in capsys.readouterr().err
    assert not (tmp_path / "never").exists()


def test_training_seed_keeps_the_world_and_its_split():
    from nanobias.cli import build_parser
    from nanobias.flags import splits_from_args
    from nanobias.presets import get_preset

    def split_ids(seed):
        args = build_parser().parse_args(["grpo", "--policy", "p.pt", "--oracle-reward", "--out", "o", "--seed", seed])
        splits = splits_from_args(args, get_preset("smoke"))
        return [[(ex.category, ex.question_index, ex.context) for ex in part] for part in (splits.train, splits.test)]

    assert split_ids("0") == split_ids("3")


def test_rl_stages_on_two_workers_give_the_results_of_one_process(smoke_run, tmp_path):
    """The RL stages and evaluations as single-thread worker processes (--threads 2) compute what
    the same stages compute in this process at one thread (the shared smoke run's)."""
    run = tmp_path / "run"
    shutil.copytree(smoke_run, run)
    for stage in ("grpo", "grpo_cirm", "dpo", "ppo", "eval"):
        (run / "stages" / f"{stage}.json").unlink()
    # as a user runs it: without the tests' TRITON_INTERPRET, which the workers would inherit
    subprocess.run([sys.executable, "-m", "nanobias", *SMOKE_REPRODUCE, "--out", str(run), "--threads", "2"],
                   env=CLI_ENV, check=True, capture_output=True, timeout=900)
    one, two = (json.loads((folder / "results.json").read_text()) for folder in (smoke_run, run))
    assert one["threads"] == {"training": 1, "workers": 1} and two["threads"]["workers"] == 2
    assert two["policy"] == one["policy"] and two["stability"] == one["stability"]
