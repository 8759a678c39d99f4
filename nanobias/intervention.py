"""Causal neuron intervention on the reward model (Shinoda et al., 2026, Sec. 3-4).

A reward model r(x, y) trained on preference pairs in which the preferred answer also tends to
be longer, louder or bolder learns the total effect of those attributes A(y) as well as of the
content. The intervention estimates the controlled direct effect of the content instead: it
holds the neurons that carry the attributes at fixed values, do(a_n = m_n).

1. Capture: a_{l,h}(x, y) = activation of MLP neuron h of layer l at the last token (the one
   the reward head reads), over validation completions (through `model.neuron_sites`).
2. Correlate: rho_{A,n} = Spearman(a_n, A) over those completions, for each attribute A of
   render.style_attributes (length, paragraphs, overlap, exclamations, bold):
       rho = Pearson(rank(a_n), rank(A)),  ties get the average of their ranks.
3. Select: per attribute, the k_A neurons with the largest rho and the k_A with the smallest.
   k_A comes from a grid (fractions of all neurons), by coordinate ascent on validation pairwise
   accuracy; candidates editing more than `max_edit_frac` of all neurons are skipped (the
   paper edits under 2%). The search stays cheap: with positions="last" the edit changes only the last
   token, so every earlier position's keys and values are computed once (`prefill`) and each
   candidate costs one token per sequence (`last_token_rewards`).
4. Intervene: the selected neurons output their validation medians m_n, at the last position
   (default) or at all positions; NeuronSite's mask/value fields, so kernels.masked_gelu.

The same model serves with and without it: `with intervention.applied(model): ...`.
"""

import json
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from nanobias.checkpoint import write_json
from nanobias.model import GPT, KVCache
from nanobias.plots import biased_vs_unbiased, neurons_per_layer
from nanobias.render import ATTRIBUTES, render_completion
from nanobias.reward import (BALANCED, PAIR_KINDS, PairConfig, RewardModel, bump, encode, fit_length_penalty, length_batches,
                             load_reward_model, lowess, make_pairs, pair_kind, pair_metrics, score)
from nanobias.sampling import left_pad

POSITIONS = ("last", "all")
# reward-model variants in reports: cirm_all = the intervention at every position; all_neurons =
# every MLP neuron clamped at the last token, an upper bound on what a last-token edit can do
METHODS = ("base", "cirm", "cirm_all", "all_neurons", "length_penalty", "lwr")


# ---------------------------------------------------------------- Spearman correlation

@dataclass
class InterventionConfig:
    """The neuron search: k (top-k and bottom-k neurons per attribute) from a grid of fractions of all
    MLP neurons (0 is always tried), chosen on validation accuracy."""
    k_fractions: tuple = (1 / 1024, 1 / 512, 1 / 256, 1 / 128, 1 / 64, 1 / 32)
    max_edit_frac: float = 0.05  # candidates that edit more of all neurons are skipped (the paper edits < 2%)

    def __post_init__(self):
        if not 0 < self.max_edit_frac <= 1:
            raise ValueError(f"intervention.max_edit_frac: expected a fraction in (0, 1], got {self.max_edit_frac}")
        if not all(0 < f < 1 for f in self.k_fractions):
            raise ValueError(f"intervention.k_fractions: expected fractions in (0, 1), got {self.k_fractions}")


@dataclass
class RewardEvalConfig:
    sensitivity_completions: int = 200  # test completions whose knobs are bumped one at a time

    def __post_init__(self):
        if self.sensitivity_completions < 2:
            raise ValueError(f"reward_eval.sensitivity_completions: expected at least 2, "
                             f"got {self.sensitivity_completions}")


def average_ranks(x: torch.Tensor) -> torch.Tensor:
    """x [N, M] -> 1-based ranks of each column [N, M] float64; tied values share their mean rank."""
    n = x.shape[0]
    order = x.argsort(dim=0, stable=True)  # [N, M]
    xs = x.gather(0, order)
    starts = torch.ones_like(xs, dtype=torch.bool)
    starts[1:] = xs[1:] != xs[:-1]
    group = starts.long().cumsum(0) - 1  # tie group of each sorted entry [N, M]
    position = torch.arange(1, n + 1, dtype=torch.float64)[:, None].expand(x.shape)
    total = torch.zeros(x.shape, dtype=torch.float64).scatter_add_(0, group, position)
    count = torch.zeros(x.shape, dtype=torch.float64).scatter_add_(0, group, torch.ones(x.shape, dtype=torch.float64))
    mean_rank = (total / count.clamp(min=1)).gather(0, group)  # [N, M] in sorted order
    return torch.empty(x.shape, dtype=torch.float64).scatter_(0, order, mean_rank)


def spearman(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Spearman correlation of each column of x [N, M] with y [N] -> [M]; 0 for a constant column."""
    rx = average_ranks(x.cpu())
    ry = average_ranks(y.cpu().reshape(-1, 1))
    rx, ry = rx - rx.mean(0), ry - ry.mean(0)
    denom = (rx.square().sum(0) * ry.square().sum(0)).sqrt()
    return torch.where(denom > 0, (rx * ry).sum(0) / denom.clamp(min=1e-300), 0.0)


# ---------------------------------------------------------------- the intervention

@dataclass
class Intervention:
    n_layer: int
    n_neurons: int  # MLP neurons per layer
    neurons: list  # [(layer, index)] sorted
    medians: list  # validation median of each selected neuron
    positions: str = "last"  # "last" | "all"
    k: dict = field(default_factory=dict)  # attribute -> k (top-k and bottom-k)
    by_attribute: dict = field(default_factory=dict)  # attribute -> [(layer, index, rho)]

    def __post_init__(self):
        if self.positions not in POSITIONS:
            raise ValueError(f"intervention positions: expected one of {POSITIONS}, got {self.positions!r}")
        if len(self.neurons) != len(self.medians):
            raise ValueError(f"intervention: {len(self.neurons)} neurons but {len(self.medians)} medians")
        for layer, index in self.neurons:
            if not (0 <= layer < self.n_layer and 0 <= index < self.n_neurons):
                raise ValueError(f"intervention neuron ({layer}, {index}) outside {self.n_layer} layers "
                                 f"x {self.n_neurons} neurons")

    def per_layer(self) -> list[int]:
        counts = [0] * self.n_layer
        for layer, _ in self.neurons:
            counts[layer] += 1
        return counts

    @contextmanager
    def applied(self, model: GPT):
        """Inside the block, the selected neurons of `model` output their medians. Layers with no
        selected neuron are left untouched, so an empty selection is exactly the plain model."""
        sites = model.neuron_sites
        hidden = model.transformer.h[0].mlp.c_fc.out_features
        if len(sites) != self.n_layer or hidden != self.n_neurons:
            raise ValueError(f"intervention is for {self.n_layer} layers x {self.n_neurons} neurons, "
                             f"the model has {len(sites)} x {hidden}")
        saved = [(s.mask, s.value, s.last_only) for s in sites]
        param = next(model.parameters())
        try:
            for layer, site in enumerate(sites):
                chosen = [(i, m) for (l, i), m in zip(self.neurons, self.medians) if l == layer]
                if not chosen:
                    continue
                index = torch.tensor([i for i, _ in chosen], device=param.device)
                site.mask = torch.zeros(hidden, dtype=torch.bool, device=param.device).index_fill_(0, index, True)
                site.value = torch.zeros(hidden, dtype=param.dtype, device=param.device).index_copy_(
                    0, index, torch.tensor([m for _, m in chosen], dtype=param.dtype, device=param.device))
                site.last_only = self.positions == "last"
            yield model
        finally:
            for site, (mask, value, last_only) in zip(sites, saved):
                site.mask, site.value, site.last_only = mask, value, last_only

    def with_positions(self, positions: str) -> "Intervention":
        return replace(self, positions=positions)


def save_intervention(path, intervention: Intervention, **extra) -> None:
    write_json(path, {**asdict(intervention), **extra})


def load_intervention(path) -> Intervention:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"intervention file {path} does not exist (`nanobias intervene` writes it)")
    data = json.loads(path.read_text())
    fields = ("n_layer", "n_neurons", "neurons", "medians", "positions", "k", "by_attribute")
    missing = [f for f in fields if f not in data]
    if missing:
        raise ValueError(f"{path}: field {missing[0]!r} missing (expected {', '.join(fields)})")
    try:
        return Intervention(data["n_layer"], data["n_neurons"], [tuple(n) for n in data["neurons"]],
                            data["medians"], data["positions"], data["k"], data["by_attribute"])
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None


# ---------------------------------------------------------------- capture with a cached prefix

@dataclass
class PrefilledBatch:
    rows: list  # which of the N sequences
    cache: KVCache  # keys/values of every token but the last
    mask: torch.Tensor  # [B, T] attention mask of the whole sequence
    last: torch.Tensor  # [B, 1] the last token (end-of-text)


@torch.no_grad()
def prefill(rm: RewardModel, enc, prompts: list[str], completions: list[str], batch_size: int = 64):
    """Run every token but the last once; `last_token_rewards` then finishes the sequences."""
    seqs = encode(enc, prompts, completions, rm.gpt.config.block_size)
    param = next(rm.parameters())
    rm.eval()
    batches = []
    for rows in length_batches(seqs, batch_size):
        ids, mask = left_pad([seqs[i] for i in rows], enc.eot_token, param.device)  # [B, T]
        cache = KVCache(rm.gpt.config, len(rows), ids.shape[1], param.device, param.dtype)
        rm(ids[:, :-1], mask[:, :-1], cache=cache)
        batches.append(PrefilledBatch(rows, cache, mask, ids[:, -1:]))
    return batches


@torch.no_grad()
def last_token_rewards(rm: RewardModel, batches: list[PrefilledBatch], intervention: Intervention | None = None,
                       capture: bool = False):
    """Rewards [N] of prefilled sequences, and with capture=True the last-token activations of
    every MLP neuron [N, n_layer, n_neurons]. Only positions="last" is exact here."""
    if intervention is not None and intervention.positions != "last":
        raise ValueError("last_token_rewards: a cached prefix only supports positions='last'; use reward.score")
    n = sum(len(b.rows) for b in batches)
    sites = rm.gpt.neuron_sites
    rewards = torch.empty(n)
    acts = torch.empty(n, len(sites), rm.gpt.transformer.h[0].mlp.c_fc.out_features) if capture else None
    try:
        with intervention.applied(rm.gpt) if intervention is not None else nullcontext():
            for b in batches:
                b.cache.length = b.mask.shape[1] - 1  # drop the last token of an earlier pass
                for site in sites:
                    site.record = [] if capture else None
                rewards[b.rows] = rm(b.last, b.mask, cache=b.cache).float().cpu()
                if capture:
                    acts[b.rows] = torch.stack([site.record[0] for site in sites], 1).float().cpu()  # [B, L, H]
    finally:
        for site in sites:
            site.record = None
    return (rewards, acts) if capture else rewards


# ---------------------------------------------------------------- selection

def column_medians(x: torch.Tensor) -> torch.Tensor:
    """x [N, M] -> medians [M] float64 (mean of the two middle values when N is even)."""
    xs = x.double().sort(dim=0).values
    return (xs[(x.shape[0] - 1) // 2] + xs[x.shape[0] // 2]) / 2


def k_grid(total_neurons: int, fractions) -> list[int]:
    return sorted({0} | {max(1, round(total_neurons * f)) for f in fractions})


def build_intervention(rho: torch.Tensor, acts: torch.Tensor, k: dict, positions: str = "last") -> Intervention:
    """rho [A, L*H] (attributes in ATTRIBUTES order), acts [N, L, H] validation activations,
    k {attribute: k} -> the top-k and bottom-k neurons per attribute, each clamped to its median."""
    _, n_layer, n_neurons = acts.shape
    by_attribute = {}
    for a, row in zip(ATTRIBUTES, rho):
        ka = k.get(a, 0)
        if ka == 0:
            continue
        order = row.argsort(descending=True, stable=True)
        flat = torch.cat([order[:ka], order[-ka:]]).unique().tolist()
        by_attribute[a] = [(f // n_neurons, f % n_neurons, round(row[f].item(), 4)) for f in flat]
    flat = sorted({layer * n_neurons + i for chosen in by_attribute.values() for layer, i, _ in chosen})
    medians = column_medians(acts.flatten(1)[:, flat]).tolist()
    return Intervention(n_layer, n_neurons, [(f // n_neurons, f % n_neurons) for f in flat], medians,
                        positions, {a: k.get(a, 0) for a in ATTRIBUTES}, by_attribute)


def search_k(accuracy: Callable[[dict], float | None], grid: list[int], max_sweeps: int = 3) -> tuple[dict, list]:
    """Coordinate ascent over the attributes: each k_A in turn takes the grid value that maximises
    accuracy(k) with the others fixed (ties: the smaller k), until a sweep changes nothing.
    accuracy(k) None marks a candidate that is not allowed (over the neuron budget)."""
    k = {a: 0 for a in ATTRIBUTES}
    seen = {}

    def acc(candidate):
        key = tuple(candidate[a] for a in ATTRIBUTES)
        if key not in seen:
            seen[key] = accuracy(dict(candidate))
        return seen[key]

    for _ in range(max_sweeps):
        changed = False
        for a in ATTRIBUTES:
            best = max(grid, key=lambda v: (acc({**k, a: v}) is not None, acc({**k, a: v}) or 0.0, -v))
            changed |= best != k[a]
            k[a] = best
        if not changed:
            break
    history = [{"k": dict(zip(ATTRIBUTES, key)), "val_acc": value} for key, value in seen.items()]
    return k, history


def capture_pairs(rm: RewardModel, enc, pairs):
    """Both completions of each pair (chosen first) -> (prefilled batches, rewards [2P], last-token
    activations of every MLP neuron [2P, L, H])."""
    batches = prefill(rm, enc, [p.prompt for p in pairs] * 2,
                      [p.chosen.text for p in pairs] + [p.rejected.text for p in pairs])
    return (batches, *last_token_rewards(rm, batches, capture=True))


def attribute_correlations(acts: torch.Tensor, completions) -> torch.Tensor:
    """acts [N, L, H] of N completions (render.Completion) -> Spearman rho of every neuron with each
    attribute [A, L*H], attributes in ATTRIBUTES order."""
    attrs = torch.tensor([[c.attributes[a] for a in ATTRIBUTES] for c in completions])  # [N, A]
    return torch.stack([spearman(acts.flatten(1), attrs[:, j]) for j in range(len(ATTRIBUTES))])


def select_intervention(splits, reward_ckpt, out_path, cfg: InterventionConfig, pairs_cfg: PairConfig, seed: int = 0):
    """Capture on validation pairs, correlate, search k, write the intervention JSON."""
    rm, enc, _ = load_reward_model(reward_ckpt)
    pairs = make_pairs(splits.val, pairs_cfg.val_pairs, seed + 1, BALANCED)
    n = len(pairs)
    batches, rewards, acts = capture_pairs(rm, enc, pairs)  # _, [2n], [2n, L, H]
    rho = attribute_correlations(acts, [p.chosen for p in pairs] + [p.rejected for p in pairs])  # [A, L*H]

    total = acts.shape[1] * acts.shape[2]

    def accuracy(k):
        intervention = build_intervention(rho, acts, k)
        if len(intervention.neurons) > cfg.max_edit_frac * total:
            return None
        r = last_token_rewards(rm, batches, intervention)
        return (r[:n] > r[n:]).float().mean().item()

    grid = k_grid(total, cfg.k_fractions)
    k, history = search_k(accuracy, grid)
    intervention = build_intervention(rho, acts, k)
    base_acc = (rewards[:n] > rewards[n:]).float().mean().item()
    val_acc = next(h["val_acc"] for h in history if h["k"] == k)
    print(f"intervene: k grid {grid}; chose k = {k}: {len(intervention.neurons)} of {total} neurons "
          f"(per layer {intervention.per_layer()}); validation accuracy {base_acc:.3f} -> {val_acc:.3f}")
    save_intervention(out_path, intervention, val_pairs=n, base_val_acc=base_acc, val_acc=val_acc,
                      max_abs_rho={a: round(rho[j].abs().max().item(), 4) for j, a in enumerate(ATTRIBUTES)},
                      search=history)
    return out_path


# ---------------------------------------------------------------- evaluation

def _sensitivity_items(pairs, n: int) -> dict:
    """attribute -> [(index of the original completion among the 2P test completions, bumped text)]."""
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


@torch.no_grad()
def length_from_position(rm: RewardModel, enc, prompts: list[str], originals: list[str], bumped: list[str],
                         batch_size: int = 64) -> np.ndarray:
    """r(original, read at the positions the bumped text's tokens occupy) - r(original) [N]: the part of
    the length bump's reward change that comes from where the text ends, not from what it says."""
    seqs = encode(enc, prompts, originals, rm.gpt.config.block_size)
    longer = encode(enc, prompts, bumped, rm.gpt.config.block_size)
    param = next(rm.parameters())
    rm.eval()
    out = np.empty(len(seqs))
    for start in range(0, len(seqs), batch_size):
        rows = range(start, min(start + batch_size, len(seqs)))
        ids, mask = left_pad([seqs[i] for i in rows], enc.eot_token, param.device)
        shift = torch.tensor([len(longer[i]) - len(seqs[i]) for i in rows], device=param.device)  # [B]
        out[start:start + len(rows)] = (rm(ids, mask, position_offset=shift) - rm(ids, mask)).float().cpu().numpy()
    return out


def method_metrics(r: np.ndarray, n_pairs: int, pairs, items: dict) -> dict:
    """r: rewards of the 2P test completions followed by every bumped text, in `items` order."""
    attrs_c = {a: [p.chosen.attributes[a] for p in pairs] for a in ATTRIBUTES}
    attrs_r = {a: [p.rejected.attributes[a] for p in pairs] for a in ATTRIBUTES}
    out = pair_metrics(r[:n_pairs], r[n_pairs:2 * n_pairs], attrs_c, attrs_r, [pair_kind(p) for p in pairs])
    std = r[:2 * n_pairs].std()
    out["sensitivity"], start = {}, 2 * n_pairs
    for a in ATTRIBUTES:
        index = np.array([i for i, _ in items[a]], dtype=np.int64)
        bumped = r[start:start + len(index)]
        out["sensitivity"][a] = float((bumped - r[index]).mean() / std) if len(index) else None
        start += len(index)
    return out


def evaluate_reward_models(splits, reward_ckpt, intervention_path, out_dir, cfg: RewardEvalConfig,
                           pairs_cfg: PairConfig, seed: int = 0) -> dict:
    """docs/design.md's `reward_model` section for base / cirm / length_penalty / lwr (and cirm_all, the
    intervention at every position). intervention_path None: base and baselines only. Writes
    reward_eval.json and PNGs into out_dir."""
    rm, enc, _ = load_reward_model(reward_ckpt)
    out_dir = Path(out_dir)

    val = make_pairs(splits.val, pairs_cfg.val_pairs, seed + 1, BALANCED)
    _, r_val, acts_val = capture_pairs(rm, enc, val)  # [2V], [2V, L, H]
    rv_c, rv_r = np.split(r_val.numpy(), 2)
    len_vc = np.array([p.chosen.attributes["length"] for p in val])
    len_vr = np.array([p.rejected.attributes["length"] for p in val])
    alpha = fit_length_penalty(rv_c, rv_r, len_vc, len_vr)
    val_len, val_r = np.concatenate([len_vc, len_vr]), np.concatenate([rv_c, rv_r])

    test = make_pairs(splits.test, pairs_cfg.test_pairs, seed + 2, BALANCED)
    items = _sensitivity_items(test, cfg.sensitivity_completions)
    prompts = [p.prompt for p in test] * 2 + [test[i % len(test)].prompt for a in ATTRIBUTES for i, _ in items[a]]
    texts = ([p.chosen.text for p in test] + [p.rejected.text for p in test]
             + [text for a in ATTRIBUTES for _, text in items[a]])
    lengths = np.array([len(t) for t in texts], dtype=np.float64)
    batches = prefill(rm, enc, prompts, texts)
    r_base = last_token_rewards(rm, batches).numpy().astype(np.float64)
    rewards = {"base": r_base, "length_penalty": r_base - alpha * lengths,
               "lwr": r_base - lowess(val_len, val_r, lengths)}
    intervention = load_intervention(intervention_path) if intervention_path is not None else None
    if intervention is not None:
        rewards["cirm"] = last_token_rewards(rm, batches, intervention).numpy().astype(np.float64)
        rewards["cirm_all"] = score(rm, enc, prompts, texts, intervention.with_positions("all")).numpy().astype(np.float64)
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
    results["length_penalty"]["alpha"] = alpha
    if intervention is not None:
        per_layer = intervention.per_layer()
        results["neurons"] = {"edited": len(intervention.neurons), "total": intervention.n_layer * intervention.n_neurons,
                              "per_layer": per_layer, "k": intervention.k}
        neurons_per_layer(per_layer, intervention.n_neurons, out_dir / "neurons_per_layer.png")
    results["test_pairs"] = len(test)
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
    neurons = results.get("neurons")
    tail = (f"neurons edited: {neurons['edited']} of {neurons['total']} "
            f"({100 * neurons['edited'] / neurons['total']:.2f}%), per layer {neurons['per_layer']}, k {neurons['k']}\n"
            if neurons else "")
    return head + rows + tail_position + tail
