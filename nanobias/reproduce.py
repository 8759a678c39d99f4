"""`nanobias reproduce`: the whole pipeline in one command — debias the reward model, then the policy.

    tokenizer -> pretrain (planted bias) -> reward model (planted spurious cues)
      -> neuron intervention + baselines -> GRPO with the base and with the intervened reward model
      -> DPO -> PPO -> the reward models as annotators, DPO on each one's labels (annotate.py)
      -> evaluation -> report (results.json, report.md, PNG plots)

A run folder is identified by what made it (`run_identity`: the preset's values, data, categories,
seed, backend, initialisation, and the code) and resumes stage by stage (stages.py); pretraining and
reward-model training also resume from their last checkpoint inside their stage.

The RL stages and their evaluation run once per RL seed `seed, seed + 1, ..., seed + seeds - 1`
(preset key `seeds`), all from the one base policy and reward model. Seed `seed` keeps the files of a
one-seed run (`grpo.pt`, `stages/grpo.json`, ...); seed S writes `seed-S/grpo.pt` and the marker
`stages/grpo@seed-S.json`. `seeds` is not part of the identity, so a finished folder re-run with more
seeds trains only the new ones. results.json keeps the mean over seeds (`policy`, `stability`), the
sample std (`policy_std`, `stability_std`) and every seed's numbers (`policy_seeds`, `stability_seeds`).
"""

import shutil
import time
from dataclasses import replace
from pathlib import Path

import torch

from nanobias import annotate, distributed
from nanobias.checkpoint import write_json
from nanobias.data import load_splits
from nanobias.errors import UserError
from nanobias.metrics import mean_std
from nanobias.progress import format_seconds
from nanobias.stages import code_version, identity_problem, preset_settings, run_hash, run_stage, seed_folder
from nanobias.workers import run_jobs

RL_METHODS = ("dpo", "ppo", "grpo", "grpo_cirm")  # trained against the reward model; with budget curves
POLICIES = ("base", *RL_METHODS, *annotate.POLICIES)


def run_identity(preset, data, bbq_dir, seed, train_categories, eval_categories, backend, init_dir) -> dict:
    """Every setting that changes a result, and the code version: what a run folder is made by. Not
    `seeds`: each RL seed's results are the same whatever the number of seeds beside it."""
    return {"preset": preset.name, "settings": preset_settings(preset), "data": data,
            "bbq_dir": str(Path(bbq_dir).resolve()) if bbq_dir is not None else None,
            "train_categories": list(train_categories) if train_categories else None,
            "eval_categories": list(eval_categories), "seed": seed, "backend": backend,
            "init_dir": str(Path(init_dir).resolve()) if init_dir is not None else None, "code": code_version()}


def reproduce(preset, data: str = "synthetic", bbq_dir=None, seed: int = 0, out="runs/cpu-synthetic-0",
              train_categories=None, eval_categories=(), force: bool = False, backend: str = "auto",
              command: str = "", init_dir=None, workers: int = 1) -> dict:
    """Run every stage into `out`; returns results.json's content (docs/design.md). With `init_dir` (a Hugging
    Face GPT-2 folder) pretraining starts from GPT-2's weights and its tiktoken `gpt2` encoding. `workers`:
    single-thread processes for the RL stages and the evaluations (1: in this process)."""
    from nanobias import curves, intervention, reward, reward_eval, rl, selection
    from nanobias.pretrain import pretrain_policy
    from nanobias.report import write_report

    out = Path(out)
    total_start = time.perf_counter()
    splits = load_splits(data, bbq_dir=bbq_dir, variants_per_template=preset.variants_per_template,
                         train_categories=train_categories, eval_categories=eval_categories)
    identity = run_identity(preset, data, bbq_dir, seed, train_categories, eval_categories, backend, init_dir)
    problem = distributed.from_main(lambda: identity_problem(out, identity, force))
    if problem:
        raise UserError(problem)
    identity_hash = run_hash(identity)
    if distributed.is_main():
        print(f"data: {data}, {len(splits.train)} train / {len(splits.val)} val / {len(splits.test)} test examples, "
              f"{len(splits.heldout)} in held-out categories {list(eval_categories) or '(none)'}")
    seconds, results = {}, {}

    def stage(name, fn, every_rank=False):
        results[name], seconds[name] = run_stage(out, name, fn, force, every_rank, identity_hash)
        return results[name]

    def pretrain_stage():
        model, enc = pretrain_policy(splits, preset.pretrain, preset.model, out, seed=seed, resume=not force,
                                     init_dir=init_dir)
        return {"policy": "policy.pt", "params": model.num_params(), "n_vocab": enc.n_vocab,
                **({"init": "gpt2"} if init_dir is not None else {})}

    stage("pretrain", pretrain_stage, every_rank=True)
    stage("reward", lambda: {"reward": str(reward.train_reward_model(
        splits, out / "policy.pt", out / "reward.pt", preset.reward, preset.pairs, seed=seed, resume=not force))},
          every_rank=True)
    stage("intervene", lambda: {"intervention": str(selection.select_intervention(
        splits, out / "reward.pt", out / "intervention.json", preset.intervention, preset.pairs, seed=seed))})
    reward_model = stage("reward_eval", lambda: reward_eval.evaluate_reward_models(
        splits, out / "reward.pt", out / "intervention.json", out, preset.reward_eval, preset.pairs, seed=seed))

    # the RL stages read only the base policy and the reward model: single-thread workers run them
    # at once, the longest method first, its seeds one after another (workers.py)
    if distributed.world_size() > 1:
        workers = 1  # under torchrun every process trains every stage together instead
    rl_seeds = list(range(seed, seed + preset.seeds))
    folders = {s: seed_folder(out, s, seed) for s in rl_seeds}
    empty = not intervention.load_intervention(out / "intervention.json").neurons
    # each RL seed's pool of preference pairs, labelled by every annotator for the DPO policies (annotate.py)
    annotated = run_jobs([(annotate.annotate_stage, s, out, splits, preset, seed, force, identity_hash)
                          for s in rl_seeds], workers)
    for s, (result, took) in zip(rl_seeds, annotated):
        results["annotate" + folders[s][1]], seconds["annotate" + folders[s][1]] = result, took
    # an empty intervention scores exactly as the base reward model, so GRPO+CIRM would repeat GRPO's
    # run step for step (same seed), as DPO on two identical label sets would: reuse the first run
    copies = {(name, s): source for s, (result, _) in zip(rl_seeds, annotated)
              for name, source in {**result["copies"], **({"grpo_cirm": "grpo"} if empty else {})}.items() if source}
    jobs = [(name, s) for name in (*RL_METHODS, *annotate.POLICIES) for s in rl_seeds
            if (name, s) not in copies]
    args = (out, out / "policy.pt", out / "reward.pt", out / "intervention.json", splits, preset, seed, backend, force,
            identity_hash)
    for (name, s), (result, took) in zip(jobs, run_jobs([(rl_stage, name, s, *args) for name, s in jobs], workers)):
        label = name + folders[s][1]
        results[label], seconds[label] = result, took

    def copy_run(name, source, folder, tag):
        if distributed.is_main():
            print(f"{name}{tag}: " + ("the intervention edits no neuron; GRPO+CIRM is GRPO's run" if name == "grpo_cirm"
                                       else f"the same labels as {source}'s: its run") + ", copied")
            for path in (Path(f"{source}.pt"), rl.metrics_path(f"{source}.pt"), rl.reward_curve_path(f"{source}.pt"),
                         curves.curve_path(f"{source}.pt")):
                if (folder / path).exists():  # a run without reward probes drew no reward curve
                    shutil.copyfile(folder / path, folder / path.name.replace(source, name, 1))
        return results[source + tag]
    for (name, s), source in copies.items():  # stage() calls its fn at once, with these values
        stage(name + folders[s][1], lambda: copy_run(name, source, *folders[s]), every_rank=True)
    training = {name: [results[name + tag] for _, tag in folders.values()]
                for name in RL_METHODS}

    def evaluate(folder, names):
        evaluated = run_jobs([(evaluate_policy_file, folder, name, splits, preset.eval_examples) for name in names],
                             workers)
        return dict(zip(names, evaluated))

    # greedy decoding is deterministic: the base policy is evaluated once, beside seed `seed`'s policies
    evaluated = [stage("eval" + tag, lambda: evaluate(folder, POLICIES if tag == "" else POLICIES[1:]))
                 for folder, tag in folders.values()]
    policy_seeds = {name: [{k: v for k, v in e[name].items() if k != "samples"} for e in evaluated if name in e]
                    for name in POLICIES}
    stability_seeds = {name: [t["stability"] for t in training[name]] for name in ("grpo", "ppo", "dpo")}
    policy_mean, policy_std = over_seeds(policy_seeds)
    stability_mean, stability_std = over_seeds(stability_seeds)
    seconds["total"] = time.perf_counter() - total_start
    results_json = {
        "preset": preset.name, "data": data, "seed": seed, "seeds": rl_seeds, "identity": identity, "seconds": seconds,
        # pretraining's and the reward model's numbers depend on the thread count; RL runs at one (workers.py)
        "threads": {"training": torch.get_num_threads(), "workers": workers},
        "policy": policy_mean, "policy_std": policy_std, "policy_seeds": policy_seeds,
        "reward_model": reward_model,
        "stability": stability_mean, "stability_std": stability_std, "stability_seeds": stability_seeds,
        "annotation": {a: annotate.summarise([r["counts"][a] for r, _ in annotated]) for a in annotate.ANNOTATORS},
        "curves": {name: [t["curve"] for t in runs] for name, runs in training.items()},  # curves.py, per seed
        "budget": budget(preset),
        "command": command,
        "eval_categories": list(eval_categories),
    }
    write_json(out / "results.json", results_json)
    if not distributed.is_main():
        return results_json
    write_report(out, results_json, {name: [t["history"] for t in runs] for name, runs in training.items()},
                 evaluated[0])
    print(f"wrote {out / 'results.json'}, {out / 'report.md'} and plots in {format_seconds(seconds['total'])}")
    return results_json


def over_seeds(runs: dict[str, list[dict]]) -> tuple[dict, dict]:
    """{name: [one dict per seed]} -> ({name: mean over seeds}, {name: std}) (metrics.mean_std)."""
    both = {name: mean_std(dicts) for name, dicts in runs.items()}
    return {name: m for name, (m, _) in both.items()}, {name: s for name, (_, s) in both.items()}


def rl_stage(name, rl_seed, out: Path, policy: Path, reward: Path, intervention: Path, splits, preset, seed, backend,
             force, identity_hash):
    """One RL stage of RL seed `rl_seed` from the `policy`, `reward` and `intervention` files, as reproduce
    and sweep run it, here or in a worker: its checkpoint and marker go into `out` -> (result, seconds)."""
    from nanobias import dpo, grpo, ppo, rl

    folder, tag = seed_folder(out, rl_seed, seed)
    ckpt = folder / f"{name}.pt"

    def train():  # the reward model is loaded only when the stage runs, not when it is skipped
        scorer = rl.make_scorer(reward, intervention if name == "grpo_cirm" else None)
        if name == "dpo":
            return dpo.train_dpo(splits, policy, ckpt, preset.rl, preset.dpo, preset.pairs, seed=rl_seed,
                                 backend=backend, score_fn=scorer)
        if name in annotate.POLICIES:
            # DPO on an annotator's labels of its pool: its policy is the result, so no reward probe
            # (stability) and no budget curve, which would double the run's time
            pairs = annotate.annotated_pairs(folder, name, splits, preset, rl_seed)
            return dpo.train_dpo(splits, policy, ckpt, replace(preset.rl, eval_points=0), preset.dpo, preset.pairs,
                                 seed=rl_seed, backend=backend, pairs=pairs)
        if name == "ppo":
            return ppo.train_ppo(splits, policy, ckpt, scorer, preset.rl, preset.ppo, rl_seed, backend)
        # grpo and grpo_cirm: the same trainer; the scorer applies the intervention
        return grpo.train_grpo(splits, policy, ckpt, scorer, preset.rl, preset.grpo, rl_seed, backend)

    return run_stage(out, name + tag, train, force, every_rank=True, identity=identity_hash)


def evaluate_policy_file(out: Path, name: str, splits, max_examples) -> dict:
    """A policy's metrics as results.json keeps them (three samples), here or in a worker."""
    from nanobias.evaluate import evaluate_checkpoint

    metrics = evaluate_checkpoint(out / ("policy.pt" if name == "base" else f"{name}.pt"), splits, max_examples, name)
    return {**{k: v for k, v in metrics.items() if k != "samples"}, "samples": metrics["samples"][:3]}


def budget(preset) -> dict:
    """What each method may spend: the same number of reward-model calls (DPO: preference pairs)."""
    rl_cfg = preset.rl
    calls = rl_cfg.steps * rl_cfg.prompts_per_step * rl_cfg.group_size
    return {"steps": rl_cfg.steps, "prompts_per_step": rl_cfg.prompts_per_step, "group_size": rl_cfg.group_size,
            "reward_model_calls": {"grpo": calls, "grpo_cirm": calls, "ppo": calls}, "dpo_preference_pairs": calls,
            "max_new_tokens": rl_cfg.max_new_tokens}
