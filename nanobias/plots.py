"""Plots of the pipeline's results, written as PNG files (matplotlib, Agg backend: no display).

Each function takes plain numbers (the JSON results), draws one figure and writes it atomically.
"""

import io
from pathlib import Path

import matplotlib

from nanobias.checkpoint import write_atomic

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)


def save_figure(fig, path) -> None:
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    write_atomic(path, png.getvalue())


def neurons_per_layer(per_layer: list[int], total_per_layer: int, path, title: str = "") -> None:
    """Bar chart: how many MLP neurons the intervention edits in each layer."""
    fig, ax = plt.subplots(figsize=(max(4, 0.5 * len(per_layer) + 2), 3))
    ax.bar(range(len(per_layer)), per_layer, color="tab:red")
    ax.set_xticks(range(len(per_layer)))
    ax.set_xlabel("layer")
    ax.set_ylabel(f"neurons edited (of {total_per_layer} per layer)")
    ax.set_title(title or f"selected bias neurons: {sum(per_layer)} of {total_per_layer * len(per_layer)}")
    if not sum(per_layer):
        ax.set_ylim(0, 1)
        ax.text(0.5, 0.5, "the intervention edits no neuron (k = 0 was best on validation)", ha="center",
                va="center", transform=ax.transAxes)
    save_figure(fig, path)


def biased_vs_unbiased(results: dict[str, dict], attributes, path) -> None:
    """Grouped bars: per attribute, accuracy on the biased and the unbiased subset of each method.

    results: {method: {"acc_biased": {attribute: x}, "acc_unbiased": {attribute: x}}}."""
    methods = list(results)
    fig, axes = plt.subplots(1, 2, figsize=(2.2 * len(attributes) + 2, 3.2), sharey=True)
    width = 0.8 / len(methods)
    for ax, subset in zip(axes, ("acc_biased", "acc_unbiased")):
        for m, method in enumerate(methods):
            values = [results[method][subset].get(a) for a in attributes]
            xs = [i + (m - (len(methods) - 1) / 2) * width for i in range(len(attributes))]
            ax.bar(xs, [float("nan") if v is None else v for v in values], width, label=method)
        ax.set_xticks(range(len(attributes)))
        ax.set_xticklabels(attributes, rotation=20)
        ax.set_title(subset.replace("acc_", "") + " subset")
        ax.axhline(0.5, color="gray", lw=0.8, ls="--")
        ax.set_ylim(0, 1)
    axes[0].set_ylabel("pairwise accuracy")
    axes[1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1))
    save_figure(fig, path)


def policy_metrics(policy: dict[str, dict], path, keys=("acc_ambig", "acc_disambig", "s_amb", "s_dis"),
                   std: dict[str, dict] | None = None) -> None:
    """Grouped bars: the policy metrics of each method (reproduce.POLICIES); a method in
    `std` ({method: metrics' std over seeds}) gets error bars of one std."""
    methods = list(policy)
    fig, ax = plt.subplots(figsize=(7, 3.2))
    width = 0.8 / len(methods)
    for m, method in enumerate(methods):
        xs = [i + (m - (len(methods) - 1) / 2) * width for i in range(len(keys))]
        no_answer = policy[method].get("invalid_rate", 0) == 1  # every metric is 0 then: say so, not "unbiased"
        spread = (std or {}).get(method)
        ax.bar(xs, [policy[method][k] for k in keys], width, yerr=[spread[k] for k in keys] if spread else None,
               capsize=2, label=method + (" (no valid answer)" if no_answer else ""))
    ax.set_xticks(range(len(keys)))
    ax.set_xticklabels(keys)
    ax.axhline(0, color="gray", lw=0.8)
    ax.set_ylim(-1, 1)
    ax.set_title("policy on held-out test templates" + (" (error bars: std over seeds)" if std else ""))
    # below the axes, three to a row: nine policies overflow one row and cover the bars inside
    ax.legend(fontsize=7, ncol=min(len(methods), 3), loc="upper center", bbox_to_anchor=(0.5, -0.12))
    save_figure(fig, path)


def completion_length(histories: dict[str, list[dict]], path) -> None:
    """Mean completion length (characters) per training step, one line per run."""
    fig, ax = plt.subplots(figsize=(6, 3.2))
    drawn = {}
    for name, history in histories.items():
        same = next((other for other, h in drawn.items() if h == history), None)  # a copied run hides under the other
        ax.plot([h["step"] for h in history], [h["completion_len"] for h in history], ls="--" if same else "-",
                label=f"{name} (= {same}: the same run)" if same else name)
        drawn[name] = history
    ax.set_xlabel("step")
    ax.set_ylabel("mean completion length (chars)")
    ax.legend()
    save_figure(fig, path)


def reward_curves(histories: dict[str, list], path) -> Path:
    """{method: per-step history, or a list of them (one per seed)} -> PNG of the batch reward per step
    (the steps that scored a reward: DPO probes only every probe_every steps). One run: its batch mean
    (line) +- std (band); several seeds: the mean over seeds of the batch mean (line) and its min..max
    over seeds (band)."""
    fig, ax = plt.subplots(figsize=(6, 3.5))
    several = False
    for name, runs in histories.items():
        runs = runs if runs and isinstance(runs[0], list) else [runs]
        runs = [[h for h in history if "reward_mean" in h] for history in runs]  # DPO probes every probe_every steps
        steps = [h["step"] for h in runs[0]]
        if len(runs) == 1:
            mean = [h["reward_mean"] for h in runs[0]]
            low = [m - h["reward_std"] for m, h in zip(mean, runs[0])]
            high = [m + h["reward_std"] for m, h in zip(mean, runs[0])]
        else:
            several = True
            per_step = [[h["reward_mean"] for h in step] for step in zip(*runs)]
            mean, low, high = ([sum(v) / len(v) for v in per_step], [min(v) for v in per_step],
                               [max(v) for v in per_step])
        ax.plot(steps, mean, label=name + (f" ({len(runs)} seeds)" if len(runs) > 1 else ""))
        ax.fill_between(steps, low, high, alpha=0.2)
    ax.set_xlabel("step")
    ax.set_ylabel("reward (batch mean: mean, min..max over seeds)" if several else "reward (batch mean \u00b1 std)")
    ax.legend()
    save_figure(fig, path)
    return Path(path)


def budget_curves(curves: dict[str, list[list[dict]]], path, keys=("acc_ambig", "acc_disambig")) -> Path:
    """{method: [one budget curve per seed: [{"calls", key: x, ...} per point]]} (curves.py) -> PNG, one
    panel per key against reward-model calls (DPO: preference pairs): per method the mean over seeds
    (line) and its min..max over seeds (band). A method whose curves equal another's (GRPO+CIRM
    copied from GRPO) is dashed and says so."""
    fig, axes = plt.subplots(1, len(keys), figsize=(5 * len(keys), 3.5), sharey=True)
    drawn = {}
    for name, runs in curves.items():
        same = next((other for other, r in drawn.items() if r == runs), None)
        drawn[name] = runs
        calls = [p["calls"] for p in runs[0]]
        label = (name + (f" (= {same}: the same run)" if same else "")
                 + (f" ({len(runs)} seeds)" if len(runs) > 1 else ""))
        for ax, key in zip(axes, keys):
            per_point = [[p[key] for p in point] for point in zip(*runs)]  # [points][seeds]
            line, = ax.plot(calls, [sum(v) / len(v) for v in per_point], marker="o", ms=3, ls="--" if same else "-",
                            label=label)
            if len(runs) > 1:
                ax.fill_between(calls, [min(v) for v in per_point], [max(v) for v in per_point], alpha=0.2,
                                color=line.get_color())
    for ax, key in zip(axes, keys):
        ax.set_title(key)
        ax.set_xlabel("reward-model calls (DPO: preference pairs)")
        ax.set_ylim(-0.02, 1.02)
    several = any(len(runs) > 1 for runs in curves.values())
    axes[0].set_ylabel("accuracy, fixed test prompts" + ("\n(mean; band: min..max over seeds)" if several else ""))
    axes[-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1))
    save_figure(fig, path)
    return Path(path)


def reading_curves(runs: dict[str, list[dict]], path) -> None:
    """acc_disambig (reading a context that says who) and biased_ambig (the planted bias) against the
    documents' tokens trained on, one line pair per pretraining run. runs: {label: policy.metrics.jsonl
    records}, those with "acc_disambig" being the evaluations (PretrainConfig.eval_prompts)."""
    fig, ax = plt.subplots(figsize=(6.5, 3.5))
    for (label, records), color in zip(runs.items(), plt.rcParams["axes.prop_cycle"].by_key()["color"]):
        seen, xs, points = 0.0, [], []
        for r in records:
            seen += r.get("tokens", 0.0)
            if "acc_disambig" in r:
                xs.append(seen / 1e6)
                points.append(r)
        ax.plot(xs, [p["acc_disambig"] for p in points], "-o", ms=3, color=color, label=f"{label}: acc_disambig")
        ax.plot(xs, [p["biased_ambig"] for p in points], "--", color=color, label=f"{label}: biased_ambig")
    ax.axhline(0.98, color="gray", lw=0.8, ls=":")
    ax.set_xlabel("training tokens (millions, padding excluded)")
    ax.set_ylabel("share of test prompts")
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title("pretraining: reading disambiguated contexts, and the planted bias")
    save_figure(fig, path)
