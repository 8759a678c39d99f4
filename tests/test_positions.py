"""`nanobias positions`: the learned-vs-rotary reward-model experiment, on a tiny smoke run."""

import json

import numpy as np
import pytest

from nanobias.cli import main
from nanobias.metrics import mean_and_std
from nanobias.positions import cell, summarise
from nanobias.render import ATTRIBUTES
from nanobias.reward_eval import METHODS

TINY = ["--preset", "smoke", "--set", "pretrain.steps=6", "--set", "eval_examples=8",
        "--set", "reward_eval.sensitivity_completions=4", "--threads", "1"]


def test_cells_are_the_mean_and_sample_std_over_the_values_that_exist():
    assert cell([0.25]) == "0.250" and cell([]) == "-" and cell([None]) == "-"
    assert cell([0.2, None, 0.4], "+.3f") == f"+0.300 ± {np.std([0.2, 0.4], ddof=1):.3f}"
    assert mean_and_std([1.0, 2.0, 4.0]) == (pytest.approx(7 / 3), pytest.approx(np.std([1, 2, 4], ddof=1)))


def fake_eval(sens_base, sens_cirm, from_position):
    def method(sens):
        return {"acc": 0.8, "acc_biased": {a: 0.9 for a in ATTRIBUTES}, "acc_unbiased": {a: 0.7 for a in ATTRIBUTES},
                "sensitivity": {a: sens if a == "length" else 0.0 for a in ATTRIBUTES}}
    out = {m: method(sens_base) for m in METHODS}
    out["cirm"] = out["all_neurons"] = method(sens_cirm)
    return {**out, "length_from_position": from_position, "neurons": {"edited": 8, "total": 2048}}


def test_summarise_splits_the_length_sensitivity_and_pairs_the_edits_with_their_seed():
    v = summarise([fake_eval(0.2, 0.05, 0.1), fake_eval(0.0, 0.1, 0.0)])
    assert v["base.sens.length"] == [0.2, 0.0]
    assert v["length_from_words"] == [pytest.approx(0.1), 0.0]
    assert v["cirm.delta_sens"] == [pytest.approx(-0.15), pytest.approx(0.1)]
    assert v["all_neurons.delta_sens"] == v["cirm.delta_sens"] and v["cirm.delta_unbiased"] == [0.0, 0.0]
    assert v["neurons_edited"] == [8 / 2048] * 2


def test_positions_runs_both_schemes_and_a_rerun_adds_only_new_seeds(tmp_path, capsys, cpu_path):
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
