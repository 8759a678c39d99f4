"""The reward model: a GPT backbone with a scalar head, trained on preference pairs.

    r(x, y) = w . h(x + y + <eot>)[-1] + b

h is the final hidden state of the GPT (initialised from the pretrained policy) at the
end-of-text token appended to prompt x and completion y; sequences are left-padded, so that
token sits at index -1 for every row. Two losses:

- Bradley-Terry (Shinoda et al., 2026, Sec. 2):  L = -log sigmoid(r(x, y_c) - r(x, y_r))
- regression (BiasGRPO, Sec. 3: its reward model regresses a score):  L = (r(x, y) - label)^2,
  label 1 for the chosen and 0 for the rejected completion of each pair.

The pairs, and the style cues planted in them, come from preferences.py; intervention.py edits
the trained model's neurons, reward_eval.py measures it.
"""

import random
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from nanobias import distributed
from nanobias.checkpoint import load_model, load_policy, policy_meta
from nanobias.model import GPT, GPTConfig
from nanobias.preferences import Pair, PairConfig, make_pair, make_pairs, planted_rates
from nanobias.sampling import left_pad
from nanobias.train import TrainConfig, train

LOSSES = ("bt", "regression")


@dataclass
class RewardConfig(TrainConfig):
    """Reward-model training; batch_size = preference pairs per step."""
    loss: str = "bt"  # "bt" (Bradley-Terry) | "regression"

    def __post_init__(self):
        super().__post_init__()
        if self.loss not in LOSSES:
            raise ValueError(f"reward loss: expected one of {LOSSES}, got {self.loss!r}")


# ---------------------------------------------------------------- model and scoring

class RewardModel(nn.Module):
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
