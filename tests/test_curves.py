"""nanobias/curves.py: the budget curves' steps, their fixed prompts, their points, and that measuring them
leaves training as it was (the results.json side: test_reproduce.py)."""

import json
from dataclasses import replace

import pytest
import torch

from nanobias import curves, rl
from nanobias.checkpoint import load_checkpoint, load_policy, save_checkpoint
from nanobias.dpo import train_dpo
from nanobias.evaluate import evaluate_policy
from nanobias.grpo import train_grpo
from nanobias.ppo import train_ppo
from nanobias.presets import get_preset


def test_curve_steps_are_evenly_spaced_and_include_both_ends():
    assert curves.curve_steps(10, 3) == [0, 5, 10]
    assert curves.curve_steps(40, 9) == list(range(0, 41, 5))
    assert curves.curve_steps(40, 7) == [0, 7, 13, 20, 27, 33, 40]  # rounded where steps / 6 is not whole
    assert curves.curve_steps(3, 9) == [0, 1, 2, 3]  # more points than steps: each step once
    assert curves.curve_steps(10, 0) == []
    for preset, steps in (("smoke", None), ("cpu", None), ("cpu", 160), ("gpu", None)):
        cfg = get_preset(preset, {"rl.steps": steps} if steps else {}).rl
        at = curves.curve_steps(cfg.steps, cfg.eval_points)
        assert len(at) == cfg.eval_points >= 3 and at[0] == 0 and at[-1] == cfg.steps, preset
        assert len({b - a for a, b in zip(at, at[1:])}) == 1, (preset, at)  # the presets' points: exactly even
    with pytest.raises(ValueError, match="eval_points=1"):
        rl.RLConfig(eval_points=1)
    with pytest.raises(ValueError, match="eval_prompts=0"):
        rl.RLConfig(eval_prompts=0)


def test_the_curve_prompts_are_one_fixed_subset_with_both_contexts(tiny_splits):
    chosen = curves.curve_prompts(tiny_splits.test, 16)
    assert len(chosen) == 16 and chosen == curves.curve_prompts(list(tiny_splits.test), 16)
    assert {ex.context_condition for ex in chosen} == {"ambig", "disambig"}
    assert all(ex in tiny_splits.test for ex in chosen)


@pytest.fixture(scope="module")
def dropout_policy(smoke_policy, tmp_path_factory):
    """The smoke policy with dropout 0.1: its training draws from torch's global generator and depends on
    train mode, so an evaluation that drew a random number or left the policy in eval mode would change it."""
    preset, splits, policy = smoke_policy
    ckpt = load_checkpoint(policy)
    ckpt["meta"]["model_config"]["dropout"] = 0.1
    path = tmp_path_factory.mktemp("dropout") / "policy.pt"
    save_checkpoint(path, ckpt)
    return preset, splits, path


def train(name, splits, policy, out, rl_cfg, preset):
    torch.manual_seed(0)  # the global generator that dropout draws from
    scorer = rl.make_scorer(oracle=True)
    if name == "grpo":
        return train_grpo(splits, policy, out, scorer, rl_cfg, preset.grpo, seed=0, backend="torch")
    if name == "ppo":
        return train_ppo(splits, policy, out, scorer, rl_cfg, preset.ppo, seed=0, backend="torch")
    return train_dpo(splits, policy, out, rl_cfg, preset.dpo, preset.pairs, seed=0, backend="torch", score_fn=scorer)


def subset_metrics(ckpt, examples) -> dict:
    """The eval stage's metrics (evaluate_policy) of a checkpoint on the curve's prompts, as a point has them."""
    model, enc, _ = load_policy(ckpt)
    metrics = evaluate_policy(model, enc, examples)
    return {k: metrics[k] for k in curves.POINT_KEYS}


@pytest.mark.parametrize("name", ["grpo", "ppo", "dpo"])
def test_a_curve_leaves_training_bit_identical_and_measures_what_evaluation_measures(name, dropout_policy, tmp_path):
    preset, splits, policy = dropout_policy
    with_curve = replace(preset.rl, steps=4, eval_points=3, eval_prompts=16)
    plain = train(name, splits, policy, tmp_path / "plain.pt", replace(with_curve, eval_points=0), preset)
    measured = train(name, splits, policy, tmp_path / "curve.pt", with_curve, preset)
    a, b = (load_checkpoint(tmp_path / f"{run}.pt")["model"] for run in ("plain", "curve"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    assert plain["history"] == measured["history"] and plain["curve"] == []

    curve, B_G = measured["curve"], with_curve.prompts_per_step * with_curve.group_size
    assert [p["step"] for p in curve] == [0, 2, 4] and [p["calls"] for p in curve] == [0, 2 * B_G, 4 * B_G]
    assert all(p["n"] == 16 and 0 <= p["acc_ambig"] <= 1 and 0 <= p["acc_disambig"] <= 1 for p in curve)
    examples = curves.curve_prompts(splits.test, 16)
    for point, ckpt in ((curve[0], policy), (curve[-1], tmp_path / "curve.pt")):  # the base and the trained policy
        assert {k: point[k] for k in curves.POINT_KEYS} == subset_metrics(ckpt, examples), name
    assert json.loads(curves.curve_path(tmp_path / "curve.pt").read_text()) == curve
    assert json.loads(curves.curve_path(tmp_path / "plain.pt").read_text()) == []


def test_the_identity_test_can_fail(dropout_policy, tmp_path, monkeypatch):
    """The control of the test above: an evaluation that draws one number from the global generator
    changes the trained policy."""
    preset, splits, policy = dropout_policy
    cfg = replace(preset.rl, steps=4, eval_points=3, eval_prompts=16)
    train("grpo", splits, policy, tmp_path / "clean.pt", cfg, preset)
    point = curves.curve_point
    monkeypatch.setattr(curves, "curve_point", lambda *a, **k: (torch.rand(1), point(*a, **k))[1])
    train("grpo", splits, policy, tmp_path / "drawing.pt", cfg, preset)
    a, b = (load_checkpoint(tmp_path / f"{run}.pt")["model"] for run in ("clean", "drawing"))
    assert not all(torch.equal(a[k], b[k]) for k in a)
