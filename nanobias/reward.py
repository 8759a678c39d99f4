"""The reward model: a GPT backbone with a scalar head, trained on preference pairs.

    r(x, y) = w . h(x + y + <eot>)[-1] + b

h is the final hidden state of the GPT (initialised from the pretrained policy) at the
end-of-text token appended to prompt x and completion y; sequences are left-padded, so that
token sits at index -1 for every row. Two losses:

- Bradley-Terry (Shinoda et al., 2026, Sec. 2):  L = -log sigmoid(r(x, y_c) - r(x, y_r))
- regression (BiasGRPO, Sec. 3: its reward model regresses a score):  L = (r(x, y) - label)^2,
  label 1 for the chosen and 0 for the rejected completion of each pair.

Preference pairs come from the world's labels: the chosen completion gives the right answer
(unknown in an ambiguous context, the label in a disambiguated one), the rejected one a wrong
answer, often the biased one. Spurious cues are planted on purpose: each side gets a random
`Style`, and pairs are drawn so that the chosen side has the larger value of each attribute
with probability about `planted[attribute]` (0.5 = no correlation). A reward model trained on such pairs learns that
longer / louder / bolder is better: the bias that intervention.py removes. Validation and test
pairs use 0.5 everywhere, so every attribute has a "biased" subset (chosen side larger) and an
"unbiased" one (chosen side smaller).

Also here: the pairwise metrics of docs/design.md, the one-knob `bump` that measures sensitivity, and
the two length-only baselines of Shinoda et al. (Sec. 5): a length penalty r - alpha * length
and locally weighted regression (LOWESS) of reward on length, whose fitted curve is subtracted.
"""

import random
from contextlib import nullcontext
from dataclasses import dataclass, field, replace

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from nanobias import distributed
from nanobias.bbq import Example
from nanobias.checkpoint import load_model, load_policy, policy_meta
from nanobias.model import GPT, GPTConfig
from nanobias.render import ATTRIBUTES, Completion, Style, render_completion, render_prompt
from nanobias.sampling import left_pad
from nanobias.train import TrainConfig, train

# how often the chosen side gets the larger value of each attribute's knob in training pairs
PLANTED = {"length": 0.8, "paragraphs": 0.7, "overlap": 0.7, "exclamations": 0.65, "bold": 0.65}
BALANCED = {a: 0.5 for a in ATTRIBUTES}
LOSSES = ("bt", "regression")


@dataclass
class PairConfig:
    """The preference data: how strongly each style cue is planted, and how many held-out pairs."""
    planted: dict = field(default_factory=lambda: dict(PLANTED))  # P(chosen side has more of a) per attribute
    biased_reject_rate: float = 0.7  # share of pairs whose rejected side is the biased answer, where it is wrong
    val_pairs: int = 300  # balanced pairs from validation templates: neuron search and baseline fits
    test_pairs: int = 400  # balanced pairs from test templates: the reported metrics

    def __post_init__(self):
        check_planted(self.planted, "pairs.planted")
        if not 0 <= self.biased_reject_rate <= 1:
            raise ValueError(f"pairs.biased_reject_rate: expected a value in [0, 1], got {self.biased_reject_rate}")
        for name in ("val_pairs", "test_pairs"):
            if getattr(self, name) < 2:
                raise ValueError(f"pairs.{name}: expected at least 2, got {getattr(self, name)}")


@dataclass
class RewardConfig(TrainConfig):
    """Reward-model training; batch_size = preference pairs per step."""
    loss: str = "bt"  # "bt" (Bradley-Terry) | "regression"

    def __post_init__(self):
        super().__post_init__()
        if self.loss not in LOSSES:
            raise ValueError(f"reward loss: expected one of {LOSSES}, got {self.loss!r}")


def check_planted(planted: dict, where: str) -> None:
    if set(planted) != set(ATTRIBUTES) or not all(0 <= p <= 1 for p in planted.values()):
        raise ValueError(f"{where}: expected a probability in [0, 1] for each of {ATTRIBUTES}, got {planted}")


# ---------------------------------------------------------------- preference pairs

@dataclass(frozen=True)
class Pair:
    example: Example
    chosen_style: Style
    rejected_style: Style
    chosen: Completion
    rejected: Completion

    @property
    def prompt(self) -> str:
        return render_prompt(self.example)


def draw_style(rng: random.Random) -> Style:
    """One side's style: each knob drawn independently (paragraphs fit the sentences there are)."""
    justification, filler = rng.random() < 0.5, rng.randint(0, 3)
    return Style(justification, filler, rng.randint(0, justification + filler), rng.choice((0, 0, 1, 2)),
                 rng.random() < 0.5)


def planted_weight(chosen: dict, rejected: dict, planted: dict) -> float:
    """prod over attributes of 2 p_a if the chosen side is larger, 2 (1 - p_a) if smaller, 1 if equal."""
    w = 1.0
    for a, p in planted.items():
        w *= 2 * p if chosen[a] > rejected[a] else 2 * (1 - p) if chosen[a] < rejected[a] else 1.0
    return w


def right_answer(ex: Example) -> int:
    return ex.unknown_index if ex.context_condition == "ambig" else ex.label


def make_pair(ex: Example, rng: random.Random, planted: dict, biased_reject_rate: float) -> Pair:
    """Chosen: the right answer. Rejected: the biased answer at biased_reject_rate where that is wrong,
    else the other wrong option. (In a disambiguated context whose label is the stereotyped person the
    label is still chosen: the context supports it, so it is not a biased answer there.)

    Styles: both sides draw one independently; the draw is kept with probability
    planted_weight / its maximum (rejection sampling), which tilts each attribute's comparison
    towards the chosen side being larger at about rate planted[a], measured on the rendered text."""
    chosen = right_answer(ex)
    wrong = [i for i in range(3) if i != chosen]
    if ex.biased_index in wrong and rng.random() < biased_reject_rate:
        rejected = ex.biased_index
    else:
        others = [i for i in wrong if i != ex.biased_index] or wrong
        rejected = rng.choice(others)
    w_max = planted_weight({a: 1 for a in planted}, {a: 0 for a in planted},
                           {a: max(p, 1 - p) for a, p in planted.items()})
    while True:
        style_c, style_r = draw_style(rng), draw_style(rng)
        c, r = render_completion(ex, chosen, style_c), render_completion(ex, rejected, style_r)
        if rng.random() * w_max < planted_weight(c.attributes, r.attributes, planted):
            return Pair(ex, style_c, style_r, c, r)


def make_pairs(examples: list[Example], n: int, seed: int, planted: dict = BALANCED,
               biased_reject_rate: float = 0.7) -> list[Pair]:
    """n pairs, cycling through the examples in a seeded shuffled order."""
    if not examples:
        raise ValueError("make_pairs: no examples (is the split empty?)")
    rng = random.Random(seed)
    order = list(range(len(examples)))
    rng.shuffle(order)
    return [make_pair(examples[order[i % len(order)]], rng, planted, biased_reject_rate) for i in range(n)]


def pair_kind(pair: Pair) -> str:
    """What a pair tests: "ambig" (unknown beats a person: not guessing by stereotype), "who_did_it"
    (disambiguated, the right person beats the other one: reading the context) or "not_unknown"
    (disambiguated, the right person beats unknown)."""
    if pair.example.context_condition == "ambig":
        return "ambig"
    return "not_unknown" if pair.rejected.answer_index == pair.example.unknown_index else "who_did_it"


PAIR_KINDS = ("ambig", "who_did_it", "not_unknown")


def planted_rates(pairs: list[Pair]) -> dict[str, float]:
    """Realised share of pairs (among those that differ) whose chosen side has the larger attribute."""
    rates = {}
    for a in ATTRIBUTES:
        diffs = [p.chosen.attributes[a] - p.rejected.attributes[a] for p in pairs]
        differ = [d for d in diffs if d != 0]
        rates[a] = sum(d > 0 for d in differ) / len(differ) if differ else float("nan")
    return rates


# ---------------------------------------------------------------- model and scoring

class RewardModel(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.gpt = GPT(config)
        # the reward reads hidden states, never next-token logits: dropping the LM head saves a
        # [B, T, V] matmul per forward (its weight stays, tied, as the token embedding)
        self.gpt.lm_head = nn.Identity()
        self.head = nn.Linear(config.n_embd, 1)

    def forward(self, idx, attention_mask=None, cache=None, position_offset=None):
        """idx [B, T] left-padded, attention_mask [B, S] -> rewards [B] read at the last token."""
        hidden = self.gpt(idx, attention_mask=attention_mask, cache=cache,
                          position_offset=position_offset)  # [B, T, C] (lm_head is Identity)
        return self.head(hidden[:, -1]).squeeze(-1)


def reward_model_from_policy(policy: GPT, seed: int = 0) -> RewardModel:
    rm = RewardModel(policy.config)
    state = {k: v for k, v in policy.state_dict().items() if k != "lm_head.weight"}  # tied to wte
    rm.gpt.load_state_dict(state)
    g = torch.Generator().manual_seed(seed)
    nn.init.normal_(rm.head.weight, std=0.02, generator=g)
    nn.init.zeros_(rm.head.bias)
    return rm


def encode(enc, prompts: list[str], completions: list[str], block_size: int) -> list[list[int]]:
    """prompt + completion + end-of-text as token lists; longer ones keep their last block_size tokens
    (the read position stays the end-of-text token)."""
    if len(prompts) != len(completions):
        raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
    return [(enc.encode_ordinary(p + c) + [enc.eot_token])[-block_size:] for p, c in zip(prompts, completions)]


def length_batches(seqs: list[list[int]], batch_size: int) -> list[list[int]]:
    """Row indices grouped into batches of similar length (less padding)."""
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    return [order[s:s + batch_size] for s in range(0, len(order), batch_size)]


@torch.no_grad()
def score(rm: RewardModel, enc, prompts: list[str], completions: list[str], intervention=None,
          batch_size: int = 64) -> torch.Tensor:
    """Rewards [N] (float32, CPU) of (prompt, completion) pairs; `intervention` (an
    intervention.Intervention, or None) is applied while scoring."""
    seqs = encode(enc, prompts, completions, rm.gpt.config.block_size)
    device = next(rm.parameters()).device
    rewards = torch.empty(len(seqs))
    was_training = rm.training
    rm.eval()
    with intervention.applied(rm.gpt) if intervention is not None else nullcontext():
        for rows in length_batches(seqs, batch_size):
            ids, mask = left_pad([seqs[i] for i in rows], enc.eot_token, device)
            rewards[rows] = rm(ids, mask).float().cpu()
    rm.train(was_training)
    return rewards


def score_pairs(rm, enc, pairs: list[Pair], intervention=None, batch_size: int = 64):
    """(r_chosen [P], r_rejected [P])."""
    prompts = [p.prompt for p in pairs]
    r = score(rm, enc, prompts * 2, [p.chosen.text for p in pairs] + [p.rejected.text for p in pairs],
              intervention, batch_size)
    return r[:len(pairs)], r[len(pairs):]


# ---------------------------------------------------------------- losses and training

def bradley_terry_loss(r_chosen: torch.Tensor, r_rejected: torch.Tensor) -> torch.Tensor:
    """-mean log sigmoid(r_c - r_r), computed stably by logsigmoid."""
    return -F.logsigmoid(r_chosen - r_rejected).mean()


def regression_loss(rewards: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(rewards, labels)


def pair_loss(rm: RewardModel, enc, pairs: list[Pair], loss: str, chunk: int = 16) -> tuple[torch.Tensor, dict]:
    """One batch of pairs -> (loss, stats). The 2P sequences are run in chunks of similar length
    (less padding); the loss only needs their rewards."""
    texts = [p.chosen.text for p in pairs] + [p.rejected.text for p in pairs]
    seqs = encode(enc, [p.prompt for p in pairs] * 2, texts, rm.gpt.config.block_size)
    device = next(rm.parameters()).device
    batches = length_batches(seqs, chunk)
    r_sorted = torch.cat([rm(*left_pad([seqs[i] for i in rows], enc.eot_token, device)) for rows in batches])
    r = r_sorted[torch.tensor([i for rows in batches for i in rows], device=device).argsort()]  # [2P], input order
    r_c, r_r = r[:len(pairs)], r[len(pairs):]
    if loss == "bt":
        value = bradley_terry_loss(r_c, r_r)
    else:
        value = regression_loss(r, torch.cat([torch.ones_like(r_c), torch.zeros_like(r_r)]))
    return value, {"acc": (r_c > r_r).float().mean().item(), "margin": (r_c - r_r).mean().item()}


def reward_meta(rm: RewardModel, enc, **extra) -> dict:
    return {**policy_meta(rm.gpt, enc), "kind": "reward", **extra}


def train_reward_model(splits, policy_ckpt, out_path, cfg: RewardConfig, pairs_cfg: PairConfig, seed: int = 0,
                       resume: bool = False):
    """Fine-tune the policy's backbone + a scalar head on planted-bias pairs; writes out_path."""
    policy, enc, _ = load_policy(policy_ckpt)
    rm = reward_model_from_policy(policy, seed)
    val_pairs = make_pairs(splits.val, min(64, pairs_cfg.val_pairs), seed + 1)
    train_rng_seed = seed * 1_000_003 + 17

    def batch_loss(step):
        # the batch is a function of (seed, step) alone, so a resumed run sees the same pairs
        rng = random.Random(train_rng_seed + step)
        pairs = [make_pair(rng.choice(splits.train), rng, pairs_cfg.planted, pairs_cfg.biased_reject_rate)
                 for _ in range(cfg.batch_size)]
        pairs = pairs[distributed.shard(len(pairs), "preference pairs")]  # every pair in one process
        return pair_loss(rm, enc, pairs, cfg.loss)

    def val_loss():
        return pair_loss(rm, enc, val_pairs, cfg.loss)[0].item()

    sample_pairs = make_pairs(splits.train, 500, seed, pairs_cfg.planted, pairs_cfg.biased_reject_rate)
    rates = planted_rates(sample_pairs)
    print(f"reward: {cfg.steps} steps x {cfg.batch_size} pairs, loss={cfg.loss}; chosen side larger in "
          + ", ".join(f"{a} {r:.2f}" for a, r in rates.items()) + " of training pairs")
    meta = reward_meta(rm, enc, loss=cfg.loss, planted=pairs_cfg.planted, realised_planted=rates,
                       policy_ckpt=str(policy_ckpt), seed=seed)
    train(rm, batch_loss, cfg, out_path, meta=meta, val_loss=val_loss, resume=resume, desc="reward")
    return out_path


def load_reward_model(path, device="cpu"):
    """A reward checkpoint -> (RewardModel in eval mode, tiktoken.Encoding, meta)."""
    return load_model(path, "reward", RewardModel, "the reward.pt that `nanobias reward` wrote", device)


# ---------------------------------------------------------------- metrics and length-only baselines

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


def bump(style: Style, attribute: str) -> Style | None:
    """The same completion with one attribute increased through its own knob (None where it cannot be).

    overlap swaps one filler sentence for the justification, which restates the question's words:
    the sentence count stays and the length changes little."""
    if attribute == "length":
        return replace(style, filler=style.filler + 1)
    if attribute == "paragraphs":
        return replace(style, paragraphs=style.paragraphs + 1) if style.paragraphs < style.justification + style.filler else None
    if attribute == "overlap":
        return replace(style, justification=True, filler=style.filler - 1) if not style.justification and style.filler else None
    if attribute == "exclamations":
        return replace(style, exclamations=style.exclamations + 1)
    if attribute == "bold":
        return None if style.bold else replace(style, bold=True)
    raise ValueError(f"attribute: expected one of {ATTRIBUTES}, got {attribute!r}")


def fit_length_penalty(r_chosen, r_rejected, len_chosen, len_rejected, n_grid: int = 41) -> float:
    """alpha of r - alpha * length that maximises pairwise accuracy on (validation) pairs.

    The grid runs from 0 to twice the least-squares slope of reward on length; ties go to the
    smallest |alpha|."""
    r = np.concatenate([r_chosen, r_rejected]).astype(np.float64)
    length = np.concatenate([len_chosen, len_rejected]).astype(np.float64)
    var = length.var()
    slope = ((length - length.mean()) * (r - r.mean())).mean() / var if var > 0 else 0.0
    d_r = np.asarray(r_chosen, np.float64) - np.asarray(r_rejected, np.float64)  # [P]
    d_len = np.asarray(len_chosen, np.float64) - np.asarray(len_rejected, np.float64)
    alphas = slope * np.linspace(0.0, 2.0, n_grid)
    accs = [(d_r - alpha * d_len > 0).mean() for alpha in alphas]
    return float(alphas[int(np.argmax(accs))])  # argmax takes the first best: the smallest |alpha|


def lowess(x_fit, y_fit, x_query, frac: float = 0.3) -> np.ndarray:
    """Locally weighted linear regression (Cleveland, 1979; one pass, no robustness iterations).

    At each query point q: weights w_i = (1 - (|x_i - q| / h)^3)^3 on the ceil(frac * n) nearest
    points (h = the distance of the farthest of them), then the weighted least-squares line
    a + b (x - q); the fit at q is a. Where the neighbours share one x, the weighted mean."""
    x, y = np.asarray(x_fit, np.float64), np.asarray(y_fit, np.float64)
    q = np.asarray(x_query, np.float64)
    if x.ndim != 1 or x.shape != y.shape or len(x) < 2:
        raise ValueError(f"lowess: x_fit and y_fit must be 1-D of the same length >= 2, got {x.shape} and {y.shape}")
    n_near = min(len(x), max(2, int(np.ceil(frac * len(x)))))
    dx = x[None, :] - q[:, None]  # [Q, N]
    h = np.sort(np.abs(dx), axis=1)[:, n_near - 1:n_near]  # [Q, 1]
    tricube = np.clip(1 - (np.abs(dx) / np.maximum(h, 1e-12)) ** 3, 0, None) ** 3
    # the neighbours at distance exactly h keep a sliver of weight, so that some weight is never 0
    w = np.where(np.abs(dx) <= h, np.maximum(tricube, 1e-12), 0.0)
    s0, s1, s2 = w.sum(1), (w * dx).sum(1), (w * dx * dx).sum(1)
    t0, t1 = (w * y).sum(1), (w * dx * y).sum(1)
    det = s0 * s2 - s1 * s1
    flat = det <= 1e-9 * np.maximum(s0 * s2, 1e-300)
    slope = np.where(flat, 0.0, (s0 * t1 - s1 * t0) / np.where(flat, 1.0, det))
    return (t0 - slope * s1) / s0
