"""Which features the intervention clamps (Shinoda et al., 2026, Sec. 3-4): scores, top-k, and k.

For each style attribute A of render.style_attributes and each feature n of the site (intervention.py),
over validation completions, one of two scores (`InterventionConfig.selection`):

    "spearman"  rho_{A,n} = Spearman(a_n, A)                      (the paper's; S_A = the k_A largest
                                                                   rho and the k_A smallest)
    "effect"    e_{A,n} = |sens_A(r)| - |sens_A(r under do(a_n = m_n))|   (S_A = the 2 k_A largest e)

sens_A is reward_eval's sensitivity: the mean reward change when one knob of A is raised
(preferences.bump), here both in std units of the base model's rewards (in its own std, a clamp that
flattens every reward would leave a small remaining response looking large). e is how much clamping n alone
shrinks the reward's response to A: the controlled direct effect made literal, where rho is a proxy
for it. An ablation, beside the paper's rho; both pick 2 k_A features, so a k costs the same.

k_A comes from a grid (fractions of all features, 0 always tried) on validation pairwise accuracy
of the whole edit (`search_k`); candidates editing more than `max_edit_frac` of all features are
skipped (the paper edits under 2%). The intervention clamps the union of the S_A to their
validation medians m_n.

Cost: a clamp at the last token changes only the last token, so both the k search and the effects
reuse one prefilled KV cache (intervention.prefill) and pay one token per sequence per candidate.
The effects clamp a different feature in each copy of a batch (`single_feature_rewards`): L x W
candidates on N rows cost L x W x N one-token rows, in about L x W x N / rows_per_pass passes (half
the time of one feature per pass; a cpu-preset reward model, 2048 MLP features on 450 rows, takes
minutes on one core).
"""

import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from nanobias.intervention import (SITES, Intervention, capture_pairs, column_medians, features_clamped,
                                   last_token_rewards, prefill, save_intervention)
from nanobias.preferences import BALANCED, PairConfig, make_pairs
from nanobias.progress import Progress
from nanobias.render import ATTRIBUTES
from nanobias.reward import RewardModel, load_reward_model
from nanobias.reward_eval import sensitivities, sensitivity_texts
from nanobias.spearman import spearman

SELECTIONS = ("spearman", "effect")


@dataclass
class InterventionConfig:
    """The neuron search: where (site), how features are scored (selection), and k (top-k and bottom-k
    per attribute) from a grid of fractions of all features (0 is always tried), on validation accuracy."""
    k_fractions: tuple = (1 / 1024, 1 / 512, 1 / 256, 1 / 128, 1 / 64, 1 / 32)
    max_edit_frac: float = 0.05  # candidates that edit more of all features are skipped (the paper edits < 2%)
    site: str = "mlp"  # intervention.SITES
    selection: str = "spearman"  # SELECTIONS; "effect" is the ablation
    effect_completions: int = 64  # validation completions bumped per attribute to measure each feature's effect

    def __post_init__(self):
        if not 0 < self.max_edit_frac <= 1:
            raise ValueError(f"intervention.max_edit_frac: expected a fraction in (0, 1], got {self.max_edit_frac}")
        if not all(0 < f < 1 for f in self.k_fractions):
            raise ValueError(f"intervention.k_fractions: expected fractions in (0, 1), got {self.k_fractions}")
        if self.site not in SITES:
            raise ValueError(f"intervention.site: expected one of {SITES}, got {self.site!r}")
        if self.selection not in SELECTIONS:
            raise ValueError(f"intervention.selection: expected one of {SELECTIONS}, got {self.selection!r}")
        if self.effect_completions < 1:
            raise ValueError(f"intervention.effect_completions: expected at least 1, got {self.effect_completions}")


# ---------------------------------------------------------------- scores

def attribute_correlations(acts: torch.Tensor, completions) -> torch.Tensor:
    """acts [N, L, W] of N completions (data.Completion) -> Spearman rho of every feature with each
    attribute [A, L*W], attributes in ATTRIBUTES order."""
    attrs = torch.tensor([[c.attributes[a] for a in ATTRIBUTES] for c in completions])  # [N, A]
    return torch.stack([spearman(acts.flatten(1), attrs[:, j]) for j in range(len(ATTRIBUTES))])


@torch.no_grad()
def single_feature_rewards(rm: RewardModel, batches, medians: torch.Tensor, site: str,
                           rows_per_pass: int = 256) -> torch.Tensor:
    """Rewards [N, L*W] of prefilled sequences with feature f alone clamped to medians.flatten()[f] at the
    last token, column f (medians [L, W]). Each batch is copied J times (J = rows_per_pass // B, once per
    batch) and copy j clamps the j-th feature of a chunk of J, so a pass scores J features."""
    n_layer, width = medians.shape
    param = next(rm.parameters())
    out = torch.empty(sum(len(b.rows) for b in batches), n_layer * width)
    passes = sum(n_layer * -(-width // max(1, min(width, rows_per_pass // len(b.rows)))) for b in batches)
    progress, done = Progress(passes, "effects", unit="passes"), 0
    for b in batches:
        B = len(b.rows)
        J = max(1, min(width, rows_per_pass // B))
        cache, mask, last = b.cache.repeat_interleave(J), b.mask.repeat_interleave(J, 0), b.last.repeat_interleave(J, 0)
        for layer in range(n_layer):
            value = medians[layer].to(device=param.device, dtype=param.dtype)  # [W]
            for start in range(0, width, J):
                chosen = torch.arange(start, min(start + J, width))
                one_hot = torch.zeros(J, width, dtype=torch.bool, device=param.device)
                one_hot[torch.arange(len(chosen)), chosen] = True  # copy j clamps feature start + j
                cache.length = mask.shape[1] - 1
                with features_clamped(rm.gpt, site, layer, one_hot.repeat(B, 1)[:, None], value, last_only=True):
                    r = rm(last, mask, cache=cache).float().cpu().view(B, J)  # row b * J + j: row b, copy j
                out[torch.tensor(b.rows)[:, None], layer * width + chosen[None, :]] = r[:, :len(chosen)]
                done += 1
                progress.update(done)
    return out


def feature_effects(rm: RewardModel, enc, pairs, medians: torch.Tensor, site: str, n_bumped: int,
                    std: float) -> torch.Tensor:
    """e_{A,n} [A, L*W] (module docstring) on `pairs` (validation), n_bumped bumped completions per
    attribute, in units of `std` (the base rewards' on the pairs); 0 for an attribute that no
    completion could bump."""
    items, prompts, texts = sensitivity_texts(pairs, n_bumped)
    # with the std given, only the bumped texts and their originals are read: a fraction of the rows
    read = sorted({i for a in ATTRIBUTES for i, _ in items[a]} | set(range(2 * len(pairs), len(texts))))
    # small batches, so that a pass holds more copies of each
    batches = prefill(rm, enc, [prompts[i] for i in read], [texts[i] for i in read], batch_size=16)
    r = np.zeros((len(texts), 1 + medians.numel()))  # [N, base + each feature]; rows not in `read` stay unread
    r[read, 0] = last_token_rewards(rm, batches).double().numpy()
    r[read, 1:] = single_feature_rewards(rm, batches, medians, site).double().numpy()  # [len(read), L*W]
    # in the base model's std: a clamp that flattens every reward must not look like one that removes A
    sens = sensitivities(r, len(pairs), items, std=std)
    rows = [np.zeros(medians.numel()) if s is None else np.abs(s[0]) - np.abs(s[1:]) for s in sens.values()]
    return torch.tensor(np.stack(rows))


# ---------------------------------------------------------------- selection and k

def k_grid(total_neurons: int, fractions) -> list[int]:
    return sorted({0} | {max(1, round(total_neurons * f)) for f in fractions})


def build_intervention(scores: torch.Tensor, acts: torch.Tensor, k: dict, positions: str = "last",
                       site: str = "mlp", selection: str = "spearman") -> Intervention:
    """scores [A, L*W] (attributes in ATTRIBUTES order), acts [N, L, W] validation features,
    k {attribute: k} -> per attribute the top-k and bottom-k (spearman) or the top 2k (effect)
    features, each clamped to its median."""
    _, n_layer, n_neurons = acts.shape
    by_attribute = {}
    for a, row in zip(ATTRIBUTES, scores):
        ka = k.get(a, 0)
        if ka == 0:
            continue
        order = row.argsort(descending=True, stable=True)
        flat = (torch.cat([order[:ka], order[-ka:]]) if selection == "spearman" else order[:2 * ka]).unique().tolist()
        by_attribute[a] = [(f // n_neurons, f % n_neurons, round(row[f].item(), 4)) for f in flat]
    flat = sorted({layer * n_neurons + i for chosen in by_attribute.values() for layer, i, _ in chosen})
    medians = column_medians(acts.flatten(1)[:, flat]).tolist()
    return Intervention(n_layer, n_neurons, [(f // n_neurons, f % n_neurons) for f in flat], medians,
                        positions, {a: k.get(a, 0) for a in ATTRIBUTES}, by_attribute, site)


def search_k(accuracy: Callable[[dict], float | None], grid: list[int], max_sweeps: int = 3) -> tuple[dict, list]:
    """k per attribute chosen jointly: every candidate is the whole edit (all attributes' features at
    once) scored by accuracy(k), and coordinate ascent moves each k_A in turn to the grid value that
    maximises it with the others fixed (ties: the smaller k), sweeping again until a sweep changes
    nothing. So each k_A is chosen given the others, as the paper's joint search; the result is a
    coordinate-wise optimum of the grid (an exhaustive search, |grid|^A candidates, could beat it only
    where two attributes' k help together and neither alone). accuracy(k) None marks a candidate that
    is not allowed (over the neuron budget)."""
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


def select_intervention(splits, reward_ckpt, out_path, cfg: InterventionConfig, pairs_cfg: PairConfig, seed: int = 0):
    """Capture on validation pairs, score (cfg.selection) at cfg.site, search k, write the intervention JSON."""
    rm, enc, _ = load_reward_model(reward_ckpt)
    pairs = make_pairs(splits.val, pairs_cfg.val_pairs, seed + 1, BALANCED)
    n = len(pairs)
    batches, rewards, acts = capture_pairs(rm, enc, pairs, cfg.site)  # _, [2n], [2n, L, W]
    start = time.perf_counter()
    if cfg.selection == "spearman":
        scores = attribute_correlations(acts, [p.chosen for p in pairs] + [p.rejected for p in pairs])  # [A, L*W]
    else:
        medians = column_medians(acts.flatten(1)).view(acts.shape[1:])  # [L, W]
        std = rewards.double().std(unbiased=False).item()  # [2n] base rewards: reward_eval's unit
        scores = feature_effects(rm, enc, pairs, medians, cfg.site, cfg.effect_completions, std)
    score_seconds = time.perf_counter() - start
    total = acts.shape[1] * acts.shape[2]

    def accuracy(k):
        intervention = build_intervention(scores, acts, k, site=cfg.site, selection=cfg.selection)
        if len(intervention.neurons) > cfg.max_edit_frac * total:
            return None
        r = last_token_rewards(rm, batches, intervention)
        return (r[:n] > r[n:]).float().mean().item()

    grid = k_grid(total, cfg.k_fractions)
    k, history = search_k(accuracy, grid)
    intervention = build_intervention(scores, acts, k, site=cfg.site, selection=cfg.selection)
    base_acc = (rewards[:n] > rewards[n:]).float().mean().item()
    val_acc = next(h["val_acc"] for h in history if h["k"] == k)
    print(f"intervene ({cfg.site}, {cfg.selection}): k grid {grid}; chose k = {k}: {len(intervention.neurons)} of "
          f"{total} features (per layer {intervention.per_layer()}); validation accuracy {base_acc:.3f} -> "
          f"{val_acc:.3f}; scoring took {score_seconds:.1f} s")
    save_intervention(out_path, intervention, selection=cfg.selection, val_pairs=n, base_val_acc=base_acc,
                      val_acc=val_acc, max_abs_score={a: round(scores[j].abs().max().item(), 4)
                                                      for j, a in enumerate(ATTRIBUTES)},
                      search=history)
    return out_path
