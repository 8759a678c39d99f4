"""Presets: flat `section.field` tables, one override path (get_preset's overrides, the CLI's --set)."""

import json
from dataclasses import FrozenInstanceError, fields

import pytest
import torch

from nanobias.cli import build_parser, main, preset_from_args
from nanobias.presets import PRESETS, SECTIONS, Preset, current_value, get_preset, known_keys, parse_setting
from nanobias.world import CATEGORIES

CATS = ",".join(CATEGORIES[:2])  # the smoke policy's training categories (conftest)


# ---------------------------------------------------------------- get_preset

def test_overrides_are_applied_and_leave_the_preset_itself_alone():
    p = get_preset("smoke", {"grpo.beta": 0.5, "pretrain.steps": 100, "eval_examples": 4, "pairs.val_pairs": 8})
    assert (p.grpo.beta, p.pretrain.steps, p.eval_examples, p.pairs.val_pairs) == (0.5, 100, 4, 8)
    plain = get_preset("smoke")
    assert p.grpo.lr == plain.grpo.lr and p.ppo.beta == plain.ppo.beta and p.pretrain.lr == plain.pretrain.lr
    assert plain.grpo.beta == PRESETS["smoke"]["grpo.beta"] == 0.04 and plain.pretrain.steps == 40
    assert "grpo.num_iterations" not in PRESETS["smoke"]  # a field the table does not name keeps its default
    assert get_preset("smoke", {"grpo.num_iterations": 3}).grpo.num_iterations == 3
    assert plain.grpo.num_iterations == 1
    with pytest.raises(FrozenInstanceError):  # overrides go through get_preset, not assignment
        plain.eval_examples = 4


@pytest.mark.parametrize("key", ["grpo.betta", "beta", "nosuch.lr", "grpo.", "rl_steps"])
def test_an_unknown_key_is_rejected_by_name(key):
    with pytest.raises(ValueError, match=f"unknown setting '{key}'; known: .*grpo.beta"):
        get_preset("smoke", {key: 1})


@pytest.mark.parametrize("overrides, message", [
    ({"grpo.lr": -1.0}, r"bad setting GRPOConfig\.lr=-1\.0 \(lr, grad_clip > 0"),
    ({"rl.steps": 0}, r"bad setting RLConfig\.steps=0"),
    ({"pretrain.vocab_size": 100}, r"bad setting PretrainConfig\.vocab_size=100 \(vocab_size >= 257"),
    ({"reward.batch_size": 0}, r"bad setting RewardConfig\.batch_size=0"),
    ({"grpo.scale": "std"}, r"GRPO scale must be one of \('group', 'batch', 'none'\), got 'std'"),
    ({"ppo.lam": 1.5}, r"ppo\.lam=1\.5"),
    ({"dpo.beta": 0.0}, r"dpo\.beta: expected a positive number"),
    ({"pairs.val_pairs": 1}, r"pairs\.val_pairs: expected at least 2"),
    ({"intervention.max_edit_frac": 2.0}, r"intervention\.max_edit_frac"),
    ({"reward_eval.sensitivity_completions": 1}, r"reward_eval\.sensitivity_completions"),
])
def test_a_bad_value_is_rejected_with_its_configs_own_check(overrides, message):
    with pytest.raises(ValueError, match=message):
        get_preset("smoke", overrides)


def test_an_unknown_preset_is_rejected():
    with pytest.raises(ValueError, match="'huge' is not one of"):
        get_preset("huge")


@pytest.mark.parametrize("name", list(PRESETS))
def test_every_preset_builds_from_its_table(name):
    p = get_preset(name)
    assert isinstance(p, Preset) and p.name == name
    for section, cls in SECTIONS.items():
        assert type(getattr(p, section)) is cls, section
    assert set(PRESETS[name]) <= set(known_keys())
    for key, value in PRESETS[name].items():
        assert current_value(p, key) == value, key
    # parse_setting types a --set value after the preset's current one: each value has its field's type
    for section, cls in SECTIONS.items():
        default = cls()
        for f in fields(cls):
            assert type(getattr(getattr(p, section), f.name)) is type(getattr(default, f.name)), f"{section}.{f.name}"


def test_the_smoke_budget_is_the_same_for_grpo_ppo_and_dpo():
    from nanobias.reproduce import budget

    p = get_preset("smoke")
    calls = p.rl.calls_per_step * p.rl.steps
    assert calls == p.rl.prompts_per_step * p.rl.group_size * p.rl.steps == 4 * 4 * 4
    b = budget(p)
    assert b["reward_model_calls"] == {"grpo": calls, "grpo_cirm": calls, "ppo": calls}
    assert b["dpo_preference_pairs"] == calls


def test_the_trainers_spend_that_budget(smoke_policy, tmp_path):
    """GRPO and PPO score rl.calls_per_step completions per step, DPO trains on as many pairs."""
    from nanobias.dpo import train_dpo
    from nanobias.grpo import train_grpo
    from nanobias.ppo import train_ppo

    _, splits, policy = smoke_policy
    p = get_preset("smoke", {"rl.steps": 2})  # the smoke budget per step, for two steps
    scored = {}

    def counting(name):
        def score_fn(examples, prompts, completions):
            assert len(examples) == len(prompts) == len(completions)
            scored[name] = scored.get(name, 0) + len(completions)
            return torch.tensor([float(len(c)) for c in completions])
        return score_fn

    train_grpo(splits, policy, tmp_path / "grpo.pt", counting("grpo"), p.rl, p.grpo, backend="torch")
    train_ppo(splits, policy, tmp_path / "ppo.pt", counting("ppo"), p.rl, p.ppo, backend="torch")
    dpo = train_dpo(splits, policy, tmp_path / "dpo.pt", p.rl, p.dpo, p.pairs, backend="torch")
    calls = p.rl.calls_per_step * p.rl.steps
    assert scored == {"grpo": calls, "ppo": calls} and dpo["pairs"] == calls == 32


# ---------------------------------------------------------------- parse_setting

@pytest.mark.parametrize("text, key, value", [
    ("pretrain.steps=7", "pretrain.steps", 7),
    ("pretrain.lr=1", "pretrain.lr", 1.0),  # an int where the preset has a float: a float
    ("grpo.beta=0", "grpo.beta", 0.0),
    ("grpo.lr=5e-4", "grpo.lr", 5e-4),
    ("intervention.k_fractions=[0.25, 0.5]", "intervention.k_fractions", (0.25, 0.5)),  # JSON list -> tuple
    ("grpo.scale=none", "grpo.scale", "none"),  # a bare word is a string
    ('grpo.agg="dapo"', "grpo.agg", "dapo"),  # so is a JSON one
    (" reward.loss = regression ", "reward.loss", "regression"),
    ("reward.loss=graded", "reward.loss", "graded"),
    ("reward.n_layer=2", "reward.n_layer", 2),
    ("cuda_fast=true", "cuda_fast", True),
    ("eval_examples=null", "eval_examples", None),  # None: evaluate every prompt
    ('pairs.planted={"length": 0.5}', "pairs.planted", {"length": 0.5}),
])
def test_parse_setting_types_the_value(text, key, value):
    got_key, got = parse_setting(text, "smoke")
    assert got_key == key and got == value and type(got) is type(value)


@pytest.mark.parametrize("text, message", [
    ("pretrain.steps=1.5", "pretrain.steps takes a int (now 40), got 1.5"),
    ("pretrain.steps=many", "pretrain.steps takes a int (now 40), got 'many'"),
    ("grpo.beta=true", "grpo.beta takes a float"),
    ("grpo.scale=1", "grpo.scale takes a str"),
    ("intervention.k_fractions=0.5", "intervention.k_fractions takes a tuple"),
    ("cuda_fast=1", "cuda_fast takes a bool"),
    ("grpo.betta=0.5", "expected KEY=VALUE with KEY one of"),
    ("grpo.beta", "expected KEY=VALUE with KEY one of"),
])
def test_parse_setting_rejects_a_wrong_type_or_key_naming_it(text, message):
    with pytest.raises(ValueError) as e:
        parse_setting(text, "smoke")
    assert str(e.value).startswith(f"--set {text!r}: ") and message in str(e.value), str(e.value)


def test_parse_setting_reads_the_named_presets_types():
    assert parse_setting("eval_examples=100", "gpu") == ("eval_examples", 100)
    assert parse_setting("cuda_fast=false", "gpu") == ("cuda_fast", False)


# ---------------------------------------------------------------- the CLI's --set

def cli_config(argv):
    args = build_parser().parse_args(argv)
    return preset_from_args(args.parser, args)


def test_shorthand_flags_and_set_reach_the_same_preset():
    rl = ["grpo", "--preset", "smoke", "--policy", "p.pt", "--oracle-reward", "--out", "o"]
    by_flags = cli_config(rl + ["--beta", "0.5", "--lr", "1e-3", "--scale", "none", "--agg", "dapo"])
    by_set = cli_config(rl + ["--set", "grpo.beta=0.5", "--set", "grpo.lr=1e-3", "--set", "grpo.scale=none",
                              "--set", "grpo.agg=dapo"])
    assert by_flags == by_set == get_preset("smoke", {"grpo.beta": 0.5, "grpo.lr": 1e-3, "grpo.scale": "none",
                                                      "grpo.agg": "dapo"})
    pre = ["pretrain", "--preset", "smoke", "--out", "o"]
    assert (cli_config(pre + ["--steps", "3", "--vocab-size", "300"])
            == cli_config(pre + ["--set", "pretrain.steps=3", "--set", "pretrain.vocab_size=300"]))
    rew = ["reward", "--preset", "smoke", "--out", "o"]
    assert cli_config(rew + ["--loss", "regression"]).reward.loss == "regression"
    assert cli_config(rew + ["--loss", "graded", "--set", "reward.n_layer=1"]) == get_preset(
        "smoke", {"reward.loss": "graded", "reward.n_layer": 1})
    graded = ["--set", "reward.loss=graded", "--set", "reward.n_layer=1"]
    assert cli_config(["reproduce", "--preset", "smoke"] + graded) == cli_config(rew + graded)
    assert cli_config(rew + ["--set", "reward.loss=regression", "--set", "pairs.test_pairs=8"]) == get_preset(
        "smoke", {"reward.loss": "regression", "pairs.test_pairs": 8})
    assert cli_config(["eval", "--policy", "p.pt"]) == get_preset("cpu")  # no --preset: cpu
    rep = ["reproduce", "--preset", "smoke"]
    assert cli_config(rep + ["--seeds", "3"]) == cli_config(rep + ["--set", "seeds=3"]) == get_preset("smoke", {"seeds": 3})


def test_seeds_is_a_positive_run_key(capsys):
    assert [get_preset(name).seeds for name in ("smoke", "cpu", "gpu")] == [1, 3, 1]
    with pytest.raises(ValueError, match="seeds: expected at least 1 RL seed, got 0"):
        get_preset("smoke", {"seeds": 0})
    for flag in (["--seeds", "0"], ["--set", "seeds=0"]):
        with pytest.raises(SystemExit):
            cli_config(["reproduce", "--preset", "smoke", *flag])
        assert "seeds" in capsys.readouterr().err


def test_cli_set_reaches_the_evaluation(smoke_policy, tmp_path):
    _, _, policy = smoke_policy
    main(["eval", "--preset", "smoke", "--set", "eval_examples=4", "--policy", str(policy),
          "--train-categories", CATS, "--out", str(tmp_path)])
    assert json.loads((tmp_path / "policy.eval.json").read_text())["n"] == 4


def test_cli_set_reaches_the_grpo_run(smoke_policy, tmp_path):
    _, _, policy = smoke_policy
    main(["grpo", "--preset", "smoke", "--policy", str(policy), "--oracle-reward", "--train-categories", CATS,
          "--set", "rl.steps=2", "--set", "rl.group_size=4", "--set", "grpo.beta=0", "--set", "grpo.num_iterations=2",
          "--eval-examples", "4", "--backend", "torch", "--out", str(tmp_path)])
    meta = load_meta(tmp_path / "grpo_oracle.pt")
    assert (meta["rl_config"]["steps"], meta["rl_config"]["group_size"]) == (2, 4)
    assert (meta["grpo_config"]["beta"], meta["grpo_config"]["num_iterations"]) == (0.0, 2)
    assert len(json.loads((tmp_path / "grpo_oracle.json").read_text())["history"]) == 2


def load_meta(path):
    from nanobias.checkpoint import load_policy

    return load_policy(path)[2]


def test_cli_set_reaches_the_benchmark(monkeypatch):
    import nanobias.bench

    seen = {}
    monkeypatch.setattr(nanobias.bench, "run_bench", lambda preset, *a, **kw: seen.update(preset=preset))
    main(["bench", "--preset", "smoke", "--set", "model.n_layer=1", "--seconds", "1"])
    assert seen["preset"] == get_preset("smoke", {"model.n_layer": 1})


@pytest.mark.parametrize("setting, said", [
    ("grpo.betta=0.5", ["--set grpo.betta=0.5:", "expected KEY=VALUE", "grpo.beta"]),
    ("rl.steps=two", ["--set rl.steps=two:", "rl.steps takes a int"]),
    ("grpo.lr=-1", ["--set grpo.lr=-1:", "bad setting GRPOConfig.lr=-1.0"]),
    ("grpo.scale=std", ["--set grpo.scale=std:", "GRPO scale must be one of", "group", "batch", "none"]),
    ("rl.steps", ["--set rl.steps:", "expected KEY=VALUE"]),
])
def test_a_bad_set_is_a_usage_error_before_any_work(smoke_policy, tmp_path, capsys, setting, said):
    _, _, policy = smoke_policy
    out = tmp_path / "never"
    with pytest.raises(SystemExit) as e:
        main(["grpo", "--preset", "smoke", "--policy", str(policy), "--oracle-reward", "--set", "rl.steps=2",
              "--set", setting, "--out", str(out)])
    assert e.value.code == 2  # argparse's usage error
    err = capsys.readouterr().err
    assert "usage: nanobias grpo" in err and all(s in err for s in said), err
    assert not out.exists() and not list(tmp_path.iterdir())
