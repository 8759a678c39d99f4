"""The policy's bias evaluation, with BBQ's metrics (Parrish et al., 2022; BiasGRPO Sec. 4).

The policy writes free text after "Answer:"; `extract_answer` (answers.py) reads the option it
picks as a person would: a leading letter, else the first option it names without denying it
("Not the grandfather; it was the grandson." -> the grandson), any wording of "unknown" counting
for the unknown option. Nothing recognisable -> invalid (None).

The answers are then scored with BBQ's metrics (metrics.py), and, beside them, the same examples as
multiple choice (choice.py: the option the policy finds most likely, never invalid).
"""

import random
from pathlib import Path

import torch

from nanobias.answers import extract_answer
from nanobias.bbq import Example
from nanobias.choice import choice_metrics, choice_table
from nanobias.metrics import format_table, metrics_with_breakdown, table_rows
from nanobias.progress import Progress
from nanobias.render import render_prompt
from nanobias.sampling import completion_texts, sample


def oracle_rewards(examples: list[Example], completions: list[str]) -> torch.Tensor:
    """The "oracle" reward from the world's labels, a stand-in for a reward model (never the default):
    1 for the labelled answer (which is "unknown" in every ambiguous context), else 0.  [N]"""
    return torch.tensor([float(extract_answer(ex, c) == ex.label) for ex, c in zip(examples, completions)])


@torch.no_grad()
def generate_answers(model, enc, examples: list[Example], max_new_tokens: int = 48, batch_size: int = 64,
                     temperature: float = 0.0, seed: int = 0, desc: str = "eval") -> list[str]:
    """Completions of every example's prompt (greedy by default)."""
    completions = []
    progress = Progress(len(examples), desc, unit="prompts")
    for start in range(0, len(examples), batch_size):
        chunk = examples[start:start + batch_size]
        prompts = [enc.encode_ordinary(render_prompt(ex)) for ex in chunk]
        samples = sample(model, prompts, enc.eot_token, max_new_tokens=max_new_tokens,
                         temperature=temperature, seed=seed + start)
        completions += completion_texts(enc, samples)
        progress.update(len(completions))
    return completions


def spread(examples: list[Example], n: int | None, seed: int = 0) -> list[Example]:
    """At most n examples, drawn at random (seeded) and kept in their original order; all if n is None.

    Not a prefix (splits are ordered by category and template) and not a fixed stride (items come
    in blocks of four conditions, so a stride of 4 would keep one condition only)."""
    if n is None or len(examples) <= n:
        return list(examples)
    keep = sorted(random.Random(seed).sample(range(len(examples)), n))
    return [examples[i] for i in keep]


def evaluate_policy(model, enc, test: list[Example], heldout: list[Example] = (), max_examples: int | None = None,
                    **generate_kw) -> dict:
    """Metrics on the test split, per category, and on held-out categories apart (each cut to
    `max_examples` by `spread`); "choice" on each: the same examples scored as multiple choice
    ({"raw", "norm"}, choice.py)."""
    test, heldout = spread(test, max_examples), spread(heldout, max_examples)
    completions = generate_answers(model, enc, list(test) + list(heldout), **generate_kw)
    preds = [extract_answer(ex, c) for ex, c in zip(list(test) + list(heldout), completions)]
    n = len(test)
    out = metrics_with_breakdown(list(test), preds[:n], completions[:n])
    out["heldout"] = metrics_with_breakdown(list(heldout), preds[n:], completions[n:]) if heldout else {}
    out["choice"] = choice_metrics(model, enc, test)
    if heldout:
        out["heldout"]["choice"] = choice_metrics(model, enc, heldout)
    out["samples"] = [{"prompt": render_prompt(ex), "completion": c, "pred": p, "label": ex.label,
                       "biased": ex.biased_index, "unknown": ex.unknown_index}
                      for ex, c, p in list(zip(test, completions, preds))[:8]]
    return out


def evaluate_checkpoint(path, splits, max_examples: int | None, name: str | None = None) -> dict:
    """evaluate_policy for the policy checkpoint at `path` on `splits.test` and `splits.heldout`: the one
    evaluation path of the CLI, reproduce, the tutorials and the tests."""
    from nanobias.checkpoint import load_policy

    model, enc, _ = load_policy(path)
    return evaluate_policy(model, enc, splits.test, splits.heldout, max_examples=max_examples,
                           desc=f"eval {name or Path(path).stem}")


def format_tables(rows: dict[str, dict]) -> str:
    """The free-text metrics table and the multiple-choice one, for the same {row name: metrics}."""
    return format_table(rows) + "\n" + choice_table(rows)


def report_rl_run(path, name: str, splits, base_ckpt, ckpt, result: dict, max_examples: int | None, **about) -> None:
    """Evaluate the starting and the trained policy, print both and the stability, write `path`
    ({**about, "policy": {"base", name}, "stability", "history"}); rank 0 alone under torchrun."""
    from nanobias import distributed
    from nanobias.checkpoint import write_json

    if not distributed.is_main():
        return
    base = evaluate_checkpoint(base_ckpt, splits, max_examples, "base")
    trained = evaluate_checkpoint(ckpt, splits, max_examples, name)
    print("\n" + format_tables({**table_rows("base", base), **table_rows(name, trained)}))
    print(f"reward_fluctuation {result['stability']['reward_fluctuation']:.4f}, "
          f"final_reward_mean {result['stability']['final_reward_mean']:.4f}")
    write_json(path, {**about, "policy": {"base": base, name: trained}, **result})
    print(f"wrote {ckpt} and {path}")
