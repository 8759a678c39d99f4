"""claims.py: verdicts from estimates, standard errors from seeds and pairs, missing numbers."""

import math

import pytest

from nanobias.claims import CLAIMS, Estimate, claims_table, format_claims, over_seeds, share, verdict


@pytest.mark.parametrize("a, b, expected", [
    (Estimate(0.60, 0.01, 3), Estimate(0.50, 0.01, 3), "reproduced"),       # d = 0.10, se_d = 0.014
    (Estimate(0.50, 0.01, 3), Estimate(0.60, 0.01, 3), "reversed"),
    (Estimate(0.52, 0.03, 3), Estimate(0.50, 0.03, 3), "not reproduced"),   # d = 0.02 < 2 * 0.042
    (Estimate(0.50, 0.0, 1), Estimate(0.50, 0.0, 1), "not reproduced"),     # equal, no noise
])
def test_verdict_needs_two_standard_errors(a, b, expected):
    d, se, v = verdict(a, b)
    assert d == pytest.approx(a.mean - b.mean) and se == pytest.approx(math.hypot(a.se, b.se))
    assert v == expected


def test_over_seeds_divides_the_sample_std_by_root_n_and_the_base_has_none():
    results = {"policy": {"grpo": {"acc_ambig": 0.5}, "base": {"acc_ambig": 0.1}},
               "policy_std": {"grpo": {"acc_ambig": 0.3}, "base": {"acc_ambig": 0.0}},
               "policy_seeds": {"grpo": [{}, {}, {}, {}], "base": [{}]}}
    assert over_seeds(results, "policy", "grpo", "acc_ambig") == Estimate(0.5, 0.15, 4)
    assert over_seeds(results, "policy", "base", "acc_ambig") == Estimate(0.1, 0.0, 1)
    assert over_seeds(results, "policy", "ppo", "acc_ambig") is None
    assert share(0.5, 100) == Estimate(0.5, 0.05, 100)


def results_with(grpo_ambig: float) -> dict:
    acc = {"acc": 0.8, "acc_biased": {"length": 0.9}, "acc_unbiased": {"length": 0.6},
           "n_biased": {"length": 100}, "n_unbiased": {"length": 100}}
    policy = {m: {"acc_ambig": v} for m, v in {"base": 0.1, "grpo": grpo_ambig, "dpo": 0.5, "ppo": 0.4}.items()}
    return {"policy": policy, "policy_std": {m: {"acc_ambig": 0.01} for m in policy},
            "policy_seeds": {m: [{}] * (1 if m == "base" else 3) for m in policy},
            "stability": {"grpo": {"reward_fluctuation": 0.5}, "ppo": {"reward_fluctuation": 0.9}},
            "stability_std": {"grpo": {"reward_fluctuation": 0.1}, "ppo": {"reward_fluctuation": 0.1}},
            "stability_seeds": {"grpo": [{}] * 3, "ppo": [{}] * 3},
            "reward_model": {"test_pairs": 300, **{m: acc for m in ("base", "cirm", "length_penalty", "lwr")}}}


def test_the_table_follows_the_numbers_and_says_what_was_not_run():
    rows = {r["claim"]: r for r in claims_table(results_with(grpo_ambig=0.7))}
    assert len(rows) == len(CLAIMS)
    assert rows["GRPO beats DPO (IPO) on ambiguous accuracy"]["verdict"] == "reproduced"
    assert rows["GRPO's training reward fluctuates less than PPO's"]["verdict"] == "reproduced"
    assert rows["the intervention raises overall accuracy"]["verdict"] == "not reproduced"  # equal
    assert rows["a larger group helps: G = 4 beats G = 2"]["verdict"].startswith("not run (nanobias sweep")
    flipped = {r["claim"]: r for r in claims_table(results_with(grpo_ambig=0.3))}
    assert flipped["GRPO beats DPO (IPO) on ambiguous accuracy"]["verdict"] == "reversed"
    table = format_claims(claims_table(results_with(0.7)))
    assert table.count("\n") == len(CLAIMS) + 2 and "**reproduced**" in table


def sweep_json(acc: dict[int, list[float]]) -> dict:
    """A sweep.json (sweep.py) of rl.group_size with GRPO's per-seed acc_ambig per value."""
    import numpy as np
    return {"key": "rl.group_size", "runs": {str(g): {"methods": {"grpo": {
        "policy": {"acc_ambig": float(np.mean(v))}, "policy_std": {"acc_ambig": float(np.std(v, ddof=1))},
        "policy_seeds": [{"acc_ambig": x} for x in v]}}} for g, v in acc.items()}}


def test_group_size_claims_come_from_a_sweep():
    from nanobias.claims import with_sweeps
    sweep = sweep_json({2: [0.30, 0.32, 0.31], 4: [0.50, 0.52, 0.51], 8: [0.40, 0.60, 0.50]})
    rows = {r["claim"]: r for r in claims_table(with_sweeps(results_with(0.7), [sweep]))}
    assert rows["a larger group helps: G = 4 beats G = 2"]["verdict"] == "reproduced"
    assert rows["a larger group helps: G = 4 beats G = 2"]["ours"] == "0.510 ± 0.006 vs 0.310 ± 0.006"
    assert rows["a larger group helps: G = 8 beats G = 4"]["verdict"] == "not reproduced"  # 0.50 ± 0.058 vs 0.51


def test_nanobias_claims_writes_claims_md_and_names_a_missing_file(tmp_path):
    import json

    from nanobias.cli import main
    run, sweep = tmp_path / "run", tmp_path / "sweep"
    run.mkdir(), sweep.mkdir()
    (run / "results.json").write_text(json.dumps(results_with(0.7)))
    (sweep / "sweep.json").write_text(json.dumps(sweep_json({2: [0.3, 0.3], 4: [0.5, 0.5]})))
    assert main(["claims", str(run), "--sweep", str(sweep)]) in (0, None)
    assert "G = 4 beats G = 2 | .3123 vs .2781 | 0.500 vs 0.300 | +0.200 ± 0.000 | **reproduced**" in (
        run / "claims.md").read_text()
    with pytest.raises(SystemExit) as e:
        main(["claims", str(tmp_path / "nowhere")])
    assert "nanobias claims: error:" in str(e.value.code) and "nowhere/results.json: not found" in str(e.value.code)
