"""What every RL trainer shares: the budget, prompt batches, rollouts, rewards, the reference, logs.

A fair comparison of GRPO, PPO and DPO (BiasGRPO, Sec. 4) holds the budget fixed: `RLConfig`
gives the steps, B prompts per step and G completions per prompt, so GRPO and PPO both score
B*G completions per step (the same number of reward-model calls) and DPO trains on the same
number of preference pairs. The rest is plumbing each trainer would otherwise repeat:

- `prompt_batch`: B training examples for a step, a pure function of (seed, step): shuffled
  epochs, every example once per epoch.
- `rollout`: the B prompts, G sampled completions each (sampling.py), decoded.
- `make_scorer`: `score_fn(examples, prompts, completions) -> rewards [N]` from the reward model
  (optionally with its neuron intervention), or the "oracle" reward from the world's labels
  (a stand-in for tests and comparisons, never the default).
- `reference_policy`: the frozen copy of the initial policy that the KL term is measured against.
- per-step logs (reward mean and std, KL, clip fraction, completion length, entropy) as JSONL,
  training stability (the reward curve itself is drawn by plots.reward_curves).
- `start_run`: the set-up every trainer repeats (policy on its device, reference, optimiser, metrics
  log, progress line, budget curve: curves.py); `Run.finish`, the end (policy and curve saved, reward
  curve drawn).

Stability (docs/design.md): `reward_fluctuation` = population std of the per-step batch-mean reward
over the last half of training; `final_reward_mean` = the mean of those batch means.
"""

import copy
import json
from contextlib import contextmanager
import random
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from nanobias import curves, device, distributed, plots
from nanobias.bbq import Example
from nanobias.checkpoint import load_policy, save_policy, write_json
from nanobias.errors import TrainingDiverged, check
from nanobias.optim import AdamW, OptimConfig, make_optimizer, set_lr, stop_if_diverged
from nanobias.progress import Progress
from nanobias.render import render_prompt
from nanobias.sampling import Samples, completion_texts, sample

ScoreFn = Callable[[list[Example], list[str], list[str]], torch.Tensor]


@dataclass
class RLConfig:
    """The budget GRPO, PPO and DPO share: B*G reward-model calls (DPO: preference pairs) per step."""
    steps: int = 40
    prompts_per_step: int = 8  # B
    group_size: int = 8  # G: completions per prompt
    max_new_tokens: int = 24
    temperature: float = 1.0  # sampling temperature; log-probs in every loss use the same one
    eval_points: int = 0  # budget-curve evaluations, step 0 and the last included (curves.py); 0: none
    eval_prompts: int = 96  # the fixed test subset they answer

    def __post_init__(self):
        check(self, {"steps": self.steps >= 1, "prompts_per_step": self.prompts_per_step >= 1,
                     "group_size": self.group_size >= 1, "max_new_tokens": self.max_new_tokens >= 1,
                     "temperature": self.temperature > 0, "eval_points": self.eval_points == 0 or self.eval_points >= 2,
                     "eval_prompts": self.eval_prompts >= 1}, "steps, prompts_per_step, group_size, max_new_tokens, "
              "eval_prompts >= 1; temperature > 0; eval_points 0 (no curve) or >= 2")

    @property
    def calls_per_step(self) -> int:
        return self.prompts_per_step * self.group_size


@dataclass
class RLOptimConfig(OptimConfig):
    """An RL trainer's optimiser: a constant learning rate, no weight decay, and the KL weight beta."""
    lr: float = 1e-4
    warmup: int = 0
    min_lr_frac: float = 1.0
    weight_decay: float = 0.0
    beta: float = 0.04  # weight of the KL to the reference policy

    def __post_init__(self):
        super().__post_init__()
        check(self, {"beta": self.beta >= 0}, "beta >= 0")


def step_seed(seed: int, step: int) -> int:
    """The seed of step `step` in a run seeded `seed` (distinct for every pair in practice)."""
    return seed * 1_000_003 + step


def prompt_batch(examples: list[Example], batch_size: int, seed: int, step: int) -> list[Example]:
    """The examples of `step`: position step*B.. of an endless stream of seeded shuffled epochs."""
    if not examples:
        raise ValueError("prompt_batch: no training examples (the train split is empty)")
    batch, orders = [], {}
    for i in range(step * batch_size, (step + 1) * batch_size):
        epoch, j = divmod(i, len(examples))
        if epoch not in orders:
            orders[epoch] = random.Random(step_seed(seed, epoch)).sample(range(len(examples)), len(examples))
        batch.append(examples[orders[epoch][j]])
    return batch


@dataclass
class Rollout:
    examples: list[Example]  # [B*G], example b repeated G times (row b*G+g)
    prompts: list[str]  # [B*G]
    completions: list[str]  # [B*G]
    samples: Samples


def rollout(model, enc, examples: list[Example], cfg: RLConfig, seed: int) -> Rollout:
    """G completions of each example, sampled with the KV cache shared across the group. Prompt b of
    the step is sampled with its own seed, a function of (seed, b)."""
    mine = distributed.shard(len(examples), "prompts")  # every prompt in one process
    examples = examples[mine]
    texts = [render_prompt(ex) for ex in examples]
    seeds = [seed * 100_003 + b for b in range(mine.start, mine.stop)]
    with device.autocast():
        samples = sample(model, [enc.encode_ordinary(t) for t in texts], enc.eot_token, group_size=cfg.group_size,
                         max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, seed=seeds)
    G = cfg.group_size
    return Rollout([ex for ex in examples for _ in range(G)], [t for t in texts for _ in range(G)],
                   completion_texts(enc, samples), samples)


def make_scorer(reward_ckpt=None, intervention_path=None, oracle: bool = False, batch_size: int = 64) -> ScoreFn:
    """score_fn(examples, prompts, completions) -> rewards [N] float32.

    Either the reward model at `reward_ckpt` (with the neuron intervention at `intervention_path`
    applied while scoring, if given) or, with oracle=True, 1 for the labelled answer and 0 otherwise.
    """
    if oracle == (reward_ckpt is not None):
        raise ValueError("make_scorer: give exactly one of reward_ckpt (a reward model checkpoint) "
                         "or oracle=True (the world's labels)")
    if oracle:
        if intervention_path is not None:
            raise ValueError("make_scorer: an intervention edits a reward model; the oracle reward has none")
        from nanobias.evaluate import oracle_rewards

        return lambda examples, prompts, completions: oracle_rewards(examples, completions)
    from nanobias.reward import load_reward_model, score

    rm, enc, _ = load_reward_model(reward_ckpt, device=distributed.device())
    intervention = None
    if intervention_path is not None:
        from nanobias.intervention import load_intervention

        intervention = load_intervention(intervention_path)

    def score_fn(examples, prompts, completions):
        with device.autocast():
            return score(rm, enc, prompts, completions, intervention=intervention, batch_size=batch_size).float()

    return score_fn


@contextmanager
def at_step(stage: str, step: int, causes: str):
    """Name the stage, the step and, unless the message has its own, the likely `causes` in a
    TrainingDiverged raised inside (a non-finite loss, reward or logit)."""
    try:
        yield
    except TrainingDiverged as e:
        raise TrainingDiverged(f"{stage} step {step}: {e}" + ("" if "Likely cause" in str(e) else
                                                              f" Likely cause: {causes}")) from None


def score_rollout(score_fn: ScoreFn, ro: Rollout) -> torch.Tensor:
    """Rewards [R] of the rollout's completions, float32 on the samples' device; stops on a non-finite one."""
    rewards = score_fn(ro.examples, ro.prompts, ro.completions).float().to(ro.samples.tokens.device)
    stop_if_diverged(rewards, "a reward", "the reward model or its intervention (intervention.json) "
                                          "gives non-finite rewards")
    return rewards


def reference_policy(model: torch.nn.Module) -> torch.nn.Module:
    """A frozen copy of the policy as it is now: the anchor of the KL penalty."""
    ref = copy.deepcopy(model).eval()
    ref.requires_grad_(False)
    return ref


@torch.no_grad()
def token_entropy(logits: torch.Tensor, mask: torch.Tensor, temperature: float = 1.0, rows: int = 16) -> float:
    """Mean entropy of softmax(logits / temperature) over completion tokens; logits [R, N, V], mask [R, N].
    Walks `rows` sequences at a time so the fp32 softmax is never materialised whole."""
    total = 0.0
    for r in range(0, logits.shape[0], rows):
        logp = torch.log_softmax(logits[r:r + rows].float() / temperature, -1)  # [rows, N, V]
        entropy = -(logp.exp() * logp).sum(-1)  # [rows, N]
        total += (entropy * (mask[r:r + rows] != 0)).sum().item()
    return total / max(1, int((mask != 0).sum()))


def rollout_stats(rewards: torch.Tensor, ro: Rollout) -> dict:
    """Reward mean/std (population) and completion length in characters and tokens."""
    rewards = distributed.all_gather(rewards.float())  # [B*G]
    chars = distributed.all_gather(torch.tensor([float(len(c)) for c in ro.completions]))
    tokens = distributed.all_gather(ro.samples.mask.sum(1).float())
    return {"reward_mean": rewards.mean().item(), "reward_std": rewards.std(correction=0).item(),
            "completion_len": chars.mean().item(), "completion_tokens": tokens.mean().item()}


class MetricsLog:
    """Per-step records appended to a JSONL file (started afresh), kept in memory as `history`."""

    def __init__(self, path):
        self.path = Path(path)
        if distributed.is_main():
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text("")
        self.history: list[dict] = []

    def append(self, record: dict) -> None:
        record = distributed.mean_over_ranks(record)
        self.history.append(record)
        if distributed.is_main():
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")


@dataclass
class Run:
    """What every RL trainer sets up: the policy it trains (on this process's device), its frozen
    reference, the tokenizer, the optimiser, its schedule, the log, the progress line, the budget curve."""
    model: torch.nn.Module
    ref_model: torch.nn.Module
    enc: object
    opt: AdamW
    steps: int
    optim: OptimConfig
    log: MetricsLog
    progress: Progress
    heads: dict  # modules trained beside the policy (PPO's value head), by name
    curve: curves.Curve  # the policy evaluated at evenly spaced steps (curves.py)

    def set_lr(self, step: int) -> float:
        return set_lr(self.opt, step, self.steps, self.optim)

    def log_step(self, record: dict, shown: tuple[str, ...]) -> None:
        """Append the step's record, show its `shown` fields on the progress line, add a curve point if due."""
        self.log.append(record)
        record = self.log.history[-1]
        if distributed.is_main():
            done = record["step"] + 1
            self.progress.update(done, force=done == self.progress.total, **{k: record[k] for k in shown if k in record})
        self.curve.after(record["step"] + 1, self.model, self.enc)

    def finish(self, out_path, stage: str, **meta) -> dict:
        """Save the trained policy (its `meta` beside it), its budget curve as `<stem>.curve.json`, and draw
        the reward curve as `<stem>.reward.png` (if any step scored a reward). Returns {"stability",
        "history", "curve"}."""
        self.model.eval()
        save_policy(out_path, self.model, self.enc, stage=stage, **meta)
        result = {"stability": stability(self.log.history), "history": self.log.history, "curve": self.curve.points}
        write_json(curves.curve_path(out_path), self.curve.points)  # rank 0 alone writes
        if result["stability"] and distributed.is_main():
            plots.reward_curves({stage: self.log.history}, reward_curve_path(out_path))
        distributed.barrier()  # the policy file is written before any rank reads it
        return result


def start_run(policy_ckpt, out_path, rl_cfg: RLConfig, optim: OptimConfig, desc: str, about: str, test: list[Example],
              heads: Callable[[torch.nn.Module], dict] | None = None) -> Run:
    """Load the policy onto the device, freeze a reference copy, build the optimiser (over
    the policy and any `heads(policy)` trained with it, e.g. PPO's value head), start
    `<out stem>.metrics.jsonl`, the progress line and the budget curve on `test` prompts (its step-0
    point: the starting policy); print `about`."""
    model, enc, _ = load_policy(policy_ckpt)
    ref_model = reference_policy(model).to(distributed.device())
    extra = heads(model) if heads else {}
    trained = torch.nn.ModuleDict({"policy": model, **extra}).to(distributed.device())
    device.prepare(model)
    distributed.sync_parameters(trained)
    if distributed.is_main():
        print(f"{desc}: {about}" + (f" on {distributed.world_size()} processes" if distributed.world_size() > 1 else ""))
    curve = curves.Curve(rl_cfg, test, desc)
    curve.after(0, model, enc)
    return Run(model, ref_model, enc, make_optimizer(trained, optim), rl_cfg.steps, optim,
               MetricsLog(metrics_path(out_path)), Progress(rl_cfg.steps, desc, unit="step"), extra, curve)


def metrics_path(ckpt_path) -> Path:
    """`<stem>.metrics.jsonl` beside a checkpoint, as train.train writes it."""
    return Path(ckpt_path).with_suffix(".metrics.jsonl")


def reward_curve_path(ckpt_path) -> Path:
    """`<stem>.reward.png` beside a checkpoint."""
    return Path(ckpt_path).with_suffix(".reward.png")


def stability(history: list[dict]) -> dict:
    """reward_fluctuation and final_reward_mean over the last half of the steps that scored a reward
    (see module doc; DPO scores only every probe_every steps); {} when none did."""
    rewards = [h["reward_mean"] for h in history if "reward_mean" in h]
    if not rewards:
        return {}
    last_half = rewards[len(rewards) // 2:]
    return {"reward_fluctuation": statistics.pstdev(last_half), "final_reward_mean": statistics.fmean(last_half)}
