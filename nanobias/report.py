"""The run's report: report.md with every table, and the plots beside it (PNG)."""

import os
import platform
import subprocess
from datetime import date
from pathlib import Path

import torch

from nanobias import plots
from nanobias.annotate import format_annotation_table
from nanobias.checkpoint import write_atomic
from nanobias.claims import claims_table, format_claims
from nanobias.choice import choice_table
from nanobias.metrics import format_table, mean_std
from nanobias.progress import format_seconds
from nanobias.reward_eval import format_reward_table

STABILITY_METHODS = ("grpo", "ppo", "dpo")


def machine() -> str:
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU, {os.cpu_count()} cores"
    return f"{device}; {platform.system()} {platform.machine()}; Python {platform.python_version()}; torch {torch.__version__}"


def commit() -> str:
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).parent, timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, cwd=Path(__file__).parent, timeout=5).stdout.strip()
        return (sha + ("+uncommitted changes" if dirty else "")) or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def write_report(out: Path, results: dict, histories: dict[str, list[list[dict]]], policy: dict) -> None:
    """report.md and the plots, from results.json's content, the per-step training histories (one per RL
    seed, the first of seed `seed`) and seed `seed`'s evaluations (`policy`, with samples)."""
    out = Path(out)
    n = len(results["seeds"])
    # a policy trained once per seed shows mean ± std; the base policy, evaluated once, its value
    std = {m: s for m, s in results["policy_std"].items() if len(results["policy_seeds"][m]) > 1}
    plots.reward_curves({m: histories[m] for m in STABILITY_METHODS if histories.get(m)}, out / "reward_curves.png")
    plots.policy_metrics(results["policy"], out / "policy_metrics.png", std=std)
    plots.completion_length({m: histories[m][0] for m in ("grpo", "grpo_cirm")}, out / "completion_length.png")
    curves = {m: runs for m, runs in results["curves"].items() if runs[0]}  # none with rl.eval_points=0
    if curves:
        plots.budget_curves(curves, out / "budget_curves.png")
    rm = results["reward_model"]
    heldout = {m: v["heldout"] for m, v in results["policy"].items() if v.get("heldout")}
    stability, stability_std = results["stability"], results["stability_std"] if n > 1 else None
    budget = results["budget"]
    over = f"mean ± std over {n} RL seeds ({', '.join(map(str, results['seeds']))})" if n > 1 else ""

    def stability_cell(m, k):
        return f"{stability[m][k]:.4f}" + (f" ± {stability_std[m][k]:.4f}" if stability_std else "")
    lines = [
        f"# nanobias report: preset `{results['preset']}`, data `{results['data']}`, seed {results['seed']}",
        "",
        *(["> **The smoke preset is a plumbing check.** Its models train for seconds and are not meant to answer:",
           "> the numbers below show that every stage runs, not what the methods do (an invalid_rate of 1",
           "> makes every bias score 0). Run `--preset cpu` for results.", ""] if results["preset"] == "smoke" else []),
        f"- command: `{results['command']}`",
        f"- machine: {machine()}",
        f"- commit: {commit()}, date: {date.today().isoformat()}",
        "",
        f"## Policy (held-out test templates; greedy decoding{'; ' + over if over else ''})",
        "",
        "acc_ambig: share of ambiguous questions answered \"unknown\" (higher is better). acc_disambig: share",
        "of disambiguated questions answered correctly. s_amb / s_dis: BBQ bias scores, 0 = unbiased,",
        "+1 = always the biased answer (the stereotyped person for a negative question, the other one for",
        "a non-negative one). mean_len: completion length in characters.",
        "",
        *([f"The base policy is evaluated once; every other row is the mean ± sample std of {n} RL runs from",
           "it and the one reward model (results.json: policy_seeds holds each run's numbers).", ""] if n > 1 else []),
        format_table(results["policy"], std),
    ]
    if heldout:
        heldout_std = {m: s["heldout"] for m, s in std.items()}
        lines += [f"Held-out categories ({', '.join(results['eval_categories'])}), never trained on:", "",
                  format_table(heldout, heldout_std), choice_table(heldout, heldout_std)]
    if any(v.get("choice") for v in results["policy"].values()):
        lines += ["The same test examples as multiple choice, as BBQ is usually reported for language models:",
                  "the option the policy finds most likely after \"Answer:\" (never invalid).", "",
                  choice_table(results["policy"], std)]
    lines += ["![policy metrics](policy_metrics.png)", "",
              f"Per category (acc_ambig / s_amb{', means over seeds' if n > 1 else ''}):", ""]
    cats = sorted(next(iter(results["policy"].values()))["per_category"])
    lines += ["| method | " + " | ".join(cats) + " |", "|---|" + "---|" * len(cats)]
    for m, v in results["policy"].items():
        lines.append(f"| {m} | " + " | ".join(
            f"{v['per_category'][c]['acc_ambig']:.2f} / {v['per_category'][c]['s_amb']:+.2f}" for c in cats) + " |")
    lines += ["", "Sample completions (base policy):", ""]
    for s in policy["base"].get("samples", []):
        lines += ["```", s["prompt"] + s["completion"], "```"]
    lines += [
        "",
        "## Reward model (held-out preference pairs)",
        "",
        "acc: pairwise accuracy; ambig / who_did_it / not_unknown: on pairs where unknown beats a person",
        "(ambiguous context), the right person beats the other one (disambiguated: does it read who did it?)",
        "and the right person beats unknown (disambiguated). Per attribute a, \"b / u / sens\": accuracy on",
        "pairs whose chosen side has the larger (b, biased subset) / smaller (u, unbiased subset) value of a,",
        "and the sensitivity: mean reward change when only a grows, in units of the reward's standard",
        "deviation (0 = a is ignored).",
        "cirm: the neuron intervention at the last token; cirm_all: at every position; all_neurons: every",
        "MLP neuron clamped at the last token, the most any last-token neuron edit could remove (what it",
        "leaves reaches the reward head through attention and, with learned positions, the position table).",
        "",
        format_reward_table(rm),
        "![neurons per layer](neurons_per_layer.png) ![biased vs unbiased](reward_biased_unbiased.png)",
        "",
        "## Reward models as annotators (CIRM's downstream use)",
        "",
        f"Each reward model labels a held-out pool of {budget['dpo_preference_pairs']} planted preference pairs per",
        "RL seed (chosen = the higher reward; a tie counts against the true label). agreement: share of labels",
        "equal to the true one; favours more a: share of labels whose chosen side has more of a (pairs tied in",
        "a left out); the true labels show the cue planted in the pool. DPO then trains on each set (the",
        "same pairs, only the labels differ; the true labels' row is `dpo`, on another draw of such pairs).",
        "",
        format_annotation_table(results),
        f"## Training stability and budget{' (' + over + ')' if over else ''}",
        "",
        "| method | reward_fluctuation | final_reward_mean |", "|---|---|---|",
        *[f"| {m} | {stability_cell(m, 'reward_fluctuation')} | {stability_cell(m, 'final_reward_mean')} |"
          for m in STABILITY_METHODS if stability.get(m)],
        "",
        f"Budget: {budget['steps']} steps x {budget['prompts_per_step']} prompts x {budget['group_size']} "
        f"completions = {budget['reward_model_calls']['grpo']} reward-model calls for GRPO, GRPO+CIRM and PPO; "
        f"DPO trains on {budget['dpo_preference_pairs']} preference pairs. Completions up to "
        f"{budget['max_new_tokens']} tokens.",
        "",
        "![reward curves](reward_curves.png) ![completion length](completion_length.png)",
        "",
        *(curve_section(curves) if curves else []),
        "## The papers' claims at this scale",
        "",
        "Each claim as a comparison a > b; a - b with its standard error (seeds for policies, held-out pairs",
        "for the one reward model); reproduced / reversed when a - b clears twice its standard error in the",
        "paper's / the other direction, else not reproduced (claims.py).",
        "",
        format_claims(claims_table(results)),
        "## Time per stage",
        "",
        "| stage | wall time |", "|---|---|",
        *[f"| {k} | {format_seconds(v)} |" for k, v in results["seconds"].items()],
        "",
    ]
    write_atomic(out / "report.md", "\n".join(lines).encode())


def curve_section(curves: dict[str, list[list[dict]]]) -> list[str]:
    """The budget curves' lines of report.md: what they are, acc_ambig / acc_disambig at each point (the
    mean over seeds; the last point mean ± std with several seeds), the plot."""
    first = next(iter(curves.values()))[0]
    several = any(len(runs) > 1 for runs in curves.values())
    lines = ["## Budget curves", "",
             f"Every trained policy answered the same {first[0]['n']} test prompts greedily at {len(first)} evenly "
             "spaced points of its", "training (step 0 is the base policy). Columns: reward-model calls spent so far "
             "(DPO: preference pairs);", "cells: acc_ambig / acc_disambig"
             + (", the mean over seeds (± the std at the last point)." if several else "."), "",
             "| method | " + " | ".join(str(p["calls"]) for p in first) + " |", "|---|" + "---|" * len(first)]
    for m, runs in curves.items():
        means, stds = zip(*(mean_std(list(point)) for point in zip(*runs)))
        cells = [f"{p['acc_ambig']:.2f} / {p['acc_disambig']:.2f}" for p in means]
        if len(runs) > 1:
            cells[-1] = (f"{means[-1]['acc_ambig']:.2f} ± {stds[-1]['acc_ambig']:.2f} / "
                         f"{means[-1]['acc_disambig']:.2f} ± {stds[-1]['acc_disambig']:.2f}")
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return lines + ["", "![budget curves](budget_curves.png)", ""]
