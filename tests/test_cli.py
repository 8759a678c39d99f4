"""The command line: flags are checked before any work, overrides reach the run, and the
evaluation command prints and writes what it says (the fault cases are in test_faults.py)."""

import json

import pytest

from nanobias.checkpoint import load_policy
from nanobias.cli import main
from nanobias.presets import get_preset
from nanobias.world import CATEGORIES

CATS = CATEGORIES[:2]


def test_cli_checks_flags_before_work(smoke_policy, tmp_path, capsys):
    _, _, policy = smoke_policy
    with pytest.raises(SystemExit):
        main(["grpo", "--policy", str(policy), "--oracle-reward", "--intervention", str(policy),
              "--out", str(tmp_path)])
    assert "--intervention edits a reward model" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["grpo", "--policy", str(tmp_path / "missing.pt"), "--oracle-reward", "--out", str(tmp_path)])
    assert "no such file" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # a reward is required, and only one
        main(["grpo", "--policy", str(policy), "--out", str(tmp_path)])
    for flag, value, said in (("--scale", "std", ["--scale std:", "group", "batch", "none"]),
                              ("--agg", "mean", ["--agg mean:", "grpo", "dapo", "dr_grpo"]),
                              ("--beta", "-0.1", ["--beta", "expected a number >= 0"])):
        with pytest.raises(SystemExit):
            main(["grpo", "--policy", str(policy), "--oracle-reward", flag, value, "--out", str(tmp_path)])
        err = capsys.readouterr().err
        assert all(s in err for s in said), (said, err)
    assert not list(tmp_path.iterdir())


def test_cli_grpo_overrides_reach_the_run(smoke_policy, tmp_path):
    _, _, policy = smoke_policy
    main(["grpo", "--preset", "smoke", "--policy", str(policy), "--oracle-reward", "--train-categories", ",".join(CATS),
          "--beta", "0", "--lr", "5e-4", "--scale", "none", "--agg", "dr_grpo", "--eval-examples", "4",
          "--backend", "torch", "--out", str(tmp_path)])
    meta = load_policy(tmp_path / "grpo_oracle.pt")[2]
    assert (meta["grpo_config"]["beta"], meta["grpo_config"]["lr"]) == (0.0, 5e-4)
    assert (meta["grpo_config"]["scale"], meta["grpo_config"]["agg"]) == ("none", "dr_grpo")
    assert json.loads((tmp_path / "grpo_oracle.json").read_text())["history"][-1]["lr"] == pytest.approx(5e-4)


def test_cli_eval_prints_the_table_and_writes_json(smoke_policy, tmp_path, capsys):
    _, _, policy = smoke_policy
    main(["eval", "--preset", "smoke", "--policy", str(policy), "--train-categories", ",".join(CATS),
          "--eval-examples", "4", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert "| policy (test) |" in out and "| policy (test) | norm |" in out and "Multiple-choice scoring" in out
    metrics = json.loads((tmp_path / "policy.eval.json").read_text())
    assert metrics["n"] == 4 and 0 <= metrics["acc_ambig"] <= 1
    assert metrics["choice"]["raw"]["n"] == metrics["choice"]["norm"]["n"] == 4


def test_cli_eval_defaults_to_the_presets_prompt_count(smoke_policy, tmp_path):
    _, _, policy = smoke_policy  # the smoke world's test split has 72 prompts, the preset evaluates 64
    main(["eval", "--preset", "smoke", "--policy", str(policy), "--out", str(tmp_path)])
    assert json.loads((tmp_path / "policy.eval.json").read_text())["n"] == get_preset("smoke").eval_examples == 32


def test_cli_ppo_needs_a_reward_and_dpo_rejects_an_unknown_loss(smoke_policy, tmp_path, capsys):
    _, _, ckpt = smoke_policy
    with pytest.raises(SystemExit):
        main(["ppo", "--preset", "smoke", "--policy", str(ckpt), "--out", str(tmp_path)])
    assert "--reward" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["dpo", "--preset", "smoke", "--policy", str(ckpt), "--out", str(tmp_path), "--oracle-reward",
              "--loss", "kto"])
    assert "--loss" in capsys.readouterr().err


def test_a_usage_error_comes_before_torch_is_imported():
    import subprocess
    import sys

    code = ("import sys\nfrom nanobias.cli import main\ntry:\n    main(['grpo', '--seed', '-1'])\n"
            "except SystemExit:\n    pass\nprint('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "False" and "--seed" in out.stderr, (out.stdout, out.stderr)
