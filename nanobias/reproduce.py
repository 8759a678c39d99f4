"""`nanobias reproduce`: the whole pipeline in one command — debias the reward model, then the policy.

    tokenizer -> pretrain (planted bias) -> reward model (planted spurious cues)
      -> neuron intervention + baselines -> GRPO with the base and with the intervened reward model
      -> DPO -> PPO -> evaluation -> report (results.json, report.md, PNG plots)

Every stage writes its outputs atomically and then a marker `stages/<stage>.json` holding its
result and wall time. A re-run skips the stages whose marker exists (`force=True` redoes them),
so an interrupted run resumes where it stopped; pretraining and reward-model training also
resume from their last checkpoint inside the stage.

Under torchrun every process runs the training stages (pretrain, reward, grpo, grpo_cirm, dpo,
ppo) on its share of each batch; rank 0 alone runs the others (tokenizer, neuron search,
evaluation, report) while the rest wait, and sends every rank each stage's result.
"""

import json
import shutil
import time
from pathlib import Path

from nanobias import distributed
from nanobias.checkpoint import load_policy, write_json
from nanobias.data import load_splits
from nanobias.progress import format_seconds

POLICIES = ("base", "dpo", "ppo", "grpo", "grpo_cirm")


def run_stage(out: Path, name: str, fn, force: bool, every_rank: bool = False):
    """Run `fn()` unless `out/stages/<name>.json` says it finished; return its JSON-able result.
    Under torchrun: on every rank if `every_rank` (a training stage), else on rank 0 alone."""
    marker = out / "stages" / f"{name}.json"
    say = print if distributed.is_main() else lambda *a, **k: None
    done = distributed.from_main(lambda: json.loads(marker.read_text()) if marker.is_file() and not force else None)
    if done is not None:
        say(f"[{name}] already done ({format_seconds(done['seconds'])}), skipped", flush=True)
        return done["result"], done["seconds"]
    say(f"[{name}] start", flush=True)
    start = time.perf_counter()
    result = fn() if every_rank or distributed.is_main() else None
    seconds = time.perf_counter() - start
    write_json(marker, {"seconds": seconds, "result": result})
    say(f"[{name}] done in {format_seconds(seconds)}", flush=True)
    return distributed.from_main(lambda: result), seconds


def reproduce(preset, data: str = "synthetic", bbq_dir=None, seed: int = 0, out="runs/cpu-synthetic-0",
              train_categories=None, eval_categories=(), force: bool = False, backend: str = "auto",
              command: str = "", init_dir=None) -> dict:
    """Run every stage into `out`; returns results.json's content (DESIGN.md). With `init_dir` (a Hugging
    Face GPT-2 folder) pretraining starts from GPT-2's weights and its tiktoken `gpt2` encoding."""
    from nanobias import dpo, grpo, intervention, ppo, reward, reward_eval, rl
    from nanobias.evaluate import evaluate_policy
    from nanobias.pretrain import pretrain_policy
    from nanobias.report import write_report

    out = Path(out)
    total_start = time.perf_counter()
    splits = load_splits(data, bbq_dir=bbq_dir, variants_per_template=preset.variants_per_template,
                         train_categories=train_categories, eval_categories=eval_categories)
    if distributed.is_main():
        print(f"data: {data}, {len(splits.train)} train / {len(splits.val)} val / {len(splits.test)} test examples, "
              f"{len(splits.heldout)} in held-out categories {list(eval_categories) or '(none)'}")
    seconds, results = {}, {}

    def stage(name, fn, every_rank=False):
        results[name], seconds[name] = run_stage(out, name, fn, force, every_rank)
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
    stage("intervene", lambda: {"intervention": str(intervention.select_intervention(
        splits, out / "reward.pt", out / "intervention.json", preset.intervention, preset.pairs, seed=seed))})
    reward_model = stage("reward_eval", lambda: reward_eval.evaluate_reward_models(
        splits, out / "reward.pt", out / "intervention.json", out, preset.reward_eval, preset.pairs, seed=seed))

    base_scorer = rl.make_scorer(out / "reward.pt")
    cirm_scorer = rl.make_scorer(out / "reward.pt", out / "intervention.json")

    def grpo_cirm_stage():
        if intervention.load_intervention(out / "intervention.json").neurons:
            return grpo.train_grpo(splits, out / "policy.pt", out / "grpo_cirm.pt", cirm_scorer, preset.rl, preset.grpo,
                                   seed, backend)
        # an empty intervention scores exactly as the base reward model, so GRPO+CIRM would repeat
        # GRPO's run step for step (same seed): reuse it rather than spend the time again
        if distributed.is_main():
            print("grpo_cirm: the intervention edits no neuron; GRPO+CIRM is GRPO's run, copied")
            for path in (Path("grpo.pt"), rl.metrics_path("grpo.pt"), rl.reward_curve_path("grpo.pt")):
                shutil.copyfile(out / path, out / str(path).replace("grpo", "grpo_cirm", 1))
        return training["grpo"]

    trainers = {
        "grpo": lambda: grpo.train_grpo(splits, out / "policy.pt", out / "grpo.pt", base_scorer, preset.rl, preset.grpo,
                                        seed, backend),
        "grpo_cirm": grpo_cirm_stage,
        "dpo": lambda: dpo.train_dpo(splits, out / "policy.pt", out / "dpo.pt", preset.rl, preset.dpo, preset.pairs,
                                     seed=seed, backend=backend, score_fn=base_scorer),
        "ppo": lambda: ppo.train_ppo(splits, out / "policy.pt", out / "ppo.pt", base_scorer, preset.rl, preset.ppo,
                                     seed, backend),
    }
    training = {}
    for name, fn in trainers.items():
        training[name] = stage(name, fn, every_rank=True)

    def evaluate_all():
        policy = {}
        for name in POLICIES:
            model, enc, _ = load_policy(out / ("policy.pt" if name == "base" else f"{name}.pt"))
            metrics = evaluate_policy(model, enc, splits.test, splits.heldout, max_examples=preset.eval_examples,
                                      desc=f"eval {name}")
            policy[name] = {k: v for k, v in metrics.items() if k != "samples"}
            policy[name]["samples"] = metrics["samples"][:3]
        return policy

    policy = stage("eval", evaluate_all)
    seconds["total"] = time.perf_counter() - total_start
    results_json = {
        "preset": preset.name, "data": data, "seed": seed, "seconds": seconds,
        "policy": {name: {k: v for k, v in m.items() if k != "samples"} for name, m in policy.items()},
        "reward_model": reward_model,
        "stability": {name: training[name]["stability"] for name in ("grpo", "ppo", "dpo")},
        "budget": budget(preset),
        "command": command,
        "eval_categories": list(eval_categories),
    }
    write_json(out / "results.json", results_json)
    if not distributed.is_main():
        return results_json
    write_report(out, results_json, {name: t["history"] for name, t in training.items()}, policy)
    print(f"wrote {out / 'results.json'}, {out / 'report.md'} and plots in {format_seconds(seconds['total'])}")
    return results_json


def budget(preset) -> dict:
    """What each method may spend: the same number of reward-model calls (DPO: preference pairs)."""
    rl_cfg = preset.rl
    calls = rl_cfg.steps * rl_cfg.prompts_per_step * rl_cfg.group_size
    return {"steps": rl_cfg.steps, "prompts_per_step": rl_cfg.prompts_per_step, "group_size": rl_cfg.group_size,
            "reward_model_calls": {"grpo": calls, "grpo_cirm": calls, "ppo": calls}, "dpo_preference_pairs": calls,
            "max_new_tokens": rl_cfg.max_new_tokens}
