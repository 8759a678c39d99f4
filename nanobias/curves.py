"""Budget curves: the policy's BBQ accuracies at evenly spaced points of its training, against its spending.

After s of a trainer's `steps` steps (s = 0: the starting policy; s = steps: the trained one) the
policy answers a fixed subset of test prompts greedily, by the eval stage's path (evaluate.py:
generate_answers, extract_answer, metrics.bias_metrics), and the point records

    calls = s * B * G        reward-model calls of GRPO and PPO; DPO: preference pairs consumed

with acc_ambig, acc_disambig, s_amb, s_dis, invalid_rate (docs/design.md 4.1) and n, the number of
prompts. The points are

    s_i = round(i * steps / (eval_points - 1)),   i = 0 .. eval_points - 1

(fewer when steps + 1 < eval_points: a step is evaluated once). The subset is
`evaluate.spread(test, eval_prompts)`, seed 0: the same prompts for every method and RL seed.

Evaluating does not change training: greedy decoding draws no random number (sampling.next_token
at temperature 0 is an argmax), `sample` restores the policy's train/eval mode and runs without
autograd, and nothing touches the optimiser, so a run with curves trains bit for bit the policy of
a run without (tests/test_curves.py).
"""

from pathlib import Path

from nanobias import distributed
from nanobias.answers import extract_answer
from nanobias.bbq import Example
from nanobias.evaluate import generate_answers, spread
from nanobias.metrics import bias_metrics

POINT_KEYS = ("acc_ambig", "acc_disambig", "s_amb", "s_dis", "invalid_rate")


def curve_steps(steps: int, points: int) -> list[int]:
    """The steps done at each evaluation: `points` evenly spaced over 0..steps, both ends included."""
    if points == 0:
        return []
    return sorted({round(i * steps / (points - 1)) for i in range(points)})


def curve_prompts(test: list[Example], n: int) -> list[Example]:
    """The fixed subset every curve is measured on: n test examples spread over the split (seed 0)."""
    return spread(test, n)


def answer_metrics(model, enc, examples: list[Example], desc: str = "curve") -> dict:
    """metrics.bias_metrics of the policy as it is now, answering `examples` greedily (evaluate.py's path);
    pretraining's reading curve takes them too (pretrain.py)."""
    completions = generate_answers(model, enc, examples, desc=desc)
    preds = [extract_answer(ex, c) for ex, c in zip(examples, completions)]
    return bias_metrics(examples, preds, completions)


def curve_point(model, enc, examples: list[Example], step: int, calls: int, desc: str = "curve") -> dict:
    """{"step", "calls", *POINT_KEYS, "n"} of the policy as it is now, answering `examples` greedily."""
    metrics = answer_metrics(model, enc, examples, desc)
    return {"step": step, "calls": calls, **{k: metrics[k] for k in POINT_KEYS}, "n": len(examples)}


class Curve:
    """A trainer's budget curve: `after(steps_done, ...)` adds a point when steps_done is one of
    `curve_steps(rl_cfg.steps, rl_cfg.eval_points)`. Rank 0 alone evaluates under torchrun (its
    policy is every rank's: the ranks train in lockstep), so the other ranks' curves stay empty."""

    def __init__(self, rl_cfg, test: list[Example], desc: str):
        self.steps = set(curve_steps(rl_cfg.steps, rl_cfg.eval_points))
        self.examples = curve_prompts(test, rl_cfg.eval_prompts) if self.steps else []
        self.calls_per_step, self.desc = rl_cfg.calls_per_step, desc
        self.points: list[dict] = []

    def after(self, steps_done: int, model, enc) -> None:
        if steps_done in self.steps and distributed.is_main():
            self.points.append(curve_point(model, enc, self.examples, steps_done,
                                           steps_done * self.calls_per_step, f"{self.desc} curve @{steps_done}"))


def curve_path(ckpt_path) -> Path:
    """`<stem>.curve.json` beside a checkpoint."""
    ckpt_path = Path(ckpt_path)
    return ckpt_path.with_name(ckpt_path.stem + ".curve.json")
