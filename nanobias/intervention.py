"""The causal neuron intervention on the reward model (Shinoda et al., 2026, Sec. 3-4).

    a_n(x, y) = activation of MLP neuron n = (layer, index) at the last token of x + y + <eot>
    rho_{A,n} = Spearman(a_n, A) over validation completions, per attribute A of render.style_attributes
    S_A       = the k_A neurons with the largest rho_{A,n} and the k_A with the smallest
    r~(x, y)  = r(x, y) under do(a_n = m_n) for n in the union of the S_A, m_n = validation median of a_n

A reward model trained on pairs whose preferred answer also tends to be longer, louder or bolder
learns the total effect of those attributes A(y) as well as of the content; holding the neurons that
carry them fixed makes r~ an estimate of the controlled direct effect of the content.

1. Capture a_n: a forward hook on each of `model.neuron_sites` (`last_token_recorded`).
2. Correlate: rho_{A,n} for every neuron and attribute (spearman.py).
3. Select: k_A from a grid (fractions of all neurons), by coordinate ascent on validation pairwise
   accuracy; candidates editing more than `max_edit_frac` of all neurons are skipped (the paper edits
   under 2%). Cheap: with positions="last" only the last token changes, so every earlier position's
   keys and values are computed once (`prefill`) and a candidate costs one token per sequence
   (`last_token_rewards`).
4. Intervene: the selected neurons output m_n at the last position (default) or at all positions:
   NeuronSite's `clamp`, so nanobias.kernels.masked_gelu. `with intervention.applied(model): ...`

reward_eval.py measures the edited model against the base one and the length-only baselines.
"""

import json
import math
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch

from nanobias.checkpoint import write_json
from nanobias.errors import UserError
from nanobias.model import GPT, KVCache
from nanobias.preferences import BALANCED, PairConfig, make_pairs
from nanobias.render import ATTRIBUTES
from nanobias.reward import RewardModel, encode, length_batches, load_reward_model
from nanobias.sampling import left_pad
from nanobias.spearman import spearman

POSITIONS = ("last", "all")


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
        for i, m in enumerate(self.medians):  # a NaN median would turn every reward it touches into NaN
            if type(m) not in (int, float) or not math.isfinite(m):
                raise ValueError(f"intervention: field 'medians', entry {i}: expected a finite number, got {m!r}")
        for layer, index in self.neurons:
            if type(layer) is not int or type(index) is not int or not (0 <= layer < self.n_layer
                                                                       and 0 <= index < self.n_neurons):
                raise ValueError(f"intervention neuron ({layer!r}, {index!r}): expected integers within "
                                 f"{self.n_layer} layers x {self.n_neurons} neurons")

    def per_layer(self) -> list[int]:
        return [sum(layer == l for l, _ in self.neurons) for layer in range(self.n_layer)]

    @contextmanager
    def applied(self, model: GPT):
        """Inside the block, the selected neurons of `model` output their medians (each NeuronSite's
        `clamp`, restored on exit). Layers with no selected neuron are left untouched, so an empty
        selection is exactly the plain model."""
        sites = model.neuron_sites
        hidden = model.transformer.h[0].mlp.c_fc.out_features
        if len(sites) != self.n_layer or hidden != self.n_neurons:
            raise ValueError(f"intervention is for {self.n_layer} layers x {self.n_neurons} neurons, "
                             f"the model has {len(sites)} x {hidden}")
        saved = [s.clamp for s in sites]
        param = next(model.parameters())
        try:
            for layer, site in enumerate(sites):
                chosen = [(i, m) for (l, i), m in zip(self.neurons, self.medians) if l == layer]
                if not chosen:
                    continue
                index = torch.tensor([i for i, _ in chosen], device=param.device)
                mask = torch.zeros(hidden, dtype=torch.bool, device=param.device).index_fill_(0, index, True)
                value = torch.zeros(hidden, dtype=param.dtype, device=param.device).index_copy_(
                    0, index, torch.tensor([m for _, m in chosen], dtype=param.dtype, device=param.device))
                site.clamp = (mask, value, self.positions == "last")
            yield model
        finally:
            for site, clamp in zip(sites, saved):
                site.clamp = clamp

def save_intervention(path, intervention: Intervention, **extra) -> None:
    write_json(path, {**asdict(intervention), **extra})


def load_intervention(path) -> Intervention:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"intervention file {path} does not exist (`nanobias intervene` writes it)")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: not JSON ({e}); `nanobias intervene` writes it") from None
    fields = ("n_layer", "n_neurons", "neurons", "medians", "positions", "k", "by_attribute")
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a JSON object with {', '.join(fields)}")
    missing = [f for f in fields if f not in data]
    if missing:
        raise UserError(f"{path}: field {missing[0]!r} missing (expected {', '.join(fields)})")
    try:
        return Intervention(data["n_layer"], data["n_neurons"], [tuple(n) for n in data["neurons"]],
                            data["medians"], data["positions"], data["k"], data["by_attribute"])
    except (ValueError, TypeError) as e:
        raise UserError(f"{path}: {e}") from None


# ---------------------------------------------------------------- capture (with a cached prefix)

@contextmanager
def last_token_recorded(model: GPT):
    """Inside the block, every forward of `model` appends each layer's last-token activations [B, H]
    (detached) to records[layer]; yields records (n_layer lists). A forward hook on each NeuronSite,
    removed on exit."""
    records = [[] for _ in model.neuron_sites]
    handles = [site.register_forward_hook(lambda site, inputs, a, out=out: out.append(a[:, -1].detach()))
               for site, out in zip(model.neuron_sites, records)]
    try:
        yield records
    finally:
        for handle in handles:
            handle.remove()


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
    with (intervention.applied(rm.gpt) if intervention is not None else nullcontext(),
          last_token_recorded(rm.gpt) if capture else nullcontext() as records):
        for b in batches:
            b.cache.length = b.mask.shape[1] - 1  # drop the last token of an earlier pass
            rewards[b.rows] = rm(b.last, b.mask, cache=b.cache).float().cpu()
            if capture:
                acts[b.rows] = torch.stack([layer.pop() for layer in records], 1).float().cpu()  # [B, L, H]
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
    """acts [N, L, H] of N completions (data.Completion) -> Spearman rho of every neuron with each
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
