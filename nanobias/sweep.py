"""`nanobias sweep KEY=V1,V2,...`: one setting over several values, everything else as a finished run.

    for each value v:   preset_v = the base run's preset with KEY = v
                        re-run only the stages KEY changes, from the base run's files, RL seeds seed .. seed+n-1
    table:              per value and method, mean ± sample std over the n seeds (metrics.mean_std) of
                        acc_ambig, acc_disambig, s_amb, mean_len and the reward fluctuation (rl.stability)

The base (`--base`), a finished `nanobias reproduce` folder, is read and never written: its identity.json
gives the preset, data and seed, its policy.pt starts every value, and its reward.pt and intervention.json
serve unless KEY changes them. The stages a key re-runs (and its default methods; --methods overrides):

    rl.* grpo.* ppo.* dpo.*     the methods' RL stages and their evaluation  (rl.*: grpo; grpo.*: grpo; ...)
    intervention.*              the intervention and reward_eval, then the methods       (grpo_cirm)
    reward.* pairs.*            reward model, intervention, reward_eval, then the methods (grpo, grpo_cirm)
    reward_eval.*               reward_eval only
    eval_examples               the evaluation of the base run's own policies            (base, grpo)
    model.* pretrain.* variants_per_template   refused: they change the base policy

Equal budgets: a GRPO step costs B*G reward-model calls; rl.group_size=G also sets B = (the base's B*G) / G.

Writes out/<KEY>=<v>/ per value (its checkpoints, reward_eval.json, identity.json and stage markers:
stages.py), so an interrupted sweep resumes and a re-run with more --seeds trains only the new seeds;
then out/sweep.json, sweep.md (the table) and sweep.png (each metric against the value, error bars).
"""

import json
from pathlib import Path

from nanobias.checkpoint import write_atomic, write_json
from nanobias.errors import UserError
from nanobias.metrics import mean_and_std, mean_std
from nanobias.reproduce import budget, evaluate_policy_file, rl_stage
from nanobias.stages import (base_preset, code_version, identity_problem, preset_settings, read_base, run_hash,
                             run_stage, seed_folder)

METHODS = ("dpo", "ppo", "grpo", "grpo_cirm")  # the longest first, as reproduce runs them
# mean_len (characters) shows a policy exploiting the reward model's length cue
COLUMNS = ("acc_ambig", "acc_disambig", "s_amb", "mean_len", "reward_fluctuation")
# the reward-model stages a key's section re-runs, in order (reward_eval's results are the job's)
REWARD_STAGES = {"reward": ("reward", "intervene", "reward_eval"), "pairs": ("reward", "intervene", "reward_eval"),
                 "intervention": ("intervene", "reward_eval"), "reward_eval": ("reward_eval",)}
DEFAULT_METHODS = {"rl": ("grpo",), "grpo": ("grpo",), "ppo": ("ppo",), "dpo": ("dpo",), "intervention": ("grpo_cirm",),
                   "reward": ("grpo", "grpo_cirm"), "pairs": ("grpo", "grpo_cirm"), "reward_eval": (),
                   "eval_examples": ("base", "grpo")}


def parse_sweep(text: str, preset: str) -> tuple[str, list]:
    """'KEY=V1,V2,...' -> (KEY, [values]), each value typed and checked as `--set KEY=V` is for `preset`."""
    from nanobias.presets import parse_setting

    key, eq, raw = text.partition("=")
    key = key.strip()
    section = key.partition(".")[0]
    if section in ("model", "pretrain") or key == "variants_per_template":
        raise UserError(f"sweep {key}: a sweep starts from --base's policy, which {key} would change; "
                        f"run `nanobias reproduce --set {key}=V --out DIR` per value instead")
    if key in ("seeds", "cuda_fast"):  # the RL seeds are --seeds; cuda_fast is how, not what, a run computes
        raise UserError(f"sweep {key}: not a setting a sweep varies (RL seeds: --seeds N)")
    parts = split_values(raw) if eq else []
    if not parts or any(not p.strip() for p in parts):
        raise UserError(f"sweep {text!r}: expected KEY=V1,V2,... (e.g. rl.group_size=4,8)")
    try:
        values = [parse_setting(f"{key}={part}", preset, flag="sweep")[1] for part in parts]
    except ValueError as e:
        raise UserError(str(e)) from None
    if len(set(map(label, values))) < len(values):
        raise UserError(f"sweep {text!r}: a value is given twice")
    return key, values


def split_values(raw: str) -> list[str]:
    """Split at the commas outside brackets: '[1,2],[3]' -> ['[1,2]', '[3]'] (a tuple or dict setting's values)."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(raw):
        depth += {"[": 1, "{": 1, "]": -1, "}": -1}.get(ch, 0)
        if ch == "," and depth == 0:
            parts.append(raw[start:i])
            start = i + 1
    return parts + [raw[start:]]


def label(value) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def value_preset(identity: dict, key: str, value):
    """The base run's preset with KEY = value (and, for rl.group_size, the same B*G reward-model calls)."""
    overrides = {key: value}
    if key == "rl.group_size":
        rl = identity["settings"]["rl"]
        calls = rl["prompts_per_step"] * rl["group_size"]
        if calls % value:
            raise UserError(f"sweep rl.group_size={value}: the base run's B*G = {calls} reward-model calls per step "
                            f"is not a multiple of G = {value}, so no prompts_per_step keeps the budget equal")
        overrides["rl.prompts_per_step"] = calls // value
    return base_preset(identity, overrides, flag=f"sweep {key}={label(value)}")


def reward_job(out: Path, base: Path, splits, preset, seed: int, stages: tuple, force: bool, identity_hash: str):
    """The reward-model stages of one value into `out`, with reproduce's functions: -> reward_eval's results."""
    from nanobias import reward, reward_eval, selection

    print(f"sweep: {out.name}", flush=True)
    reward_ckpt, chosen = reward_files(out, base, stages)
    work = {"reward": lambda: {"reward": str(reward.train_reward_model(
                splits, base / "policy.pt", reward_ckpt, preset.reward, preset.pairs, seed=seed, resume=not force))},
            "intervene": lambda: {"intervention": str(selection.select_intervention(
                splits, reward_ckpt, chosen, preset.intervention, preset.pairs, seed=seed))},
            "reward_eval": lambda: reward_eval.evaluate_reward_models(
                splits, reward_ckpt, chosen, out, preset.reward_eval, preset.pairs, seed=seed)}
    return [run_stage(out, name, work[name], force, identity=identity_hash)[0] for name in stages][-1]


def reward_files(out: Path, base: Path, stages: tuple) -> tuple[Path, Path]:
    """(reward model, intervention) a value's methods use: its own where its stages make them, else the base's."""
    return ((out if "reward" in stages else base) / "reward.pt",
            (out if "intervene" in stages else base) / "intervention.json")


def rl_job(out: Path, name: str, rl_seed: int, *files_and_settings):
    """reproduce.rl_stage for one value, its checkpoint and marker in `out`: -> the stage's result."""
    print(f"sweep: {out.name}", flush=True)
    return rl_stage(name, rl_seed, out, *files_and_settings)[0]


def eval_job(out: Path, name: str, rl_seed: int, seed: int, policies: Path, splits, max_examples, force: bool,
             identity_hash: str) -> dict:
    """One policy's evaluation (reproduce.evaluate_policy_file) from `policies`, its marker in `out`."""
    folder, tag = seed_folder(policies, rl_seed, seed)
    print(f"sweep: {out.name}", flush=True)
    metrics = run_stage(out, f"eval-{name}{tag}", lambda: evaluate_policy_file(folder, name, splits, max_examples),
                        force, identity=identity_hash)[0]
    return {k: v for k, v in metrics.items() if k != "samples"}


def plan(key: str, methods) -> tuple[tuple, tuple]:
    """(the reward-model stages KEY re-runs, the methods it trains and evaluates) (module docstring)."""
    section = key.partition(".")[0]  # eval_examples: the key itself
    methods = tuple(methods) if methods else DEFAULT_METHODS[section]
    if any(m not in ("base", *METHODS) for m in methods):
        raise UserError(f"--methods {','.join(methods)}: expected names from base,{','.join(METHODS)}")
    return REWARD_STAGES.get(section, ()), methods


def run_sweep(setting: str, base, out, seeds: int = 1, methods=None, workers: int = 1, force: bool = False,
              command: str = "") -> dict:
    """The whole sweep (module docstring); returns sweep.json's content."""
    from nanobias import device
    from nanobias.data import load_splits
    from nanobias.workers import run_jobs

    base, out = Path(base), Path(out)
    identity = read_base(base, out, ("pretrain", "reward", "intervene"))
    key, values = parse_sweep(setting, identity["preset"])
    stages, methods = plan(key, methods)
    presets = {label(v): value_preset(identity, key, v) for v in values}
    folders = {v: out / f"{key}={v}" for v in presets}
    seed, rl_seeds = identity["seed"], list(range(identity["seed"], identity["seed"] + seeds))

    def policies(v, m):  # where a policy's checkpoints are: the base run's own, or this value's
        return base if m == "base" or key == "eval_examples" else folders[v]

    eval_grid = [(v, m, s) for v in presets for m in methods for s in (rl_seeds[:1] if m == "base" else rl_seeds)]
    for v, m, s in eval_grid:
        path = seed_folder(policies(v, m), s, seed)[0] / ("policy.pt" if m == "base" else f"{m}.pt")
        if policies(v, m) == base and not path.is_file():
            raise UserError(f"--seeds {seeds}: {base} has no {m} policy of RL seed {s}; its run trained fewer seeds")
    idents = {v: {"experiment": "sweep", "base": run_hash(identity), "key": key, "value": v,
                  "settings": preset_settings(p), "code": code_version()} for v, p in presets.items()}
    for problem in (identity_problem(folders[v], ident, force) for v, ident in idents.items()):  # before any work
        if problem:
            raise UserError(problem)
    hashes = {v: run_hash(ident) for v, ident in idents.items()}
    first = next(iter(presets.values()))  # the values share the data: variants_per_template is not swept
    device.configure(fast=first.cuda_fast)
    splits = load_splits(identity["data"], bbq_dir=identity["bbq_dir"],
                         variants_per_template=first.variants_per_template,
                         train_categories=identity["train_categories"], eval_categories=identity["eval_categories"])
    print(f"sweep {key} over {list(presets)}: {', '.join(methods) or 'no methods'} x {seeds} RL seed(s) "
          f"{rl_seeds}, from {base}" + (f"; re-running {', '.join(stages)}" if stages else ""))

    rewards = dict(zip(presets, run_jobs([(reward_job, folders[v], base, splits, p, seed, stages, force, hashes[v])
                                          for v, p in presets.items()], workers))) if stages else {}
    rl_grid = [(v, m, s) for v in presets for m in METHODS if m in methods and key != "eval_examples" for s in rl_seeds]
    trained = run_jobs([(rl_job, folders[v], m, s, base / "policy.pt", *reward_files(folders[v], base, stages), splits,
                         presets[v], seed, identity["backend"], force, hashes[v]) for v, m, s in rl_grid], workers)
    evaluated = run_jobs([(eval_job, folders[v], m, s, seed, policies(v, m), splits, presets[v].eval_examples, force,
                           hashes[v]) for v, m, s in eval_grid], workers)

    runs = {v: {"folder": str(folders[v]), "budget": budget(p), "reward_model": rewards.get(v), "methods": {}}
            for v, p in presets.items()}
    for v, m in dict.fromkeys((v, m) for v, m, _ in eval_grid):
        policy_seeds = [e for (v2, m2, _), e in zip(eval_grid, evaluated) if (v2, m2) == (v, m)]
        policy, policy_std = mean_std(policy_seeds)
        runs[v]["methods"][m] = {"policy": policy, "policy_std": policy_std, "policy_seeds": policy_seeds,
                                 "stability_seeds": [t["stability"] for (v2, m2, _), t in zip(rl_grid, trained)
                                                     if (v2, m2) == (v, m)]}
    ran = [*stages, *(["rl"] if rl_grid else []), *(["eval"] if eval_grid else [])]
    results = {"key": key, "values": values, "labels": list(presets), "base": str(base), "preset": identity["preset"],
               "seeds": rl_seeds, "methods": list(methods), "stages": ran, "command": command,
               "equal_calls": key == "rl.group_size", "runs": runs}
    write_outputs(out, results)
    print(f"wrote {out / 'sweep.json'}, {out / 'sweep.md'} and {out / 'sweep.png'}")
    return results


# ---------------------------------------------------------------- table and plot

def column_values(method_run: dict, column: str) -> list[float]:
    """One column's numbers, a value per seed (reward fluctuation: per RL seed, from the stage's training)."""
    runs = method_run["stability_seeds" if column == "reward_fluctuation" else "policy_seeds"]
    return [r[column] for r in runs if column in r]


def cell(xs: list[float], digits: int = 3) -> str:
    return "{:.{d}f} ± {:.{d}f}".format(*mean_and_std(xs), d=digits) if xs else "-"


def report(results: dict) -> str:
    key, runs = results["key"], results["runs"]
    lines = [f"# Sweep of `{key}` from `{results['base']}` (preset `{results['preset']}`)", "",
             f"`{results['command']}`" if results["command"] else "", "",
             f"RL seeds {results['seeds']}; cells are mean ± sample std over the seeds, n = seeds evaluated "
             "(the base policy is evaluated once: greedy decoding is deterministic)."]
    if results["equal_calls"]:
        calls = sorted({r["budget"]["reward_model_calls"]["grpo"] for r in runs.values()})
        lines += ["", f"Equal reward-model calls: rl.prompts_per_step B is set to the base's B*G / G, so every value "
                  f"spends steps x B*G = {', '.join(map(str, calls))} calls ("
                  + ", ".join(f"G={v}: B={r['budget']['prompts_per_step']}" for v, r in runs.items()) + ")."]
    if results["methods"]:
        lines += ["", f"| {key} | method | " + " | ".join(COLUMNS) + " | n |",
                  "|---|---|" + "---|" * (len(COLUMNS) + 1)]
        for v, run in runs.items():
            for m, mr in run["methods"].items():
                cells = [cell(column_values(mr, c), 1 if c == "mean_len" else 3) for c in COLUMNS]
                lines.append(f"| {v} | {m} | " + " | ".join(cells) + f" | {len(mr['policy_seeds'])} |")
    if any(r["reward_model"] for r in runs.values()):
        lines += ["", "Reward model (test pairs; one reward model per value, the base run's seed):", "",
                  f"| {key} | base acc | cirm acc | base length sens. | cirm length sens. | neurons edited |",
                  "|---|---|---|---|---|---|"]
        for v, run in runs.items():
            rm = run["reward_model"]
            nums = [rm.get(m, {}).get(k) for m, k in (("base", "acc"), ("cirm", "acc"))]
            nums += [rm.get(m, {}).get("sensitivity", {}).get("length") for m in ("base", "cirm")]
            lines.append(f"| {v} | " + " | ".join("-" if x is None else f"{x:.3f}" for x in nums)
                         + f" | {rm['neurons']['edited']} of {rm['neurons']['total']} |")
    return "\n".join(lines) + "\n"


def write_outputs(out: Path, results: dict) -> None:
    from nanobias.plots import plt, save_figure

    write_json(out / "sweep.json", results)
    write_atomic(out / "sweep.md", report(results).encode())
    labels, methods = results["labels"], results["methods"]
    fig, axes = plt.subplots(1, len(COLUMNS), figsize=(3.4 * len(COLUMNS), 3), constrained_layout=True)
    for ax, column in zip(axes, COLUMNS):
        for i, m in enumerate(methods):
            stats = [column_values(results["runs"][v]["methods"][m], column) for v in labels]
            shift = 0.04 * (i - (len(methods) - 1) / 2)  # methods side by side, their error bars apart
            points = [(x + shift, *mean_and_std(xs)) for x, xs in enumerate(stats) if xs]
            if points:
                xs, means, stds = zip(*points)
                ax.errorbar(xs, means, yerr=stds, marker="o", capsize=3, label=m)
        ax.set_xticks(range(len(labels)), labels)
        ax.set(xlabel=results["key"], title=column)
    if methods:  # acc_ambig has every method's line (reward_fluctuation none where no RL stage ran)
        fig.legend(*axes[0].get_legend_handles_labels(), fontsize=7, loc="outside right upper")
    save_figure(fig, out / "sweep.png")
