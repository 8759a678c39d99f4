"""CIRM's downstream use: reward models annotate preference pairs, and DPO trains on their labels.

A pool of P pairs (x, y_c, y_r) whose true label is known (y_c gives the right answer) is labelled by
each annotator with reward r:

    keep_i   = [r(x_i, y_c,i) > r(x_i, y_r,i)]      keep: y_c stays chosen; else the two sides swap
                                                    (a tie swaps: a tie is wrong, as in reward_eval)
    agreement      = mean_i keep_i                                   (the true labels: 1)
    favours_more_a = #{i : A_a(chosen_i) > A_a(rejected_i)} / #{i : A_a(y_c,i) != A_a(y_r,i)}

with chosen_i / rejected_i the annotator's sides and A_a a style attribute (render.ATTRIBUTES). The
true labels' favours_more is the cue planted in the pool (pairs.planted): an annotator that follows the
cue beyond it is biased. Shinoda et al. (Sec. 6) report the length share falling from 54.85% (base
reward model) to 51.71% with the intervention (25.65% with the length penalty), and DPO on the
intervened model's labels winning more often.

Annotators: the true labels; the base reward model (`rm`); the intervention (`cirm`, at the last
token, as reward_eval scores it); the length penalty and LWR, fitted on validation pairs exactly as
reward_eval fits them (`length_baselines.fit_length_baselines`). DPO on each annotator's labels makes
the policies dpo_rm, dpo_cirm, dpo_length_penalty, dpo_lwr, at DPO's budget: the pool has
rl.steps * B * G pairs, one per RL seed (seed `POOL_SEED_OFFSET + rl_seed`: none of the reward
model's, DPO's, validation or test pairs), planted like the reward model's training pairs. The true
labels' DPO is the existing `dpo` (pairs of another draw of the same distribution). Two annotators
with identical labels train once; the second copies the first's files (an empty intervention:
dpo_cirm is dpo_rm).
"""

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from nanobias import distributed
from nanobias.checkpoint import write_json
from nanobias.preferences import Pair, make_pairs
from nanobias.render import ATTRIBUTES

ANNOTATORS = ("true", "rm", "cirm", "length_penalty", "lwr")
POLICY_OF = {"true": "dpo", **{a: f"dpo_{a}" for a in ANNOTATORS[1:]}}  # the DPO policy each set trains
POLICIES = tuple(POLICY_OF[a] for a in ANNOTATORS[1:])  # the policies this module adds
POOL_SEED_OFFSET = 500_000  # far from every other pair seed (seed, seed + 1, seed + 2, the RL seeds)
LABELS_FILE = "annotation.json"


def pool_pairs(splits, rl_cfg, pairs_cfg, rl_seed: int) -> list[Pair]:
    """The held-out pool of RL seed `rl_seed`: DPO's budget of planted training-split pairs."""
    return make_pairs(splits.train, rl_cfg.steps * rl_cfg.calls_per_step, POOL_SEED_OFFSET + rl_seed,
                      pairs_cfg.planted, pairs_cfg.biased_reject_rate)


def keep_labels(r) -> np.ndarray:
    """Rewards [2P] (chosen sides first) -> keep [P] bool: the annotator agrees with the true label."""
    r_c, r_r = np.split(np.asarray(r, np.float64), 2)
    return r_c > r_r


def relabel(pairs: list[Pair], keep) -> list[Pair]:
    """The pairs as the annotator labels them: chosen and rejected swapped where keep is False."""
    return [p if k else replace(p, chosen_style=p.rejected_style, rejected_style=p.chosen_style,
                                chosen=p.rejected, rejected=p.chosen) for p, k in zip(pairs, keep)]


def label_counts(pairs: list[Pair], keep) -> dict:
    """{"pairs": P, "agree": #keep, "more": {a: [#labels favouring more of a, #pairs differing in a]}}."""
    keep = np.asarray(keep, bool)
    more = {}
    for a in ATTRIBUTES:
        diff = np.array([p.chosen.attributes[a] - p.rejected.attributes[a] for p in pairs], np.float64)  # [P]
        differ = diff != 0
        more[a] = [int(((diff > 0) == keep)[differ].sum()), int(differ.sum())]
    return {"pairs": len(pairs), "agree": int(keep.sum()), "more": more}


def summarise(counts: list[dict]) -> dict:
    """label_counts of each RL seed's pool -> {"agreement", "favours_more": {a: share or None}, "pairs"},
    pooled over the pools."""
    n = sum(c["pairs"] for c in counts)
    more = {a: [sum(c["more"][a][j] for c in counts) for j in (0, 1)] for a in ATTRIBUTES}
    return {"agreement": sum(c["agree"] for c in counts) / n,
            "favours_more": {a: f / d if d else None for a, (f, d) in more.items()}, "pairs": n}


def sources(keeps: dict[str, np.ndarray]) -> dict[str, str | None]:
    """{annotator: keep [P]} -> {policy: None (train it) or the earlier policy whose labels are the same}."""
    out = {}
    for i, a in enumerate(ANNOTATORS[1:], 1):
        same = [b for b in ANNOTATORS[1:i] if np.array_equal(keeps[a], keeps[b]) and out[POLICY_OF[b]] is None]
        out[POLICY_OF[a]] = POLICY_OF[same[0]] if same else None
    return out


@torch.no_grad()
def annotator_rewards(rm, enc, intervention, baselines, pairs: list[Pair], chunk: int = 512) -> dict[str, np.ndarray]:
    """{annotator: rewards [2P], chosen sides first} of every reward annotator. `intervention` None or
    empty: cirm's rewards are rm's. Prefilled `chunk` sequences at a time (a whole pool's key-value
    cache would not fit in memory)."""
    from nanobias.intervention import last_token_rewards, prefill

    prompts = [p.prompt for p in pairs] * 2
    texts = [p.chosen.text for p in pairs] + [p.rejected.text for p in pairs]
    edits = intervention is not None and bool(intervention.neurons)
    base, cirm = [], []
    for start in range(0, len(texts), chunk):
        batches = prefill(rm, enc, prompts[start:start + chunk], texts[start:start + chunk])
        base.append(last_token_rewards(rm, batches).numpy().astype(np.float64))
        if edits:
            cirm.append(last_token_rewards(rm, batches, intervention).numpy().astype(np.float64))
    r = np.concatenate(base)
    lengths = np.array([len(t) for t in texts], np.float64)
    return {"rm": r, "cirm": np.concatenate(cirm) if edits else r, **baselines.debiased(r, lengths)}


def annotate_stage(rl_seed: int, out: Path, splits, preset, seed: int, force: bool, identity_hash: str):
    """Label RL seed `rl_seed`'s pool with every annotator, here or in a worker: writes `annotation.json`
    in its seed folder ({"pool_seed", "labels": {annotator: "1" keep / "0" swap per pair}}) and returns
    (marker result {"counts": {annotator: label_counts}, "copies": sources}, seconds)."""
    from nanobias.intervention import capture_pairs, load_intervention
    from nanobias.reward import load_reward_model
    from nanobias.length_baselines import fit_length_baselines
    from nanobias.reward_eval import validation_pairs
    from nanobias.stages import run_stage, seed_folder

    folder, tag = seed_folder(out, rl_seed, seed)

    def annotate():
        pool = pool_pairs(splits, preset.rl, preset.pairs, rl_seed)
        rm, enc, _ = load_reward_model(out / "reward.pt", device=distributed.device())
        val = validation_pairs(splits, preset.pairs, seed)
        _, r_val, _ = capture_pairs(rm, enc, val)  # [2V]: the baselines' fit, as reward_eval makes it
        rewards = annotator_rewards(rm, enc, load_intervention(out / "intervention.json"),
                                    fit_length_baselines(val, r_val.numpy()), pool)
        keeps = {"true": np.ones(len(pool), bool), **{a: keep_labels(r) for a, r in rewards.items()}}
        labels = {a: "".join("1" if k else "0" for k in keeps[a]) for a in ANNOTATORS}
        write_json(folder / LABELS_FILE, {"pool_seed": POOL_SEED_OFFSET + rl_seed, "labels": labels})
        return {"counts": {a: label_counts(pool, keeps[a]) for a in ANNOTATORS}, "copies": sources(keeps)}

    return run_stage(out, "annotate" + tag, annotate, force, identity=identity_hash)


def annotated_pairs(folder: Path, policy: str, splits, preset, rl_seed: int) -> list[Pair]:
    """The pool as `policy`'s annotator labelled it (annotation.json in the seed folder): its DPO pairs."""
    labels = json.loads((Path(folder) / LABELS_FILE).read_text())
    if labels["pool_seed"] != POOL_SEED_OFFSET + rl_seed:
        raise ValueError(f"{folder / LABELS_FILE}: the pool of seed {labels['pool_seed']}, not of RL seed {rl_seed}")
    annotator = next(a for a, p in POLICY_OF.items() if p == policy)
    keep = [c == "1" for c in labels["labels"][annotator]]
    return relabel(pool_pairs(splits, preset.rl, preset.pairs, rl_seed), keep)


def format_annotation_table(results: dict) -> str:
    """Markdown: per annotator its agreement, favours_more per attribute and its DPO policy's accuracies."""
    annotation, policy, std, seeds = (results["annotation"], results["policy"], results["policy_std"],
                                      results["policy_seeds"])

    def share(x):
        return "-" if x is None else f"{100 * x:.2f}%"

    def acc(name, k):
        if name not in policy:
            return "-"
        return f"{policy[name][k]:.3f}" + (f" ± {std[name][k]:.3f}" if len(seeds[name]) > 1 else "")

    head = ("| annotator | agreement | " + " | ".join(f"favours more {a}" for a in ATTRIBUTES)
            + " | DPO policy | acc_ambig | acc_disambig |\n|---|---|" + "---|" * len(ATTRIBUTES) + "---|---|---|\n")
    return head + "".join(
        f"| {a} | {share(v['agreement'])} | " + " | ".join(share(v["favours_more"][k]) for k in ATTRIBUTES)
        + f" | {POLICY_OF[a]} | {acc(POLICY_OF[a], 'acc_ambig')} | {acc(POLICY_OF[a], 'acc_disambig')} |\n"
        for a, v in annotation.items())
