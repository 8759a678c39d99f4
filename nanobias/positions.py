"""`nanobias positions`: does the neuron intervention work when the reward model has to compute length?

With GPT-2's learned position table, "how long is this answer" can be read from where the text
ends: the table's row for the last position sits in the residual stream at the token the reward
head reads, and the head can take it from there without any MLP neuron in between (reward_eval's
`length_from_position` measures that part). With rotary positions (model.py) a score depends on
relative positions only, so a row shifted as a whole reads the same, and length has to be computed
by attention from the tokens, the way the paper's Gemma/Llama-based reward models must. That is
where the intervention acts: on neurons.

The experiment keeps everything else fixed: the same world, planted cues, budget and seeds. For each
position scheme it pretrains one policy (the run's seed) and evaluates it. Then, for each seed, it
trains a reward model from that policy, selects the intervention and evaluates every reward-model
variant (reward_eval.py). So the spread over seeds is the reward model's (its pairs, head and
batches), not the pretraining's. Writes into `out`:

    <scheme>/                 tokenizer.json, policy.pt, policy.metrics.jsonl
    <scheme>/seed-<s>/        reward.pt, intervention.json, reward_eval.json and its plots
    positions.json            per scheme: the policy's metrics, every seed's reward_eval, the table's numbers
    positions.md, positions.png   the tables (mean ± std over n seeds) and the length sensitivities

A job that finished under the same settings is skipped on a re-run (reproduce's stage markers in
`out/stages/`); adding seeds runs only the new ones.
"""

from dataclasses import replace
from pathlib import Path

import numpy as np

from nanobias.checkpoint import write_atomic, write_json
from nanobias.errors import UserError
from nanobias.metrics import mean_and_std
from nanobias.model import POSITIONS
from nanobias.plots import plt, save_figure
from nanobias.render import ATTRIBUTES
from nanobias.reward_eval import METHODS


def identity(preset, seeds_from: int) -> dict:
    """What the experiment's results depend on; the number of seeds is not in it (a folder grows)."""
    from nanobias.stages import code_version, preset_settings

    return {"experiment": "positions", "preset": preset.name, "settings": preset_settings(preset),
            "first_seed": seeds_from, "code": code_version()}


def scheme_preset(preset, scheme: str):
    return replace(preset, model=replace(preset.model, position=scheme))


def policy_job(out: Path, scheme: str, preset, seed: int, identity_hash: str, force: bool) -> dict:
    """Pretrain the scheme's policy and evaluate it: -> its metrics (no samples)."""
    from nanobias.data import load_splits
    from nanobias.evaluate import evaluate_checkpoint
    from nanobias.pretrain import pretrain_policy
    from nanobias.stages import run_stage

    def run():
        splits = load_splits("synthetic", variants_per_template=preset.variants_per_template)
        folder = out / scheme
        pretrain_policy(splits, preset.pretrain, preset.model, folder, seed=seed, resume=not force)
        metrics = evaluate_checkpoint(folder / "policy.pt", splits, preset.eval_examples, f"{scheme} policy")
        return {k: v for k, v in metrics.items() if k != "samples"}

    return run_stage(out, f"policy-{scheme}", run, force, identity=identity_hash)[0]


def reward_job(out: Path, scheme: str, preset, seed: int, identity_hash: str, force: bool) -> dict:
    """Reward model, intervention and reward_eval for one (scheme, seed): -> reward_eval's results."""
    from nanobias.data import load_splits
    from nanobias.selection import select_intervention
    from nanobias.stages import run_stage
    from nanobias.reward import train_reward_model
    from nanobias.reward_eval import evaluate_reward_models

    def run():
        splits = load_splits("synthetic", variants_per_template=preset.variants_per_template)
        folder = out / scheme / f"seed-{seed}"
        reward = train_reward_model(splits, out / scheme / "policy.pt", folder / "reward.pt", preset.reward,
                                    preset.pairs, seed=seed, resume=not force)
        chosen = select_intervention(splits, reward, folder / "intervention.json", preset.intervention,
                                     preset.pairs, seed=seed)
        return evaluate_reward_models(splits, reward, chosen, folder, preset.reward_eval, preset.pairs, seed=seed)

    return run_stage(out, f"reward-{scheme}-seed-{seed}", run, force, identity=identity_hash)[0]


def run_positions(preset, out, seeds: int = 3, seed: int = 0, workers: int = 1, force: bool = False,
                  schemes=POSITIONS) -> dict:
    """The whole experiment (module docstring); returns positions.json's content."""
    from nanobias.stages import identity_problem, run_hash
    from nanobias.workers import run_jobs

    if preset.name == "smoke":
        print("positions: the smoke preset's models are untrained; its numbers check the plumbing only")
    out = Path(out)
    ident = identity(preset, seed)
    problem = identity_problem(out, ident, force)
    if problem:
        raise UserError(problem)
    identity_hash = run_hash(ident)
    presets = {s: scheme_preset(preset, s) for s in schemes}
    policies = run_jobs([(policy_job, out, s, presets[s], seed, identity_hash, force) for s in schemes], workers)
    grid = [(s, seed + i) for i in range(seeds) for s in schemes]
    rewards = run_jobs([(reward_job, out, s, presets[s], r, identity_hash, force) for s, r in grid], workers)
    results = {"preset": preset.name, "seeds": list(range(seed, seed + seeds)), "schemes": {}}
    for s, policy in zip(schemes, policies):
        per_seed = [r for (scheme, _), r in zip(grid, rewards) if scheme == s]
        results["schemes"][s] = {"policy": policy, "reward_eval": per_seed, "summary": summarise(per_seed)}
    write_outputs(out, results)
    print(report(results))
    return results


# ---------------------------------------------------------------- numbers

def summarise(per_seed: list[dict]) -> dict:
    """The table's numbers for one scheme: {name: [value per seed]}. The intervention's effects are
    differences within a seed (edited minus base, same pairs), not differences of means."""
    values = {}
    for m in METHODS:
        values[f"{m}.acc"] = [r[m]["acc"] for r in per_seed]
        values[f"{m}.length_biased"] = [r[m]["acc_biased"]["length"] for r in per_seed]
        values[f"{m}.length_unbiased"] = [r[m]["acc_unbiased"]["length"] for r in per_seed]
        for a in ATTRIBUTES:
            values[f"{m}.sens.{a}"] = [r[m]["sensitivity"][a] for r in per_seed]
    values["length_from_position"] = [r["length_from_position"] for r in per_seed]
    values["length_from_words"] = [b - p for b, p in zip(values["base.sens.length"], values["length_from_position"])]
    for m in ("cirm", "all_neurons"):
        values[f"{m}.delta_sens"] = [e - b for e, b in zip(values[f"{m}.sens.length"], values["base.sens.length"])]
    values["cirm.delta_unbiased"] = [e - b for e, b in zip(values["cirm.length_unbiased"],
                                                           values["base.length_unbiased"])]
    values["neurons_edited"] = [r["neurons"]["edited"] / r["neurons"]["total"] for r in per_seed]
    return values


def cell(xs: list, fmt: str = ".3f") -> str:
    """mean ± sample std (metrics.mean_and_std) over the values that exist; the plain value for one."""
    xs = [x for x in xs if x is not None]
    if not xs:
        return "-"
    mean, std = mean_and_std(xs)
    return f"{mean:{fmt}} ± {std:{fmt.lstrip('+')}}" if len(xs) > 1 else format(mean, fmt)


def report(results: dict) -> str:
    schemes = results["schemes"]
    n = len(results["seeds"])
    lines = [f"# Learned vs rotary positions: the reward model and the intervention (preset `{results['preset']}`)",
             "", f"Mean ± std over n = {n} reward-model seeds {results['seeds']}, one pretrained policy per scheme.", "",
             "| scheme | policy acc_disambig | policy biased_ambig | RM acc | length sens | from positions | "
             "from words | cirm: Δ length sens | cirm: Δ length-unbiased acc | all_neurons: Δ length sens | "
             "neurons edited |", "|---|" + "---|" * 10]
    for s, r in schemes.items():
        v = r["summary"]
        lines.append(f"| {s} | {r['policy']['acc_disambig']:.3f} | {r['policy']['biased_ambig']:.3f} | "
                     f"{cell(v['base.acc'])} | {cell(v['base.sens.length'], '+.3f')} | "
                     f"{cell(v['length_from_position'], '+.3f')} | {cell(v['length_from_words'], '+.3f')} | "
                     f"{cell(v['cirm.delta_sens'], '+.3f')} | {cell(v['cirm.delta_unbiased'], '+.3f')} | "
                     f"{cell(v['all_neurons.delta_sens'], '+.3f')} | {cell(v['neurons_edited'], '.3f')} |")
    lines += ["", "length sens: the base reward's change when only the length grows, in reward std units; from "
              "positions: what the same text gains when read where the longer one ends (0 under rotary, by "
              "construction); from words: the rest. Δ: the edited reward model minus the base one, seed by seed. "
              "Neurons edited: share of all MLP neurons.", "",
              "| scheme | method | acc | length: biased | unbiased | " + " | ".join(f"sens {a}" for a in ATTRIBUTES)
              + " |", "|---|---|---|---|---|" + "---|" * len(ATTRIBUTES)]
    for s, r in schemes.items():
        v = r["summary"]
        for m in METHODS:
            lines.append(f"| {s} | {m} | {cell(v[f'{m}.acc'])} | {cell(v[f'{m}.length_biased'])} | "
                         f"{cell(v[f'{m}.length_unbiased'])} | "
                         + " | ".join(cell(v[f"{m}.sens.{a}"], "+.3f") for a in ATTRIBUTES) + " |")
    return "\n".join(lines + ["", "![length sensitivity](positions.png)", ""])


def write_outputs(out: Path, results: dict) -> None:
    """positions.json, positions.md and positions.png (the tables can be redrawn from the JSON alone)."""
    write_json(out / "positions.json", results)
    write_atomic(out / "positions.md", report(results).encode())
    plot_length_sensitivity(results, out / "positions.png")


def plot_length_sensitivity(results: dict, path) -> None:
    """Bars: each method's length sensitivity per scheme, mean with std error bars, seeds as dots."""
    schemes = list(results["schemes"])
    fig, ax = plt.subplots(figsize=(7, 3.2))
    width = 0.8 / len(schemes)
    for k, s in enumerate(schemes):
        v = results["schemes"][s]["summary"]
        xs = np.arange(len(METHODS)) + (k - (len(schemes) - 1) / 2) * width
        stats = [mean_and_std(v[f"{m}.sens.length"]) for m in METHODS]
        ax.bar(xs, [m for m, _ in stats], width, yerr=[e for _, e in stats], capsize=3, label=s)
        for x, m in zip(xs, METHODS):
            ax.plot([x] * len(v[f"{m}.sens.length"]), v[f"{m}.sens.length"], "k.", ms=3)
    ax.set_xticks(range(len(METHODS)))
    ax.set_xticklabels(METHODS, rotation=15)
    ax.axhline(0, color="gray", lw=0.8)
    ax.set_ylabel("length sensitivity (reward std)")
    ax.set_title(f"length sensitivity by position scheme ({len(results['seeds'])} seeds)")
    ax.legend(fontsize=8)
    save_figure(fig, path)
