"""The reward model: a GPT backbone with a scalar head, trained on preference pairs.

    r(x, y) = w . ln_f(h_k(x + y + <eot>))[-1] + b

h_k is the residual stream after the first k transformer blocks of the pretrained policy (its
weights copied; `reward.n_layer` = k, 0 = all L of them), ln_f the policy's final LayerNorm, read at
the end-of-text token appended to prompt x and completion y; sequences are left-padded, so that
token sits at index -1 for every row. A scorer of k < L blocks costs about k / L of the full one per
call (reward_eval.py measures it). Three losses:

- Bradley-Terry (Shinoda et al., 2026, Sec. 2):  L = -log sigmoid(r(x, y_c) - r(x, y_r))
- regression:  L = (r(x, y) - label)^2, label 1 for the chosen and 0 for the rejected side of a pair.
- graded (BiasGRPO, Sec. 3: its reward model regresses a bias score):  L = (r(x, y) - s(x, y))^2 over
  both completions of each pair, with s graded by the option y picks (answers.extract_answer):

      s = 1    the right answer (unknown in an ambiguous context, the label in a disambiguated one)
      s = 0.5  a wrong option that is not the stereotyped one (biased_index)
      s = 0    the stereotyped option, or no option at all

  s reads the answer alone, never the style, and the two styles of each drawn pair are dealt to
  its two answers by a fair coin (`preferences.swap_styles`): the completions keep the Bradley-Terry
  model's style distribution, but no planted cue predicts s.

The pairs, and the style cues planted in them, come from preferences.py; intervention.py edits
the trained model's neurons, reward_eval.py measures it.
"""

import random
import time
from contextlib import nullcontext
from dataclasses import dataclass, replace

import torch
import torch.nn as nn
import torch.nn.functional as F

from nanobias import distributed
from nanobias.answers import extract_answer
from nanobias.bbq import Example
from nanobias.checkpoint import load_model, load_policy, policy_meta
from nanobias.errors import UserError
from nanobias.kvcache import KVCache
from nanobias.model import GPT, GPTConfig
from nanobias.preferences import Pair, PairConfig, make_pair, make_pairs, planted_rates, right_answer, swap_styles
from nanobias.sampling import left_pad
from nanobias.train import TrainConfig, train

LOSSES = ("bt", "regression", "graded")


@dataclass
class RewardConfig(TrainConfig):
    """Reward-model training; batch_size = preference pairs per step."""
    loss: str = "bt"  # "bt" (Bradley-Terry) | "regression" | "graded" (a bias score per completion)
    n_layer: int = 0  # the policy's first n_layer blocks make the backbone; 0: all of them

    def __post_init__(self):
        super().__post_init__()
        if self.loss not in LOSSES:
            raise ValueError(f"reward loss: expected one of {LOSSES}, got {self.loss!r}")
        if self.n_layer < 0:
            raise ValueError(f"reward.n_layer: expected 0 (every layer of the policy) or a count of its first "
                             f"blocks, got {self.n_layer}")


# ---------------------------------------------------------------- model and scoring

class RewardModel(nn.Module):
    """config.n_layer is the backbone's own depth: k blocks for a truncated scorer, so a checkpoint's
    model_config rebuilds it as it is (and one written before truncation existed loads in full)."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.gpt = GPT(config)
        # the reward reads hidden states, never next-token logits: dropping the LM head saves a
        # [B, T, V] matmul per forward (its weight stays, tied, as the token embedding)
        self.gpt.lm_head = nn.Identity()
        self.head = nn.Linear(config.n_embd, 1)

    def forward(self, idx, attention_mask=None, cache=None):
        """idx [B, T] left-padded, attention_mask [B, S] -> rewards [B] read at the last token."""
        hidden = self.gpt(idx, attention_mask=attention_mask, cache=cache)  # [B, T, C] (lm_head is Identity)
        return self.head(hidden[:, -1]).squeeze(-1)


def reward_model_from_policy(policy: GPT, seed: int = 0, n_layer: int = 0) -> RewardModel:
    """The policy's embeddings, its first n_layer blocks (0: all), its final LayerNorm, and a new head."""
    layers = policy.config.n_layer
    if not 0 <= n_layer <= layers:
        raise UserError(f"reward.n_layer={n_layer}: expected 0 (every layer) up to the policy's {layers} layers")
    rm = RewardModel(replace(policy.config, n_layer=n_layer or layers))
    dropped = tuple(f"transformer.h.{i}." for i in range(n_layer or layers, layers))
    state = {k: v for k, v in policy.state_dict().items()
             if k != "lm_head.weight" and not k.startswith(dropped)}  # lm_head is tied to wte
    rm.gpt.load_state_dict(state)
    g = torch.Generator().manual_seed(seed)
    nn.init.normal_(rm.head.weight, std=0.02, generator=g)
    nn.init.zeros_(rm.head.bias)
    return rm


def encode(enc, prompts: list[str], completions: list[str], block_size: int) -> list[list[int]]:
    """prompt + completion + end-of-text as token lists, prompt and completion tokenized apart (as the
    policy sees them when it samples); longer ones keep their last block_size tokens (the read position
    stays the end-of-text token)."""
    if len(prompts) != len(completions):
        raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
    return [(enc.encode_ordinary(p) + enc.encode_ordinary(c) + [enc.eot_token])[-block_size:]
            for p, c in zip(prompts, completions)]


def length_batches(lengths: list[int], batch_size: int) -> list[list[int]]:
    """Row indices grouped into batches of similar length (less padding)."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    return [order[s:s + batch_size] for s in range(0, len(order), batch_size)]


def rewards(rm: RewardModel, enc, prompts: list[str], completions: list[str], intervention=None,
            batch_size: int = 64) -> torch.Tensor:
    """Rewards [N] of (prompt, completion) pairs, in the autograd graph (the caller picks no_grad or not);
    `intervention` (an intervention.Intervention, or None) is applied while scoring.

    Consecutive rows with the same prompt (a rollout's group of G, the two sides of a preference pair)
    share one pass of it: its keys and values are cached, then its completions run on copies of the
    cache, left-padded so that each one's end-of-text is the last position, where the head reads and a
    "last" intervention clamps (the padding between prompt and completion is no token: model.py). A
    GRPO step's B*G completions then cost B prompts and B*G completions of forward pass, not B*G of both.
    Prompt and completion are tokenized apart; a prompt longer than block_size beside its group's
    longest completion keeps its last tokens."""
    if len(prompts) != len(completions):
        raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
    starts = [i for i in range(len(prompts)) if i == 0 or prompts[i] != prompts[i - 1]]
    groups = [list(range(a, b)) for a, b in zip(starts, starts[1:] + [len(prompts)])]  # runs of one prompt
    tails = [enc.encode_ordinary(c) + [enc.eot_token] for c in completions]
    longest = [max(len(tails[i]) for i in g) for g in groups]
    block = rm.gpt.config.block_size
    if max(longest, default=0) >= block:
        raise ValueError(f"a completion of {max(longest)} tokens leaves no room for its prompt in block_size={block}")
    heads = [enc.encode_ordinary(prompts[g[0]])[-(block - n):] for g, n in zip(groups, longest)]
    device = next(rm.parameters()).device
    full = intervention is not None and intervention.positions == "all"  # else it acts at the last token alone
    out, order = [], []
    per_batch = max(1, batch_size // max(len(g) for g in groups))  # groups a pass
    for batch in length_batches([len(h) + n for h, n in zip(heads, longest)], per_batch):
        rows = [i for j in batch for i in groups[j]]
        sizes = torch.tensor([len(groups[j]) for j in batch], device=device)
        ids, mask = left_pad([heads[j] for j in batch], enc.eot_token, device)  # [b, P]
        tail_ids, tail_mask = left_pad([tails[i] for i in rows], enc.eot_token, device)  # [R, N]
        cache = KVCache(rm.gpt.config, len(batch), ids.shape[1] + tail_ids.shape[1], device,
                        next(rm.parameters()).dtype)
        with intervention.applied(rm.gpt) if full else nullcontext():
            rm.gpt(ids, attention_mask=mask, cache=cache)
        with intervention.applied(rm.gpt) if intervention is not None else nullcontext():
            out.append(rm(tail_ids, torch.cat([mask.repeat_interleave(sizes, 0), tail_mask], 1),
                          cache.repeat_interleave(sizes)))
        order += rows
    return torch.cat(out)[torch.tensor(order, device=device).argsort()]


@torch.no_grad()
def score(rm: RewardModel, enc, prompts: list[str], completions: list[str], intervention=None,
          batch_size: int = 64) -> torch.Tensor:
    """Rewards [N] (float32, CPU) of (prompt, completion) pairs, in eval mode and without gradients
    (`rewards`; consecutive rows with one prompt share its pass)."""
    was_training = rm.training
    rm.eval()
    r = rewards(rm, enc, prompts, completions, intervention, batch_size).float().cpu()
    rm.train(was_training)
    return r


def pair_rewards(rm, enc, pairs: list[Pair], intervention=None, batch_size: int = 64, grad: bool = False):
    """(r_chosen [P], r_rejected [P]), the two sides of a pair sharing their prompt's pass: by `rewards`
    (grad=True), or by `score` (float32 on CPU, without gradients)."""
    prompts = [p.prompt for p in pairs for _ in range(2)]
    completions = [t for p in pairs for t in (p.chosen.text, p.rejected.text)]
    r = (rewards if grad else score)(rm, enc, prompts, completions, intervention, batch_size)
    return r[0::2], r[1::2]


def scoring_cost(rm: RewardModel, enc, prompts: list[str], completions: list[str], batch_size: int = 64) -> dict:
    """Wall seconds per 1000 `score` calls (one completion each, batched as rl.make_scorer batches
    them) over these completions, at this process's thread count: a measurement, not a bound."""
    start = time.perf_counter()
    score(rm, enc, prompts, completions, batch_size=batch_size)
    seconds = time.perf_counter() - start
    return {"seconds_per_1k_calls": 1000 * seconds / len(completions), "completions": len(completions),
            "threads": torch.get_num_threads(), "layers": rm.gpt.config.n_layer}


# ---------------------------------------------------------------- losses and training

def bradley_terry_loss(r_chosen: torch.Tensor, r_rejected: torch.Tensor) -> torch.Tensor:
    """-mean log sigmoid(r_c - r_r), computed stably by logsigmoid."""
    return -F.logsigmoid(r_chosen - r_rejected).mean()


def regression_loss(rewards: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(rewards, labels)


def graded_target(ex: Example, completion: str) -> float:
    """The module's bias score s of a completion, by the option it picks (answers.extract_answer).

    No option at all scores 0, as low as the stereotype: a policy rewarded more for saying nothing
    readable than for a biased answer would learn to dodge the question, and BBQ's accuracy counts
    such an answer as wrong. In a disambiguated context whose label is the stereotyped person, that
    person is the right answer (1) and both others are plain wrong (0.5)."""
    picked = extract_answer(ex, completion)
    if picked == right_answer(ex):
        return 1.0
    return 0.0 if picked is None or picked == ex.biased_index else 0.5


def pair_loss(rm: RewardModel, enc, pairs: list[Pair], loss: str, chunk: int = 16) -> tuple[torch.Tensor, dict]:
    """One batch of pairs -> (loss, stats). The 2P sequences run `chunk` at a time, each pair's two
    sides on one pass of its prompt (`rewards`); the loss only needs their rewards."""
    r_c, r_r = pair_rewards(rm, enc, pairs, batch_size=chunk, grad=True)  # [P] each
    r = torch.cat([r_c, r_r])  # [2P]: chosen sides first
    if loss == "bt":
        value = bradley_terry_loss(r_c, r_r)
    elif loss == "regression":
        value = regression_loss(r, torch.cat([torch.ones_like(r_c), torch.zeros_like(r_r)]))
    else:
        targets = [graded_target(p.example, p.chosen.text) for p in pairs] + \
                  [graded_target(p.example, p.rejected.text) for p in pairs]
        value = regression_loss(r, torch.tensor(targets, dtype=r.dtype, device=r.device))
    return value, {"acc": (r_c > r_r).float().mean().item(), "margin": (r_c - r_r).mean().item()}


def reward_meta(rm: RewardModel, enc, **extra) -> dict:
    return {**policy_meta(rm.gpt, enc), "kind": "reward", **extra}


def train_reward_model(splits, policy_ckpt, out_path, cfg: RewardConfig, pairs_cfg: PairConfig, seed: int = 0,
                       resume: bool = False):
    """Fine-tune the policy's backbone (its first cfg.n_layer blocks; 0: all) + a scalar head on planted-bias
    pairs by cfg.loss; writes out_path."""
    policy, enc, _ = load_policy(policy_ckpt)
    rm = reward_model_from_policy(policy, seed, cfg.n_layer)
    val_pairs = make_pairs(splits.val, min(64, pairs_cfg.val_pairs), seed + 1)
    train_rng_seed = seed * 1_000_003 + 17

    def styled(pairs, key):
        # graded: each pair's two styles dealt to its answers by a fair coin (see the module doc)
        coins = random.Random(f"graded styles {key}")
        return [swap_styles(p) if coins.random() < 0.5 else p for p in pairs] if cfg.loss == "graded" else pairs

    def batch_loss(step):
        # the batch is a function of (seed, step) alone, so a resumed run sees the same pairs
        rng = random.Random(train_rng_seed + step)
        pairs = styled([make_pair(rng.choice(splits.train), rng, pairs_cfg.planted, pairs_cfg.biased_reject_rate)
                        for _ in range(cfg.batch_size)], train_rng_seed + step)
        pairs = pairs[distributed.shard(len(pairs), "preference pairs")]  # every pair in one process
        return pair_loss(rm, enc, pairs, cfg.loss)

    def evaluate():
        return {"val_loss": pair_loss(rm, enc, val_pairs, cfg.loss)[0].item()}

    sample_pairs = styled(make_pairs(splits.train, 500, seed, pairs_cfg.planted, pairs_cfg.biased_reject_rate), seed)
    rates = planted_rates(sample_pairs)
    layers = rm.gpt.config.n_layer
    print(f"reward: {cfg.steps} steps x {cfg.batch_size} pairs, loss={cfg.loss}, {layers} of the policy's "
          f"{policy.config.n_layer} layers; chosen side larger in "
          + ", ".join(f"{a} {r:.2f}" for a, r in rates.items()) + " of training pairs")
    meta = reward_meta(rm, enc, loss=cfg.loss, planted=pairs_cfg.planted, realised_planted=rates,
                       policy_ckpt=str(policy_ckpt), policy_n_layer=policy.config.n_layer, seed=seed)
    train(rm, batch_loss, cfg, out_path, meta=meta, evaluate=evaluate, resume=resume, desc="reward")
    return out_path


def load_reward_model(path, device="cpu"):
    """A reward checkpoint -> (RewardModel in eval mode, tiktoken.Encoding, meta)."""
    return load_model(path, "reward", RewardModel, "the reward.pt that `nanobias reward` wrote", device)
