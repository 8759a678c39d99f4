"""DPO and IPO: fit the policy to offline preference pairs directly, without a reward model in the loop.

For a prompt x with a chosen completion y_c and a rejected one y_r, the implicit reward margin is

    h = [log pi(y_c|x) - log pi_ref(y_c|x)] - [log pi(y_r|x) - log pi_ref(y_r|x)]

with log pi(y|x) the sum of the token log-probs of the completion (end-of-text included) and
pi_ref the frozen initial policy. Two losses on h:

    DPO (Rafailov et al., 2023, Eq. 7):  L = -log sigmoid(beta * h)
    IPO (Azar et al., 2023):             L = (h - 1 / (2 * beta))^2

DPO keeps pushing h up (its gradient vanishes only as h -> inf, so the policy can drift far from
pi_ref on pairs it already separates); IPO regresses h to the fixed target 1/(2 beta). Log-probs
come from `nanobias.kernels.token_logprobs` (via sampling.completion_logprobs).

Pairs: `preferences.make_pairs`, the builder and the planted spurious cues of the reward model's own
training pairs (chosen = the right answer, rejected = a wrong one, often the biased one).
BiasGRPO compares with DPO as the offline baseline: it never learns from its own samples.

Budget: `steps * B * G` pairs, B*G per step: as many pairs as GRPO and PPO make reward-model calls.

Stability: DPO has no reward in its loop. To put it on the same scale as GRPO and PPO, every
`probe_every` steps the policy samples G completions for the B prompts GRPO sees at that step
(rl.prompt_batch, rl.rollout) and they are scored with the same score_fn. The probe only
watches: no gradient flows through it and its reward-model calls are not training data.
"""

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from nanobias import device, distributed, rl
from nanobias.optim import optimizer_step, stop_if_diverged
from nanobias.preferences import Pair, PairConfig, make_pairs
from nanobias.reward import length_batches
from nanobias.sampling import Samples, completion_batch, completion_logprobs

LOSSES = ("dpo", "ipo")


@dataclass
class DPOConfig(rl.RLOptimConfig):
    beta: float = 0.1  # DPO's inverse temperature; IPO's margin target is 1 / (2 beta)
    # lr: DPO's loss on summed sequence log-probs has no ratio clip, and at the on-policy RL
    # rate it wrecks a small policy, so presets give it a lower one
    probe_every: int = 1  # steps between reward probes of sampled completions (stability only)
    chunk: int = 32  # sequences per forward pass, grouped by length (less padding)

    def __post_init__(self):
        super().__post_init__()
        if not self.beta > 0:
            raise ValueError(f"dpo.beta: expected a positive number, got {self.beta}")
        if self.probe_every < 1 or self.chunk < 1:
            raise ValueError(f"dpo.probe_every, dpo.chunk: expected integers >= 1, "
                             f"got {self.probe_every}, {self.chunk}")


def preference_loss(logp_c: torch.Tensor, logp_r: torch.Tensor, ref_c: torch.Tensor, ref_r: torch.Tensor,
                    beta: float, loss: str = "dpo") -> tuple[torch.Tensor, dict]:
    """Sequence log-probs [P] of chosen / rejected under the policy and the reference -> (mean loss, stats).

    stats: "margin" mean h, "acc" share of pairs with h > 0, "chosen_ratio" / "rejected_ratio" the
    mean log pi/pi_ref of each side (the implicit rewards divided by beta)."""
    if loss not in LOSSES:
        raise ValueError(f"preference loss: expected one of {LOSSES}, got {loss!r}")
    chosen_ratio, rejected_ratio = logp_c - ref_c.detach(), logp_r - ref_r.detach()  # [P]
    h = chosen_ratio - rejected_ratio
    value = -F.logsigmoid(beta * h).mean() if loss == "dpo" else ((h - 1 / (2 * beta)) ** 2).mean()
    stats = {"margin": h.mean().item(), "acc": (h > 0).float().mean().item(),
             "chosen_ratio": chosen_ratio.mean().item(), "rejected_ratio": rejected_ratio.mean().item()}
    return value, stats


def encode_pairs(enc, pairs: list[Pair], block_size: int) -> tuple[list[list[int]], list[list[int]]]:
    """Pairs -> (prompt ids, completion ids + end-of-text) of 2P rows: 0..P-1 chosen, P..2P-1 rejected.

    Prompt and completion are tokenized apart, as the policy sees them when it samples. Batches
    put left-padded prompts before right-padded completions, so a prompt longer than block_size
    minus the longest completion loses its first tokens (the reward model also cuts from the
    left); completions are always whole."""
    prompts = [enc.encode_ordinary(p.prompt) for p in pairs] * 2
    texts = [p.chosen.text for p in pairs] + [p.rejected.text for p in pairs]
    completions = [enc.encode_ordinary(t) + [enc.eot_token] for t in texts]
    longest = max(range(len(texts)), key=lambda i: len(completions[i]))
    room = block_size - len(completions[longest])  # prompt tokens that fit beside every completion
    if room < 1:
        raise ValueError(f"preference pair completion of {len(completions[longest])} tokens leaves no room for "
                         f"its prompt in block_size={block_size}: {texts[longest][:60]!r}...")
    return [p[-room:] for p in prompts], completions


def pair_samples(enc, pairs: list[Pair], block_size: int, device=None) -> Samples:
    """Pairs -> one batch of 2P rows: 0..P-1 chosen, P..2P-1 rejected."""
    return completion_batch(*encode_pairs(enc, pairs, block_size), enc.eot_token, device)


def sequence_logprobs(model, samples: Samples, backend: str = "auto") -> torch.Tensor:
    """Sum of each row's completion token log-probs [R] (temperature 1: the policy itself)."""
    return completion_logprobs(model, samples, temperature=1.0, backend=backend).sum(-1)


def pair_logprobs(model, enc, pairs: list[Pair], chunk: int, backend: str = "auto") -> torch.Tensor:
    """Sequence log-probs [2P] (chosen, then rejected) computed `chunk` sequences at a time, grouped by
    length: completions run from a few tokens to a few dozen, so one padded batch would be mostly padding.
    A pair's two completions share its prompt's forward pass (sampling.completion_logits, groups of 2)."""
    prompts, completions = encode_pairs(enc, pairs, model.config.block_size)
    P = len(pairs)
    device = next(model.parameters()).device
    parts, order = [], []
    lengths = [len(prompts[i]) + max(len(completions[i]), len(completions[i + P])) for i in range(P)]
    for group in length_batches(lengths, max(1, chunk // 2)):
        rows = [r for i in group for r in (i, i + P)]  # chosen, rejected of each pair
        samples = completion_batch([prompts[r] for r in rows], [completions[r] for r in rows], enc.eot_token, device,
                                   group_size=2)
        parts.append(sequence_logprobs(model, samples, backend))
        order += rows
    return torch.cat(parts)[torch.tensor(order, device=device).argsort()]


def dpo_update(model, ref_model, opt, enc, pairs: list[Pair], cfg: DPOConfig, loss: str,
               backend: str = "auto") -> dict:
    """One optimiser step on a batch of pairs. Returns loss, grad_norm and preference_loss's stats."""
    P = len(pairs)
    with torch.no_grad(), device.autocast():
        ref = pair_logprobs(ref_model, enc, pairs, cfg.chunk, backend)  # [2P]
    with device.autocast():
        logp = pair_logprobs(model, enc, pairs, cfg.chunk, backend)  # [2P]
        value, stats = preference_loss(logp[:P], logp[P:], ref[:P], ref[P:], cfg.beta, loss)
    stop_if_diverged(value, "the loss")
    grad_norm = optimizer_step(opt, value, list(model.parameters()), cfg.grad_clip)
    return {"loss": value.item(), "grad_norm": grad_norm, **stats}


@torch.no_grad()
def probe(model, enc, examples, score_fn: rl.ScoreFn, rl_cfg: rl.RLConfig, seed: int) -> dict:
    """Reward statistics of G sampled completions per example (rl.rollout_stats), for stability."""
    ro = rl.rollout(model, enc, examples, rl_cfg, seed)
    return rl.rollout_stats(rl.score_rollout(score_fn, ro), ro)


def train_dpo(splits, policy_ckpt, out_path, rl_cfg: rl.RLConfig, cfg: DPOConfig, pairs_cfg: PairConfig,
              seed: int = 0, loss: str = "dpo", backend: str = "auto", score_fn: rl.ScoreFn | None = None,
              pairs: list[Pair] | None = None) -> dict:
    """DPO (or IPO) from the policy at `policy_ckpt` on `rl_cfg.steps * B * G` pairs from `splits.train`,
    made with the preference data's planted cues (`pairs_cfg`, as the reward model's training pairs),
    or on the given `pairs` (as many, in training order: annotate.py's relabelled ones).

    Writes the policy to `out_path` and per-step metrics to `<stem>.metrics.jsonl`. With a
    `score_fn`, probes the reward every `cfg.probe_every` steps and writes the reward curve
    to `<stem>.reward.png`; the budget curve (curves.py) to `<stem>.curve.json`. Returns {"stability":
    {"reward_fluctuation", "final_reward_mean"} (empty without score_fn), "history": [per-step records],
    "curve": [points], "pairs": number of training pairs}."""
    if loss not in LOSSES:
        raise ValueError(f"train_dpo: loss must be one of {LOSSES}, got {loss!r}")
    per_step = rl_cfg.calls_per_step
    if pairs is None:
        pairs = make_pairs(splits.train, rl_cfg.steps * per_step, seed, pairs_cfg.planted, pairs_cfg.biased_reject_rate)
    elif len(pairs) != rl_cfg.steps * per_step:
        raise ValueError(f"train_dpo: expected {rl_cfg.steps * per_step} pairs (rl.steps x B x G), got {len(pairs)}")
    run = rl.start_run(policy_ckpt, out_path, rl_cfg, cfg, loss, f"{rl_cfg.steps} steps x {per_step} pairs = "
                       f"{len(pairs)} pairs (the B*G reward-model calls per step of GRPO/PPO), {cfg}"
                       + ("" if score_fn else "; no score_fn: no reward probe"), splits.test)
    mine = distributed.shard(per_step, "preference pairs")  # every pair in one process
    run.model.train()
    for step in range(rl_cfg.steps):
        record = {"step": step, "lr": run.set_lr(step)}
        with rl.at_step(loss, step, "dpo.lr too high, or dpo.beta too small (--set dpo.lr=...)"):
            if score_fn is not None and step % cfg.probe_every == 0:
                examples = rl.prompt_batch(splits.train, rl_cfg.prompts_per_step, seed, step)
                record.update(probe(run.model, run.enc, examples, score_fn, rl_cfg, rl.step_seed(seed, step)))
            step_pairs = pairs[step * per_step:(step + 1) * per_step][mine]  # this process's share
            record.update(dpo_update(run.model, run.ref_model, run.opt, run.enc, step_pairs, cfg, loss, backend))
        run.log_step(record, shown=("loss", "margin", "reward_mean"))
    return {**run.finish(out_path, loss, base_policy=str(policy_ckpt), seed=seed, pairs=len(pairs),
                         rl_config=asdict(rl_cfg), dpo_config=asdict(cfg)), "pairs": len(pairs)}
