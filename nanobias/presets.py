"""Run sizes, each a flat table of values: `smoke` checks the plumbing in seconds (the tests),
`cpu` is the real reproduction on a laptop CPU, `gpu` a GPT-2-small-sized run for one GPU.

A key is `section.field`: the section is the small config of the module that uses it (the table
below says which), and a field a preset does not name keeps that config's default. Keys without
a section describe the run itself. The same keys override a value, one way everywhere: the CLI's
`--set grpo.beta=0.5`, the tutorials and the tests all call `get_preset(name, {"grpo.beta": 0.5})`.
`seeds` is how many RL seeds `reproduce` trains from the one base policy and reward model.
"""

import json
import math
from dataclasses import dataclass, fields

from nanobias.dpo import DPOConfig
from nanobias.grpo import GRPOConfig
from nanobias.selection import InterventionConfig
from nanobias.model import GPTConfig
from nanobias.ppo import PPOConfig
from nanobias.preferences import PairConfig
from nanobias.pretrain import PretrainConfig
from nanobias.reward import RewardConfig
from nanobias.reward_eval import RewardEvalConfig
from nanobias.rl import RLConfig

SECTIONS = {
    "model": GPTConfig,  # the GPT's shape (the reward model shares its policy's)
    "pretrain": PretrainConfig,  # tokenizer size, planted bias rate, pretraining run
    "pairs": PairConfig,  # preference data: planted style cues, held-out pair counts
    "reward": RewardConfig,  # reward-model training
    "intervention": InterventionConfig,  # the neuron search
    "reward_eval": RewardEvalConfig,  # reward-model evaluation
    "rl": RLConfig,  # the budget GRPO, PPO and DPO share
    "grpo": GRPOConfig,
    "ppo": PPOConfig,
    "dpo": DPOConfig,
}


@dataclass(frozen=True)
class Preset:
    name: str
    variants_per_template: int  # synthetic examples per template = this many variants x 4 conditions
    eval_examples: int | None  # test (and held-out) prompts each policy is evaluated on; None: all
    cuda_fast: bool  # on CUDA: bf16 autocast and TF32 (device.py); ignored on CPU
    seeds: int  # RL seeds seed, seed + 1, ..., each training DPO, PPO, GRPO and GRPO+CIRM (reproduce.py)
    model: GPTConfig
    pretrain: PretrainConfig
    pairs: PairConfig
    reward: RewardConfig
    intervention: InterventionConfig
    reward_eval: RewardEvalConfig
    rl: RLConfig
    grpo: GRPOConfig
    ppo: PPOConfig
    dpo: DPOConfig


PRESETS = {
    "smoke": {
        "variants_per_template": 2, "eval_examples": 32, "cuda_fast": False, "seeds": 1,
        "model.block_size": 256, "model.n_layer": 2, "model.n_head": 2, "model.n_embd": 64, "model.token_shift": 4,
        "model.gelu_approximate": "none",
        "pretrain.vocab_size": 512, "pretrain.bias_rate": 0.8, "pretrain.long_rate": 0.3,
        "pretrain.steps": 40, "pretrain.batch_size": 8, "pretrain.lr": 3e-3, "pretrain.warmup": 5,
        "pretrain.eval_every": 20, "pretrain.ckpt_every": 20,
        "pairs.val_pairs": 16, "pairs.test_pairs": 16,
        "reward.steps": 4, "reward.batch_size": 4, "reward.lr": 1e-3, "reward.warmup": 1,
        "reward.eval_every": 4, "reward.ckpt_every": 4,
        "reward_eval.sensitivity_completions": 8,
        "rl.steps": 4, "rl.prompts_per_step": 4, "rl.group_size": 4, "rl.max_new_tokens": 8,
        "rl.eval_points": 3, "rl.eval_prompts": 8,
        "grpo.lr": 2e-3, "grpo.warmup": 2, "grpo.beta": 0.04,
        "ppo.lr": 1e-3, "ppo.warmup": 2, "ppo.beta": 0.04,
        "dpo.lr": 1e-4, "dpo.warmup": 2, "dpo.beta": 0.1,
    },
    "cpu": {
        "variants_per_template": 32, "eval_examples": 576, "cuda_fast": False, "seeds": 3,
        # token_shift: the 4 tokens before each token join its input (model.py); reading a disambiguated
        # context, learned in a late, sudden jump, then comes much earlier (README, "Speed")
        "model.block_size": 256, "model.n_layer": 4, "model.n_head": 4, "model.n_embd": 128, "model.token_shift": 4,
        "model.gelu_approximate": "none",  # the exact GELU: faster than GPT-2's tanh form on a CPU (README, "Speed")
        "pretrain.vocab_size": 1024, "pretrain.bias_rate": 0.8, "pretrain.long_rate": 0.3,
        # Muon for the blocks' matrices (optim.py): reading is learned in fewer steps (README, "Speed")
        "pretrain.steps": 1250, "pretrain.batch_size": 16, "pretrain.lr": 2e-3, "pretrain.warmup": 50,
        "pretrain.optimizer": "muon",
        "pretrain.eval_every": 250, "pretrain.ckpt_every": 250,
        "pairs.val_pairs": 400, "pairs.test_pairs": 300,
        "reward.steps": 150, "reward.batch_size": 16, "reward.lr": 1e-3, "reward.warmup": 15,
        "reward.eval_every": 50, "reward.ckpt_every": 50,
        "reward_eval.sensitivity_completions": 100,
        "rl.steps": 40, "rl.prompts_per_step": 8, "rl.group_size": 8, "rl.max_new_tokens": 24,
        # budget curves: every 5 steps (every 20 at a 4x budget, rl.steps=160); 96 prompts take 3-5 s
        "rl.eval_points": 9, "rl.eval_prompts": 96,
        # the KL weight trades debiasing for reading disambiguated contexts: README, the GRPO variants table
        "grpo.lr": 2e-4, "grpo.beta": 0.7,
        "ppo.lr": 1e-4, "ppo.beta": 0.7,
        "dpo.lr": 1e-4, "dpo.beta": 0.1,
    },
    "gpu": {
        "variants_per_template": 200, "eval_examples": 2000, "cuda_fast": True, "seeds": 1,
        "model.block_size": 512, "model.n_layer": 12, "model.n_head": 12, "model.n_embd": 768, "model.token_shift": 4,
        "model.gelu_approximate": "none",
        "pretrain.vocab_size": 4096, "pretrain.bias_rate": 0.8, "pretrain.long_rate": 0.3,
        "pretrain.steps": 4000, "pretrain.batch_size": 64, "pretrain.lr": 6e-4, "pretrain.warmup": 200,
        "pretrain.eval_every": 500, "pretrain.ckpt_every": 500,
        "pairs.val_pairs": 1000, "pairs.test_pairs": 2000,
        "reward.steps": 1000, "reward.batch_size": 32, "reward.lr": 3e-5, "reward.warmup": 50,
        "reward.eval_every": 200, "reward.ckpt_every": 200,
        "reward_eval.sensitivity_completions": 500,
        "rl.steps": 200, "rl.prompts_per_step": 32, "rl.group_size": 8, "rl.max_new_tokens": 48,
        "rl.eval_points": 9, "rl.eval_prompts": 256,
        # the KL weight the cpu runs settled on (0.04 lost disambiguated reading there); not yet measured on a GPU
        "grpo.lr": 1e-5, "grpo.beta": 0.7,
        "ppo.lr": 1e-5, "ppo.beta": 0.7,
        "dpo.lr": 1e-5, "dpo.beta": 0.1,
    },
}
RUN_KEYS = ("variants_per_template", "eval_examples", "cuda_fast", "seeds")


def known_keys() -> list[str]:
    return list(RUN_KEYS) + [f"{s}.{f.name}" for s, cls in SECTIONS.items() for f in fields(cls)]


def get_preset(name: str, overrides: dict | None = None) -> Preset:
    """The preset `name` with `overrides` ({"section.field": value}) applied; bad keys or values
    raise ValueError naming them."""
    if name not in PRESETS:
        raise ValueError(f"--preset {name!r} is not one of {sorted(PRESETS)}")
    values = {**PRESETS[name], **(overrides or {})}
    run, sections = {}, {s: {} for s in SECTIONS}
    for key, value in values.items():
        section, dot, field = key.partition(".")
        if key in RUN_KEYS:
            run[key] = value
        elif dot and section in SECTIONS and field in {f.name for f in fields(SECTIONS[section])}:
            sections[section][field] = value
        else:
            raise ValueError(f"unknown setting {key!r}; known: {', '.join(known_keys())}")
    if run["seeds"] < 1:
        raise ValueError(f"seeds: expected at least 1 RL seed, got {run['seeds']}")
    return Preset(name=name, **run, **{s: cls(**sections[s]) for s, cls in SECTIONS.items()})


def parse_setting(text: str, preset: str = "cpu", flag: str = "--set") -> tuple[str, object]:
    """'section.field=value' -> (key, value), the value read as JSON (a bare word is a string) and
    given the type of the preset's current value (an int where a float is expected becomes a float).
    Errors name `flag`, the command-line argument the text came from."""
    key, eq, raw = text.partition("=")
    key = key.strip()
    if not eq or key not in known_keys():
        raise ValueError(f"{flag} {text!r}: expected KEY=VALUE with KEY one of {', '.join(known_keys())}")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw.strip()
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{flag} {text!r}: {key} must be a finite number")
    current = current_value(get_preset(preset), key)
    if isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    elif isinstance(current, tuple) and isinstance(value, list):
        value = tuple(value)
    nullable = key == "eval_examples" and value is None  # None: evaluate every prompt
    if not nullable and current is not None and type(value) is not type(current):
        raise ValueError(f"{flag} {text!r}: {key} takes a {type(current).__name__} (now {current!r}), "
                         f"got {value!r}")
    return key, value


def current_value(preset: Preset, key: str):
    section, _, field = key.partition(".")
    return getattr(preset, key) if key in RUN_KEYS else getattr(getattr(preset, section), field)
