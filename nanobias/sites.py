"""`nanobias sites`: where the intervention clamps and how it picks, compared on one finished run.

For the reward model of a finished `nanobias reproduce` folder (--base: its reward.pt; its preset,
data and seed from its identity.json; nothing is written there), one intervention per site
(intervention.SITES: the MLP's post-activation, its pre-activation, the attention query) and
selection (selection.SELECTIONS: Spearman rho, the paper's; the single-feature effect, an ablation),
each fitted on the run's validation pairs with k per attribute searched on validation accuracy, and
evaluated by reward_eval.evaluate_reward_models on the run's test pairs (the metrics of its
reward_eval stage, one path). Writes into --out:

    <site>-<selection>/   intervention.json, reward_eval.json and its plots
    sites.json            the table's numbers per variant, and every variant's reward_eval
    sites.md, sites.png   the table; length sensitivity and length-unbiased accuracy per variant

Each variant is a stage (stages.py): a re-run skips those finished under the same base and code.
"""

import json
from dataclasses import replace
from pathlib import Path

import numpy as np

from nanobias.checkpoint import write_atomic, write_json
from nanobias.errors import UserError
from nanobias.intervention import SITES
from nanobias.plots import plt, save_figure
from nanobias.render import ATTRIBUTES

VARIANTS = [(site, selection) for site in SITES for selection in ("spearman", "effect")]


def run_sites(base, out, force: bool = False) -> dict:
    """Every (site x selection) intervention on the base run's reward model (module docstring); returns
    sites.json's content."""
    from nanobias.data import load_splits
    from nanobias.reward_eval import evaluate_reward_models
    from nanobias.selection import select_intervention
    from nanobias.stages import base_preset, code_version, identity_problem, read_base, run_hash, run_stage

    base, out = Path(base), Path(out)
    base_identity = read_base(base, out, ("reward",))
    preset = base_preset(base_identity)
    if preset.name == "smoke":
        print("sites: the smoke preset's models are untrained; its numbers check the plumbing only")
    splits = load_splits(base_identity["data"], bbq_dir=base_identity.get("bbq_dir"),
                         variants_per_template=preset.variants_per_template,
                         train_categories=base_identity.get("train_categories"),
                         eval_categories=base_identity.get("eval_categories", ()))
    identity = {"experiment": "sites", "base": str(base.resolve()), "base_identity": run_hash(base_identity),
                "code": code_version()}
    problem = identity_problem(out, identity, force)
    if problem:
        raise UserError(problem)
    seed, reward = base_identity["seed"], base / "reward.pt"
    results = {"base": str(base), "preset": preset.name, "variants": {}}

    for site, selection in VARIANTS:
        name = f"{site}-{selection}"
        folder = out / name

        def fit_and_evaluate():
            cfg = replace(preset.intervention, site=site, selection=selection)
            path = select_intervention(splits, reward, folder / "intervention.json", cfg, preset.pairs, seed=seed)
            evaluated = evaluate_reward_models(splits, reward, path, folder, preset.reward_eval, preset.pairs,
                                               seed=seed)
            search = json.loads(path.read_text())
            return {"val_acc": search["val_acc"], "base_val_acc": search["base_val_acc"], "reward_eval": evaluated}

        result, seconds = run_stage(out, name, fit_and_evaluate, force, identity=run_hash(identity))
        results["variants"][name] = {"site": site, "selection": selection, "seconds": seconds, **result}
    write_outputs(out, results)
    print(report(results))
    return results


# ---------------------------------------------------------------- the table

def rows(results: dict) -> list[dict]:
    """One row per reward model: the base one (as every variant's reward_eval measured it), then each variant."""
    variants = results["variants"]
    first = next(iter(variants.values()))["reward_eval"]["base"]
    out = [{"name": "base", **row_numbers(first), "edited": 0, "total": None, "k": None, "seconds": None}]
    for name, v in variants.items():
        neurons = v["reward_eval"]["neurons"]
        out.append({"name": name, **row_numbers(v["reward_eval"]["cirm"]), "edited": neurons["edited"],
                    "total": neurons["total"], "k": neurons["k"], "val_acc": v["val_acc"], "seconds": v["seconds"]})
    return out


def row_numbers(method: dict) -> dict:
    return {"acc": method["acc"], "length_unbiased": method["acc_unbiased"]["length"],
            "length_sens": method["sensitivity"]["length"]}


def report(results: dict) -> str:
    def fmt(x, spec):
        return "-" if x is None else format(x, spec)

    lines = [f"# Intervention sites x selections (preset `{results['preset']}`, base run `{results['base']}`)", "",
             "| reward model | acc | length-unbiased acc | length sens | features edited | % | k "
             + "/".join(ATTRIBUTES) + " | val acc | seconds |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows(results):
        share = f"{100 * r['edited'] / r['total']:.2f}" if r["total"] else "-"
        edited = f"{r['edited']} of {r['total']}" if r["total"] else str(r["edited"])
        k = "/".join(str(r["k"][a]) for a in ATTRIBUTES) if r["k"] else "-"
        lines.append(f"| {r['name']} | {r['acc']:.3f} | {fmt(r['length_unbiased'], '.3f')} | "
                     f"{fmt(r['length_sens'], '+.3f')} | {edited} | {share} | {k} | {fmt(r.get('val_acc'), '.3f')} | "
                     f"{fmt(r['seconds'], '.1f')} |")
    lines += ["", "Test pairs of the base run; each variant clamps at the last token (reward_eval's `cirm`). "
              "mlp: the MLP's post-activation (the run's own intervention), up: its pre-activation, query: the "
              "attention query. spearman: top-k and bottom-k by rho (the paper's); effect: the 2k features whose "
              "clamp alone shrinks the reward's response to the attribute most (an ablation). length sens: reward "
              "change per length bump in reward std; %: of the site's features; seconds: fit + evaluation.",
              "", "![sites](sites.png)", ""]
    return "\n".join(lines)


def write_outputs(out: Path, results: dict) -> None:
    write_json(out / "sites.json", {**results, "table": rows(results)})
    write_atomic(out / "sites.md", report(results).encode())
    plot_sites(rows(results), out / "sites.png")


def plot_sites(table: list[dict], path) -> None:
    """Two bar panels, one bar per reward model: length sensitivity and length-unbiased accuracy."""
    names = [r["name"] for r in table]
    fig, axes = plt.subplots(1, 2, figsize=(2 + 0.9 * len(names), 3.2))
    for ax, key, label in ((axes[0], "length_sens", "length sensitivity (reward std)"),
                           (axes[1], "length_unbiased", "length-unbiased accuracy")):
        values = [np.nan if r[key] is None else r[key] for r in table]
        ax.bar(range(len(names)), values, color=["gray"] + ["tab:blue", "tab:orange"] * len(SITES))
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names, rotation=35, ha="right", fontsize=8)
        ax.axhline(0 if key == "length_sens" else 0.5, color="gray", lw=0.8, ls="--")
        ax.set_ylabel(label)
    fig.suptitle("intervention sites x selections")
    save_figure(fig, path)
