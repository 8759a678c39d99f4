"""The causal neuron intervention on the reward model (Shinoda et al., 2026, Sec. 3-4): the edit itself.

    a_n(x, y) = feature n = (layer, index) of a site, at the last token of x + y + <eot>
    r~(x, y)  = r(x, y) under do(a_n = m_n) for the selected n, m_n = validation median of a_n

Sites, per layer (`SITES`; the paper clamps the attention query and the MLP's up and gate projections):

    "mlp"    GELU(c_fc(x)), the MLP's post-activation [4C]: model.NeuronSite, clamped by its `clamp`
             (nanobias.kernels.masked_gelu)
    "up"     c_fc(x), the MLP's pre-activation [4C]: a forward hook on c_fc (GPT-2 has no gate projection,
             so its up projection is the whole pre-activation)
    "query"  the query part of c_attn(x) [C], before any rotary rotation: a forward hook on c_attn

The selected features take their medians at the last position (default: the token the reward head
reads) or at every position. `with intervention.applied(model): ...` installs the edit and removes it
on exit. Which features to clamp (correlations, effects, the k search) is selection.py's concern.

Cheap evaluation: with positions="last" only the last token changes, so every earlier position's keys
and values are computed once (`prefill`) and each candidate edit costs one token per sequence
(`last_token_rewards`). reward_eval.py measures the edited model.
"""

import math
from contextlib import ExitStack, contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn as nn

from nanobias.checkpoint import read_json, write_json
from nanobias.errors import UserError
from nanobias.kvcache import KVCache
from nanobias.model import GPT
from nanobias.reward import RewardModel, encode, length_batches
from nanobias.sampling import left_pad

POSITIONS = ("last", "all")
SITES = ("mlp", "up", "query")


def site_modules(model: GPT, site: str) -> list[nn.Module]:
    """The module of each layer whose output (its first `site_width` features) is the site."""
    if site == "mlp":
        return model.neuron_sites
    if site == "up":
        return [block.mlp.c_fc for block in model.transformer.h]
    if site == "query":
        return [block.attn.c_attn for block in model.transformer.h]  # output [q | k | v]: q comes first
    raise ValueError(f"intervention site: expected one of {SITES}, got {site!r}")


def site_width(model: GPT, site: str) -> int:
    """Features per layer at `site`: the MLP's width, or n_embd for the query."""
    return model.config.n_embd if site == "query" else model.transformer.h[0].mlp.c_fc.out_features


@contextmanager
def features_clamped(model: GPT, site: str, layer: int, mask: torch.Tensor, value: torch.Tensor, last_only: bool):
    """Inside the block, `layer`'s site outputs value where mask (mask [W] bool, or [B, 1, W] for a
    different edit per row; value [W]), at the last position or at every one. A forward hook that
    returns a new output, so clamped features get no gradient; removed on exit."""
    width = site_width(model, site)

    def hook(module, inputs, out):  # out [B, T, F], F >= width (c_attn: q, k, v)
        t = slice(-1, None) if last_only else slice(None)
        head = torch.cat([torch.where(mask, value.to(out.dtype), out[:, t, :width]), out[:, t, width:]], dim=-1)
        return torch.cat([out[:, :-1], head], dim=1) if last_only else head

    handle = site_modules(model, site)[layer].register_forward_hook(hook)
    try:
        yield model
    finally:
        handle.remove()


# ---------------------------------------------------------------- the intervention

@dataclass
class Intervention:
    n_layer: int
    n_neurons: int  # features per layer at the site (the MLP's width, or n_embd for "query")
    neurons: list  # [(layer, index)] sorted
    medians: list  # validation median of each selected neuron
    positions: str = "last"  # "last" | "all"
    k: dict = field(default_factory=dict)  # attribute -> k (selection.py: how many neurons per attribute)
    by_attribute: dict = field(default_factory=dict)  # attribute -> [(layer, index, score)]
    site: str = "mlp"  # SITES; files written before sites existed hold the MLP's post-activation neurons

    def __post_init__(self):
        if self.positions not in POSITIONS:
            raise ValueError(f"intervention positions: expected one of {POSITIONS}, got {self.positions!r}")
        if self.site not in SITES:
            raise ValueError(f"intervention site: expected one of {SITES}, got {self.site!r}")
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
        """Inside the block, the selected neurons of `model` output their medians (restored on exit).
        Layers with no selected neuron are left untouched, so an empty selection is exactly the plain model."""
        width = site_width(model, self.site)
        n_layer = len(model.transformer.h)
        if n_layer != self.n_layer or width != self.n_neurons:
            raise ValueError(f"intervention is for {self.n_layer} layers x {self.n_neurons} {self.site} features, "
                             f"the model has {n_layer} x {width}")
        param = next(model.parameters())
        sites = model.neuron_sites
        saved = [s.clamp for s in sites]
        with ExitStack() as hooks:
            try:
                for layer in range(self.n_layer):
                    chosen = [(i, m) for (l, i), m in zip(self.neurons, self.medians) if l == layer]
                    if not chosen:
                        continue
                    index = torch.tensor([i for i, _ in chosen], device=param.device)
                    mask = torch.zeros(width, dtype=torch.bool, device=param.device).index_fill_(0, index, True)
                    value = torch.zeros(width, dtype=param.dtype, device=param.device).index_copy_(
                        0, index, torch.tensor([m for _, m in chosen], dtype=param.dtype, device=param.device))
                    if self.site == "mlp":  # the fused kernel, as GRPO+CIRM scores
                        sites[layer].clamp = (mask, value, self.positions == "last")
                    else:
                        hooks.enter_context(features_clamped(model, self.site, layer, mask, value,
                                                             self.positions == "last"))
                yield model
            finally:
                for site, clamp in zip(sites, saved):
                    site.clamp = clamp


def save_intervention(path, intervention: Intervention, **extra) -> None:
    write_json(path, {**asdict(intervention), **extra})


def load_intervention(path) -> Intervention:
    path = Path(path)
    data = read_json(path, "an intervention, as `nanobias intervene` writes it")
    fields = ("n_layer", "n_neurons", "neurons", "medians", "positions", "k", "by_attribute")
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a JSON object with {', '.join(fields)}")
    missing = [f for f in fields if f not in data]
    if missing:
        raise UserError(f"{path}: field {missing[0]!r} missing (expected {', '.join(fields)})")
    try:
        return Intervention(data["n_layer"], data["n_neurons"], [tuple(n) for n in data["neurons"]],
                            data["medians"], data["positions"], data["k"], data["by_attribute"],
                            data.get("site", "mlp"))  # written before sites existed: the MLP's neurons
    except (ValueError, TypeError) as e:
        raise UserError(f"{path}: {e}") from None


def column_medians(x: torch.Tensor) -> torch.Tensor:
    """x [N, M] -> medians [M] float64 (mean of the two middle values when N is even)."""
    xs = x.double().sort(dim=0).values
    return (xs[(x.shape[0] - 1) // 2] + xs[x.shape[0] // 2]) / 2


# ---------------------------------------------------------------- capture (with a cached prefix)

@contextmanager
def last_token_recorded(model: GPT, site: str = "mlp"):
    """Inside the block, every forward of `model` appends each layer's last-token features [B, W] at
    `site` (detached) to records[layer]; yields records (n_layer lists). Forward hooks, removed on exit;
    registered after an intervention's, they record the edited values."""
    width = site_width(model, site)
    modules = site_modules(model, site)
    records = [[] for _ in modules]
    handles = [m.register_forward_hook(lambda m, inputs, a, out=out: out.append(a[:, -1, :width].detach()))
               for m, out in zip(modules, records)]
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
    for rows in length_batches([len(q) for q in seqs], batch_size):
        ids, mask = left_pad([seqs[i] for i in rows], enc.eot_token, param.device)  # [B, T]
        cache = KVCache(rm.gpt.config, len(rows), ids.shape[1], param.device, param.dtype)
        rm(ids[:, :-1], mask[:, :-1], cache=cache)
        batches.append(PrefilledBatch(rows, cache, mask, ids[:, -1:]))
    return batches


@torch.no_grad()
def last_token_rewards(rm: RewardModel, batches: list[PrefilledBatch], intervention: Intervention | None = None,
                       capture: bool = False, site: str = "mlp"):
    """Rewards [N] of prefilled sequences, and with capture=True the last-token features of `site`
    [N, n_layer, W]. Only positions="last" is exact here."""
    if intervention is not None and intervention.positions != "last":
        raise ValueError("last_token_rewards: a cached prefix only supports positions='last'; use reward.score")
    n = sum(len(b.rows) for b in batches)
    rewards = torch.empty(n)
    acts = torch.empty(n, len(rm.gpt.transformer.h), site_width(rm.gpt, site)) if capture else None
    with (intervention.applied(rm.gpt) if intervention is not None else nullcontext(),
          last_token_recorded(rm.gpt, site) if capture else nullcontext() as records):
        for b in batches:
            b.cache.length = b.mask.shape[1] - 1  # drop the last token of an earlier pass
            rewards[b.rows] = rm(b.last, b.mask, cache=b.cache).float().cpu()
            if capture:
                acts[b.rows] = torch.stack([layer.pop() for layer in records], 1).float().cpu()  # [B, L, W]
    return (rewards, acts) if capture else rewards


def capture_pairs(rm: RewardModel, enc, pairs, site: str = "mlp"):
    """Both completions of each pair (chosen first) -> (prefilled batches, rewards [2P], last-token
    features of `site` [2P, L, W])."""
    batches = prefill(rm, enc, [p.prompt for p in pairs] * 2,
                      [p.chosen.text for p in pairs] + [p.rejected.text for p in pairs])
    return (batches, *last_token_rewards(rm, batches, capture=True, site=site))
