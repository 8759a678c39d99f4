"""Evaluating reward models: the base one, the neuron intervention and the length-only baselines.

On balanced test pairs (preferences.py), for each method's reward r:

    acc          = mean over pairs of [r(x, y_c) > r(x, y_r)]             (a tie is wrong)
    acc_biased_A = acc over pairs whose chosen side has more of attribute A, acc_unbiased_A the
                   same over pairs whose chosen side has less (ties in A are in neither)
    sens_A       = mean over completions of (r(x, bump_A(y)) - r(x, y)) / std of the test rewards
                   (`bump`: one style knob raised, the rest of the text the same)

Methods: base; cirm (the intervention at the last token), cirm_all (at every position),
all_neurons (every MLP neuron clamped at the last token: the most a last-token edit can remove);
and the two length-only baselines of Shinoda et al. (Sec. 5), fitted on validation pairs: a length
penalty r - alpha * length, and locally weighted regression (LOWESS) of reward on length, whose
fitted curve is subtracted (length_baselines.py). `length_from_position` splits the base model's length sensitivity into
the part that comes from where the text ends (positions alone) and the part from the added words.
"""

from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from nanobias.checkpoint import write_json
from nanobias.intervention import (Intervention, capture_pairs, column_medians, last_token_rewards,
                                   load_intervention, prefill)
from nanobias.length_baselines import fit_length_baselines
from nanobias.model import GPT
from nanobias.plots import biased_vs_unbiased, neurons_per_layer
from nanobias.preferences import BALANCED, PAIR_KINDS, PairConfig, bump, make_pairs, pair_kind
from nanobias.render import ATTRIBUTES, render_completion
from nanobias.reward import RewardModel, encode, load_reward_model, score, scoring_cost
from nanobias.sampling import left_pad

# reward-model variants in reports: cirm_all = the intervention at every position; all_neurons =
# every MLP neuron clamped at the last token, an upper bound on what a last-token edit can do
METHODS = ("base", "cirm", "cirm_all", "all_neurons", "length_penalty", "lwr")


@dataclass
class RewardEvalConfig:
    sensitivity_completions: int = 200  # test completions whose knobs are bumped one at a time

    def __post_init__(self):
        if self.sensitivity_completions < 2:
            raise ValueError(f"reward_eval.sensitivity_completions: expected at least 2, "
                             f"got {self.sensitivity_completions}")


# ---------------------------------------------------------------- metrics

def pair_metrics(r_chosen, r_rejected, attrs_chosen: dict, attrs_rejected: dict, kinds=None) -> dict:
    """docs/design.md's reward-model metrics. attrs_*: {attribute: values [P]}. A pair counts as right
    when r_chosen > r_rejected (a tie is wrong). Pairs where an attribute ties are in neither subset.
    kinds: each pair's `pair_kind` [P], for the accuracy per kind (None where a kind has no pair)."""
    r_c, r_r = np.asarray(r_chosen, dtype=np.float64), np.asarray(r_rejected, dtype=np.float64)
    right = r_c > r_r
    out = {"acc": float(right.mean()), "acc_biased": {}, "acc_unbiased": {}, "n_biased": {}, "n_unbiased": {}}
    if kinds is not None:
        kinds = np.asarray(kinds)
        out["acc_by_kind"] = {k: float(right[kinds == k].mean()) if (kinds == k).any() else None for k in PAIR_KINDS}
    for a in ATTRIBUTES:
        diff = np.asarray(attrs_chosen[a], dtype=np.float64) - np.asarray(attrs_rejected[a], dtype=np.float64)
        for name, subset in (("biased", diff > 0), ("unbiased", diff < 0)):
            out[f"acc_{name}"][a] = float(right[subset].mean()) if subset.any() else None
            out[f"n_{name}"][a] = int(subset.sum())
    return out


def sensitivity_items(pairs, n: int) -> dict:
    """attribute -> [(index of the original completion among the 2P completions, bumped text)]."""
    originals = [(j, p, p.chosen, p.chosen_style) for j, p in enumerate(pairs)]
    originals += [(len(pairs) + j, p, p.rejected, p.rejected_style) for j, p in enumerate(pairs)]
    originals.sort(key=lambda o: (o[0] % len(pairs), o[0]))  # chosen and rejected of the first pairs
    items = {}
    for a in ATTRIBUTES:
        items[a] = []
        for index, pair, completion, style in originals:
            bumped = bump(style, a)
            if bumped is not None:
                items[a].append((index, render_completion(pair.example, completion.answer_index, bumped).text))
            if len(items[a]) == n:
                break
    return items


@contextmanager
def shifted_positions(gpt: GPT, offset: torch.Tensor):
    """Inside the block, row b of every forward of `gpt` reads the position embeddings of its positions
    + offset[b] (offset [B] ints): the same text as if it stood later in the window. A forward
    pre-hook on the position embedding, so the model computes wpe(pos + offset) where it computed wpe(pos).
    A rotary model has no table and sees relative positions only: a whole row shifted reads the same,
    so there is nothing to shift."""
    if gpt.config.position == "rotary":
        yield gpt
        return
    block_size = gpt.config.block_size

    def shift(wpe, args):
        pos = args[0] + offset[:, None]  # [B, T]
        if pos.max() >= block_size:
            raise ValueError(f"shifted_positions: an offset moves a token to position {pos.max().item()}, "
                             f"past block_size={block_size}")
        return (pos,)

    handle = gpt.transformer.wpe.register_forward_pre_hook(shift)
    try:
        yield gpt
    finally:
        handle.remove()


@torch.no_grad()
def length_from_position(rm: RewardModel, enc, prompts: list[str], originals: list[str], bumped: list[str],
                         batch_size: int = 64) -> np.ndarray:
    """r(original, read at the positions the bumped text's tokens occupy) - r(original) [N]: the part of
    the length bump's reward change that comes from where the text ends, not from what it says.

    Rotary models see relative positions only, so shifting a whole row changes nothing: there the part
    is 0 up to rounding, and any length sensitivity must be computed from the text itself."""
    seqs = encode(enc, prompts, originals, rm.gpt.config.block_size)
    longer = encode(enc, prompts, bumped, rm.gpt.config.block_size)
    param = next(rm.parameters())
    rm.eval()
    out = np.empty(len(seqs))
    for start in range(0, len(seqs), batch_size):
        rows = range(start, min(start + batch_size, len(seqs)))
        ids, mask = left_pad([seqs[i] for i in rows], enc.eot_token, param.device)
        shift = torch.tensor([len(longer[i]) - len(seqs[i]) for i in rows], device=param.device)  # [B]
        with shifted_positions(rm.gpt, shift):
            shifted = rm(ids, mask)
        out[start:start + len(rows)] = (shifted - rm(ids, mask)).float().cpu().numpy()
    return out


def method_metrics(r: np.ndarray, n_pairs: int, pairs, items: dict) -> dict:
    """r: rewards of the 2P test completions followed by every bumped text, in `items` order."""
    attrs_c = {a: [p.chosen.attributes[a] for p in pairs] for a in ATTRIBUTES}
    attrs_r = {a: [p.rejected.attributes[a] for p in pairs] for a in ATTRIBUTES}
    out = pair_metrics(r[:n_pairs], r[n_pairs:2 * n_pairs], attrs_c, attrs_r, [pair_kind(p) for p in pairs])
    out["sensitivity"] = {a: None if s is None else float(s) for a, s in sensitivities(r, n_pairs, items).items()}
    return out


def sensitivity_texts(pairs, n: int):
    """(items, prompts, texts): the 2P completions of `pairs` (chosen first), then up to n bumped texts
    per attribute in `sensitivity_items` order, the layout `method_metrics` and `sensitivities` read."""
    items = sensitivity_items(pairs, n)
    prompts = [p.prompt for p in pairs] * 2 + [pairs[i % len(pairs)].prompt for a in ATTRIBUTES for i, _ in items[a]]
    texts = ([p.chosen.text for p in pairs] + [p.rejected.text for p in pairs]
             + [text for a in ATTRIBUTES for _, text in items[a]])
    return items, prompts, texts


def sensitivities(r: np.ndarray, n_pairs: int, items: dict, std=None) -> dict:
    """r [N] or [N, M] (M reward models as columns), laid out as `sensitivity_texts` -> {attribute: sens_A
    (a number, or [M]); None where nothing could be bumped}, in units of `std` (default: the std of each
    column's rewards on the 2P completions)."""
    std = r[:2 * n_pairs].std(0) if std is None else std
    out, start = {}, 2 * n_pairs
    for a in ATTRIBUTES:
        index = np.array([i for i, _ in items[a]], dtype=np.int64)
        bumped = r[start:start + len(index)]
        out[a] = (bumped - r[index]).mean(0) / std if len(index) else None
        start += len(index)
    return out


def validation_pairs(splits, pairs_cfg: PairConfig, seed: int):
    """The balanced validation pairs the baselines are fitted on (and the neuron search runs on)."""
    return make_pairs(splits.val, pairs_cfg.val_pairs, seed + 1, BALANCED)


# ---------------------------------------------------------------- the evaluation

def evaluate_reward_models(splits, reward_ckpt, intervention_path, out_dir, cfg: RewardEvalConfig,
                           pairs_cfg: PairConfig, seed: int = 0) -> dict:
    """docs/design.md's `reward_model` section for base / cirm / length_penalty / lwr (and cirm_all, the
    intervention at every position). intervention_path None: base and baselines only. Writes
    reward_eval.json and PNGs into out_dir."""
    rm, enc, meta = load_reward_model(reward_ckpt)
    out_dir = Path(out_dir)

    val = validation_pairs(splits, pairs_cfg, seed)
    _, r_val, acts_val = capture_pairs(rm, enc, val)  # [2V], [2V, L, H]
    baselines = fit_length_baselines(val, r_val.numpy())

    test = make_pairs(splits.test, pairs_cfg.test_pairs, seed + 2, BALANCED)
    items, prompts, texts = sensitivity_texts(test, cfg.sensitivity_completions)
    lengths = np.array([len(t) for t in texts], dtype=np.float64)
    batches = prefill(rm, enc, prompts, texts)
    r_base = last_token_rewards(rm, batches).numpy().astype(np.float64)
    # which reward model this is, and what one call of it costs (as rl.make_scorer scores)
    scorer = {"loss": meta.get("loss"), "of_layers": meta.get("policy_n_layer", rm.gpt.config.n_layer),
              **scoring_cost(rm, enc, prompts, texts)}
    rewards = {"base": r_base, **baselines.debiased(r_base, lengths)}
    intervention = load_intervention(intervention_path) if intervention_path is not None else None
    if intervention is not None:
        rewards["cirm"] = last_token_rewards(rm, batches, intervention).numpy().astype(np.float64)
        rewards["cirm_all"] = score(rm, enc, prompts, texts, replace(intervention, positions="all")).numpy().astype(np.float64)
    # every neuron clamped at the last token: the most any last-token neuron edit can remove
    # (what is left reaches the head through attention and the position embedding)
    n_layer, n_neurons = acts_val.shape[1:]
    every = Intervention(n_layer, n_neurons, [(l, i) for l in range(n_layer) for i in range(n_neurons)],
                         column_medians(acts_val.flatten(1)).tolist())
    rewards["all_neurons"] = last_token_rewards(rm, batches, every).numpy().astype(np.float64)
    order = [m for m in METHODS if m in rewards]
    results = {m: method_metrics(rewards[m], len(test), test, items) for m in order}
    from_position = length_from_position(rm, enc, [test[i % len(test)].prompt for i, _ in items["length"]],
                                         [texts[i] for i, _ in items["length"]], [t for _, t in items["length"]])
    results["length_from_position"] = float(from_position.mean() / r_base[:2 * len(test)].std())
    results["position"] = rm.gpt.config.position  # rotary: the split above is 0 by construction
    results["length_penalty"]["alpha"] = baselines.alpha
    if intervention is not None:
        per_layer = intervention.per_layer()
        results["neurons"] = {"edited": len(intervention.neurons), "total": intervention.n_layer * intervention.n_neurons,
                              "per_layer": per_layer, "k": intervention.k}
        neurons_per_layer(per_layer, intervention.n_neurons, out_dir / "neurons_per_layer.png")
    results["test_pairs"] = len(test)
    results["scorer"] = scorer
    write_json(out_dir / "reward_eval.json", results)
    biased_vs_unbiased({m: results[m] for m in order}, ATTRIBUTES, out_dir / "reward_biased_unbiased.png")
    print(format_reward_table(results))
    return results


def format_reward_table(results: dict) -> str:
    """Markdown table: accuracy, accuracy per pair kind, biased/unbiased-subset accuracy and
    sensitivity per attribute."""
    methods = [m for m in METHODS if m in results]
    head = ("| method | acc | " + " / ".join(PAIR_KINDS) + " | "
            + " | ".join(f"{a} b / u / sens" for a in ATTRIBUTES) + " |\n")
    head += "|---|---|---|" + "---|" * len(ATTRIBUTES) + "\n"

    def cell(x, fmt):
        return "-" if x is None else format(x, fmt)

    rows = "".join(
        f"| {m} | {results[m]['acc']:.3f} | "
        + " / ".join(cell(results[m].get("acc_by_kind", {}).get(k), ".3f") for k in PAIR_KINDS) + " | " + " | ".join(
            f"{cell(results[m]['acc_biased'][a], '.3f')} / {cell(results[m]['acc_unbiased'][a], '.3f')} / "
            f"{cell(results[m]['sensitivity'][a], '+.3f')}" for a in ATTRIBUTES) + " |\n"
        for m in methods)
    position = results.get("length_from_position")
    total = results["base"]["sensitivity"]["length"]
    tail_position = (f"base length sensitivity {total:+.3f} = {position:+.3f} from the positions alone (the same text "
                     f"read where the longer one ends) {total - position:+.3f} from the added words\n"
                     if position is not None and total is not None else "")
    if results.get("position") == "rotary" and total is not None:
        tail_position = (f"base length sensitivity {total:+.3f}, all of it computed from the words: rotary positions "
                         "are relative, so where the text ends adds nothing\n")
    neurons = results.get("neurons")
    tail = (f"neurons edited: {neurons['edited']} of {neurons['total']} "
            f"({100 * neurons['edited'] / neurons['total']:.2f}%), per layer {neurons['per_layer']}, k {neurons['k']}\n"
            if neurons else "")
    scorer = results.get("scorer")
    tail += (f"scoring: {scorer['seconds_per_1k_calls']:.2f} s per 1000 calls ({scorer['layers']} of "
             f"{scorer['of_layers']} layers, loss {scorer['loss']}, {scorer['threads']} thread(s), "
             f"{scorer['completions']} test completions)\n" if scorer else "")
    return head + rows + tail_position + tail
