"""`nanobias positions`: the learned-vs-rotary reward-model experiment, on a tiny smoke run."""

import json

import numpy as np
import pytest

from nanobias.cli import main
from nanobias.positions import cell, mean_std, summarise
from nanobias.render import ATTRIBUTES
from nanobias.reward_eval import METHODS

TINY = ["--preset", "smoke", "--set", "pretrain.steps=6", "--set", "eval_examples=8",
        "--set", "reward_eval.sensitivity_completions=4", "--threads", "1"]


def test_mean_std_is_the_sample_std_over_the_values_that_exist():
    assert mean_std([0.5]) == (0.5, 0.0, 1)
    mean, std, n = mean_std([1.0, None, 2.0, 4.0])
    assert n == 3 and mean == pytest.approx(7 / 3) and std == pytest.approx(np.std([1, 2, 4], ddof=1))
    assert mean_std([None]) == (None, None, 0)
    assert cell([0.25]) == "0.250" and cell([0.2, 0.4], "+.3f") == "+0.300 ± 0.141" and cell([]) == "-"


def fake_eval(sens_base, sens_cirm, from_position):
    def method(sens):
        return {"acc": 0.8, "acc_biased": {a: 0.9 for a in ATTRIBUTES}, "acc_unbiased": {a: 0.7 for a in ATTRIBUTES},
                "sensitivity": {a: sens if a == "length" else 0.0 for a in ATTRIBUTES}}
    out = {m: method(sens_base) for m in METHODS}
    out["cirm"] = out["all_neurons"] = method(sens_cirm)
    return {**out, "length_from_position": from_position, "neurons": {"edited": 8, "total": 2048}}


def test_summarise_splits_the_length_sensitivity_and_measures_the_cut():
    v = summarise([fake_eval(0.2, 0.05, 0.1), fake_eval(0.0, 0.0, 0.0)])
    assert v["base.sens.length"] == [0.2, 0.0]
    assert v["position_share"] == [pytest.approx(0.5), None]  # no sensitivity: no share to speak of
    assert v["cirm_cut"] == [pytest.approx(0.75), None] and v["all_neurons_cut"][0] == pytest.approx(0.75)
    assert v["neurons_edited"] == [8 / 2048] * 2


def test_positions_runs_both_schemes_and_a_rerun_adds_only_new_seeds(tmp_path, capsys):
    out = tmp_path / "pos"
    main(["positions", *TINY, "--seeds", "1", "--out", str(out)])
    results = json.loads((out / "positions.json").read_text())
    assert results["seeds"] == [0] and set(results["schemes"]) == {"learned", "rotary"}
    for scheme, r in results["schemes"].items():
        assert len(r["reward_eval"]) == 1 and {"acc_disambig", "biased_ambig"} <= set(r["policy"])
        assert (out / scheme / "policy.pt").is_file() and (out / scheme / "seed-0" / "reward_eval.json").is_file()
    # a rotary model sees relative positions only: nothing of its length sensitivity comes from positions
    assert results["schemes"]["rotary"]["summary"]["length_from_position"] == [0.0]
    report = (out / "positions.md").read_text()
    assert "| learned | base |" in report and "| rotary | lwr |" in report and "n = 1" in report
    assert (out / "positions.png").read_bytes()[:4] == b"\x89PNG"
    capsys.readouterr()

    main(["positions", *TINY, "--seeds", "2", "--out", str(out)])
    printed = capsys.readouterr().out
    assert printed.count("already done") == 4  # two policies, two seed-0 reward models
    assert "[reward-rotary-seed-1] start" in printed and "[policy-learned] start" not in printed
    again = json.loads((out / "positions.json").read_text())
    assert again["seeds"] == [0, 1] and again["schemes"]["learned"]["reward_eval"][0] == \
        results["schemes"]["learned"]["reward_eval"][0]
    assert " ± " in (out / "positions.md").read_text()


def test_positions_refuses_a_folder_made_with_other_settings(tmp_path, capsys):
    out = tmp_path / "pos"
    out.mkdir()
    (out / "identity.json").write_text(json.dumps({"experiment": "positions", "preset": "cpu"}))
    with pytest.raises(SystemExit, match="holds a run made with other settings"):
        main(["positions", *TINY, "--out", str(out)])
