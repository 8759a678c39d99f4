"""`nanobias reproduce` on conftest's shared smoke run (smoke_run): the results contract, the report
and plots, and what a re-run in this process does (on a copy of the folder)."""

import json
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
from conftest import CLI_ENV, SMOKE_REPRODUCE

from nanobias.cli import main
from nanobias.reproduce import POLICIES, RL_METHODS
from nanobias.stages import flat

METRICS = {"acc_ambig", "acc_disambig", "s_amb", "s_dis", "invalid_rate", "mean_len", "heldout", "per_category"}


def test_reproduce_writes_the_results_contract_report_and_plots(smoke_run):
    results = json.loads((smoke_run / "results.json").read_text())
    assert results["preset"] == "smoke" and results["data"] == "synthetic" and results["seed"] == 0
    assert results["seeds"] == [0] and set(POLICIES) <= set(results["policy"])
    for name in POLICIES:  # one seed: the mean is that seed's numbers, the std 0
        assert results["policy_seeds"][name] == [results["policy"][name]], name
        assert set(flat(results["policy_std"][name]).values()) == {0.0}, name
    for name in ("grpo", "ppo", "dpo"):
        assert results["stability_seeds"][name] == [results["stability"][name]]
        assert results["stability_std"][name] == {"reward_fluctuation": 0.0, "final_reward_mean": 0.0}
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
    tables, claims = report.split("## The papers' claims at this scale")  # claims: a - b ± its standard error
    assert "±" not in tables and "RL seeds" not in report and claims.count("| BiasGRPO |") >= 4
    assert "Multiple-choice scoring (log-likelihood of each option)" in report and "| grpo_cirm | norm |" in report
    for png in ("reward_curves", "policy_metrics", "completion_length", "neurons_per_layer",
                "reward_biased_unbiased"):
        assert (smoke_run / f"{png}.png").read_bytes()[:4] == b"\x89PNG", png
    assert not list(smoke_run.glob("**/*.tmp"))


def test_reproduce_writes_budget_curves_of_every_method(smoke_run):
    """results.json "curves": per RL method one curve per seed, at the smoke preset's evenly spaced steps, on
    reward-model calls; every curve starts from the one base policy on the same prompts (curves.py)."""
    from nanobias.curves import curve_path, curve_steps
    from nanobias.presets import get_preset

    results = json.loads((smoke_run / "results.json").read_text())
    rl_cfg = get_preset("smoke").rl
    steps = curve_steps(rl_cfg.steps, rl_cfg.eval_points)
    assert list(results["curves"]) == list(RL_METHODS) and len(steps) == rl_cfg.eval_points == 3
    for name, runs in results["curves"].items():
        assert len(runs) == len(results["seeds"]) == 1, name
        assert [p["step"] for p in runs[0]] == steps and [p["calls"] for p in runs[0]] == [
            s * rl_cfg.prompts_per_step * rl_cfg.group_size for s in steps], name
        assert runs[0][0] == results["curves"]["dpo"][0][0], name  # step 0: the base policy, the same prompts
        assert json.loads(curve_path(smoke_run / f"{name}.pt").read_text()) == runs[0], name
    assert (smoke_run / "budget_curves.png").read_bytes()[:4] == b"\x89PNG"
    report = (smoke_run / "report.md").read_text()
    assert "## Budget curves" in report and "![budget curves](budget_curves.png)" in report
    assert "| method | " + " | ".join(str(p["calls"]) for p in results["curves"]["grpo"][0]) + " |" in report


def test_a_rerun_skips_finished_stages(smoke_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(smoke_run, run)  # copy2: modification times kept
    before = (run / "grpo.pt").stat().st_mtime_ns
    main([*SMOKE_REPRODUCE, "--out", str(run)])
    printed = capsys.readouterr().out
    # pretrain .. reward_eval, annotate, the eight RL stages (two of them copies), eval
    assert printed.count("already done") == 14 and "[grpo] start" not in printed
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


def test_held_out_categories_get_both_tables_and_a_report_without_them_none(smoke_run, tmp_path):
    from nanobias.report import write_report

    held_out = (smoke_run / "report.md").read_text().split("Held-out categories (SES), never trained on:")[1]
    assert held_out.count("| grpo_cirm | norm |") == 2  # the held-out multiple-choice table, then the test one's
    results = json.loads((smoke_run / "results.json").read_text())
    stages = {name: json.loads((smoke_run / "stages" / f"{name}.json").read_text())["result"]
              for name in (*POLICIES[1:], "eval")}
    for metrics in (*results["policy"].values(), *stages["eval"].values()):
        metrics["heldout"] = {}
    results["eval_categories"] = []
    write_report(tmp_path, results, {name: [stages[name]["history"]] for name in POLICIES[1:]}, stages["eval"])
    report = (tmp_path / "report.md").read_text()
    assert "Held-out categories" not in report and "| grpo_cirm |" in report
    assert report.count("| grpo_cirm | norm |") == 1


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


def test_more_seeds_on_two_workers_keep_seed_0_and_the_results_of_one_process(smoke_run, tmp_path):
    """The shared smoke run re-run with --seeds 2 on two single-thread workers (--threads 2): the base
    stages and a finished RL stage are skipped (seeds is not part of the identity); seed 0's RL stages,
    redone on workers, compute what this process computed at one thread; results.json keeps the mean
    and sample std over both seeds and each seed's numbers."""
    run = tmp_path / "run"
    shutil.copytree(smoke_run, run)
    for stage in ("grpo", "dpo", "ppo", "eval"):  # grpo_cirm's marker stays: a finished stage of seed 0
        (run / "stages" / f"{stage}.json").unlink()
    # as a user runs it: without the tests' TRITON_INTERPRET, which the workers would inherit
    printed = subprocess.run([sys.executable, "-m", "nanobias", *SMOKE_REPRODUCE, "--out", str(run), "--threads", "2",
                              "--seeds", "2"], env=CLI_ENV, check=True, capture_output=True, text=True,
                             timeout=900).stdout
    for stage in ("pretrain", "reward", "intervene", "reward_eval", "grpo_cirm"):
        assert f"[{stage}] already done" in printed, stage
    for stage in ("grpo", "dpo", "ppo", "eval", *(f"{s}@seed-1" for s in ("grpo", "grpo_cirm", "dpo", "ppo", "eval"))):
        assert f"[{stage}] start" in printed, stage
    assert (run / "seed-1" / "grpo_cirm.pt").read_bytes() == (run / "seed-1" / "grpo.pt").read_bytes()
    assert (run / "seed-1" / "grpo.pt").read_bytes() != (run / "grpo.pt").read_bytes()
    one, two = (json.loads((folder / "results.json").read_text()) for folder in (smoke_run, run))
    assert one["threads"] == {"training": 1, "workers": 1} and two["threads"]["workers"] == 2
    assert two["seeds"] == [0, 1] and two["identity"] == one["identity"]
    assert two["policy"]["base"] == one["policy"]["base"] and two["policy_seeds"]["base"] == [one["policy"]["base"]]
    for name in POLICIES[1:]:
        seeds = two["policy_seeds"][name]
        assert len(seeds) == 2 and seeds[0] == one["policy"][name], name
        mean, std = flat(two["policy"][name]), flat(two["policy_std"][name])
        for key, value in flat(seeds[1]).items():
            both = [flat(seeds[0])[key], value]
            assert mean[key] == pytest.approx(np.mean(both)) and std[key] == pytest.approx(np.std(both, ddof=1)), key
    for name in ("grpo", "ppo", "dpo"):
        assert two["stability_seeds"][name][0] == one["stability"][name]
        runs = [s["final_reward_mean"] for s in two["stability_seeds"][name]]
        assert two["stability_std"][name]["final_reward_mean"] == pytest.approx(np.std(runs, ddof=1))
    assert all(len(runs) == 2 and runs[0] == one["curves"][name][0] for name, runs in two["curves"].items())
    report = (run / "report.md").read_text()
    assert "mean ± std over 2 RL seeds (0, 1)" in report and re.search(r"\| grpo \| -?\d\.\d{3} ± \d\.\d{3} \|", report)
    assert re.search(r"\| base \| -?\d\.\d{3} \|", report)  # evaluated once: no std
