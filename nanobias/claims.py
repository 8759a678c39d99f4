"""The two papers' claims beside ours, each with a verdict computed from the numbers.

Every claim is a comparison "a > b" in the paper's direction (a claim that something falls is
written with its sides swapped). Ours is the difference d = a - b of two estimates, each a mean with
a standard error:

    se = std / sqrt(n)               a policy or training statistic over n RL seeds (sample std)
    se = 0                           the base policy: greedy decoding, evaluated once, no RL seed
    se = sqrt(p (1 - p) / m)         a reward-model accuracy or label share over m held-out pairs
                                     (one reward model: the pairs are the only sampling left)

    se_d = sqrt(se_a^2 + se_b^2)     (the two sides taken as independent: conservative, since both
                                      sides are measured on the same prompts or pairs)

    verdict = reproduced      if d >  2 se_d
              reversed        if d < -2 se_d
              not reproduced  otherwise (the difference is inside the noise)

A claim whose numbers the run does not hold (a group-size sweep not run, an older results.json)
gets "not run" and says which command would measure it. The papers' figures: BiasGRPO (arXiv
2606.04807) on Phi-2 and BBQ, CIRM (arXiv 2604.27495) on FsfairX-7B and RewardBench, as far as
secondary summaries give them; the papers' own tables are the authority.
"""

import math
from dataclasses import dataclass
from typing import Callable

MARGIN = 2.0  # standard errors a difference must clear


@dataclass(frozen=True)
class Estimate:
    mean: float
    se: float
    n: int  # seeds or pairs behind the mean

    def __str__(self) -> str:
        return f"{self.mean:.3f}" + (f" ± {self.se:.3f}" if self.se else "")


@dataclass(frozen=True)
class Claim:
    paper: str
    text: str
    figure: str  # the paper's numbers, as quoted
    sides: Callable[[dict], tuple[Estimate, Estimate] | None]  # results -> (a, b), the claim is a > b
    missing: str = ""  # what to run when the results do not hold the numbers


def over_seeds(results: dict, section: str, method: str, key: str) -> Estimate | None:
    """A policy metric (section "policy") or a stability statistic ("stability") as mean ± se over seeds."""
    values = results.get(section, {}).get(method)
    if values is None or key not in values:
        return None
    n = len(results.get(f"{section}_seeds", {}).get(method, [None]))
    std = results.get(f"{section}_std", {}).get(method, {}).get(key, 0.0) if n > 1 else 0.0
    return Estimate(values[key], std / math.sqrt(n), n)


def share(p: float | None, m: int) -> Estimate | None:
    """An accuracy or share p over m pairs, with its binomial standard error."""
    if p is None or m < 1:
        return None
    return Estimate(p, math.sqrt(p * (1 - p) / m), m)


def reward_acc(results: dict, method: str, subset: str = "") -> Estimate | None:
    """A reward-model variant's test accuracy: overall, or on the length-"biased"/"unbiased" subset."""
    rm = results.get("reward_model", {})
    if method not in rm:
        return None
    if not subset:
        return share(rm[method]["acc"], rm.get("test_pairs", 0))
    return share(rm[method][f"acc_{subset}"]["length"], rm[method][f"n_{subset}"]["length"])


def favours_longer(results: dict, annotator: str) -> Estimate | None:
    """The share of an annotator's labels that favour the longer completion (the annotation experiment)."""
    a = results.get("annotation", {}).get(annotator)
    return share(a["favours_more"]["length"], a["pairs"]) if a else None


def both(a, b):
    return (a, b) if a is not None and b is not None else None


def policy(results, a, b, key="acc_ambig"):
    return both(over_seeds(results, "policy", a, key), over_seeds(results, "policy", b, key))


def group_size(results, big: int, small: int):
    """GRPO's acc_ambig at group size `big` against `small`, from a group-size sweep (with_sweeps)."""
    runs = results.get("sweeps", {}).get("rl.group_size", {})
    a, b = (over_seeds(runs[str(g)]["methods"], "policy", "grpo", "acc_ambig") if str(g) in runs else None
            for g in (big, small))
    return both(a, b)


def with_sweeps(results: dict, sweeps: list[dict]) -> dict:
    """results.json's content with sweep.json contents (sweep.py) beside it, by key: results["sweeps"][key]
    = {value label: {"methods": {method: {"policy", "policy_std", "policy_seeds"}}}}, as over_seeds reads."""
    by_key = {}
    for sweep in sweeps:
        by_key.setdefault(sweep["key"], {}).update(
            {label: {"methods": {section: {m: run["methods"][m][section] for m in run["methods"]}
                                 for section in ("policy", "policy_std", "policy_seeds")}}
             for label, run in sweep["runs"].items()})
    return {**results, "sweeps": by_key}


SWEEP_G = "nanobias sweep rl.group_size=2,4,8,16 --base RUN --seeds 3 --out DIR; nanobias claims RUN --sweep DIR"
CLAIMS = [
    Claim("BiasGRPO", "GRPO raises ambiguous accuracy over the base policy", "acc_ambig .2750 → .3123",
          lambda r: policy(r, "grpo", "base")),
    Claim("BiasGRPO", "GRPO beats DPO (IPO) on ambiguous accuracy", ".3123 vs .2823",
          lambda r: policy(r, "grpo", "dpo")),
    Claim("BiasGRPO", "GRPO beats PPO on ambiguous accuracy", ".3123 vs .2996",
          lambda r: policy(r, "grpo", "ppo")),
    Claim("BiasGRPO", "PPO beats DPO (IPO) on ambiguous accuracy", ".2996 vs .2823",
          lambda r: policy(r, "ppo", "dpo")),
    Claim("BiasGRPO", "a larger group helps: G = 4 beats G = 2", ".3123 vs .2781",
          lambda r: group_size(r, 4, 2), SWEEP_G),
    Claim("BiasGRPO", "a larger group helps: G = 8 beats G = 4", ".3781 vs .3123",
          lambda r: group_size(r, 8, 4), SWEEP_G),
    Claim("BiasGRPO", "GRPO's training reward fluctuates less than PPO's", "reward std .0668 vs .1434",
          lambda r: both(over_seeds(r, "stability", "ppo", "reward_fluctuation"),
                         over_seeds(r, "stability", "grpo", "reward_fluctuation"))),
    Claim("CIRM", "the intervention raises accuracy on the length-unbiased pairs", "77.93 → 78.02",
          lambda r: both(reward_acc(r, "cirm", "unbiased"), reward_acc(r, "base", "unbiased"))),
    Claim("CIRM", "the intervention keeps more length-biased accuracy than the length penalty",
          "95.25 vs 93.45",
          lambda r: both(reward_acc(r, "cirm", "biased"), reward_acc(r, "length_penalty", "biased"))),
    Claim("CIRM", "the length penalty loses on the length-biased pairs", "95.14 → 93.45",
          lambda r: both(reward_acc(r, "base", "biased"), reward_acc(r, "length_penalty", "biased"))),
    Claim("CIRM", "the length penalty raises length-unbiased accuracy more than the intervention", "85.12 vs 78.02",
          lambda r: both(reward_acc(r, "length_penalty", "unbiased"), reward_acc(r, "cirm", "unbiased"))),
    Claim("CIRM", "LWR raises length-unbiased accuracy more than the intervention", "85.95 vs 78.02",
          lambda r: both(reward_acc(r, "lwr", "unbiased"), reward_acc(r, "cirm", "unbiased"))),
    Claim("CIRM", "the intervention raises overall accuracy", "86.68 → 86.80",
          lambda r: both(reward_acc(r, "cirm"), reward_acc(r, "base"))),
    Claim("CIRM", "labels by the intervened model favour the longer side less often", "54.85% → 51.71%",
          lambda r: both(favours_longer(r, "rm"), favours_longer(r, "cirm")), "nanobias reproduce (annotation)"),
    Claim("CIRM", "labels with the length penalty favour the longer side least", "25.65% vs 51.71%",
          lambda r: both(favours_longer(r, "cirm"), favours_longer(r, "length_penalty")),
          "nanobias reproduce (annotation)"),
    Claim("CIRM", "DPO on the intervened model's labels gives a better policy (ours: acc_ambig)",
          "AlpacaEval wins up", lambda r: policy(r, "dpo_cirm", "dpo_rm"), "nanobias reproduce (annotation)"),
]


def verdict(a: Estimate, b: Estimate) -> tuple[float, float, str]:
    """(d, se_d, verdict) for the claim a > b."""
    d, se = a.mean - b.mean, math.hypot(a.se, b.se)
    return d, se, "reproduced" if d > MARGIN * se else "reversed" if d < -MARGIN * se else "not reproduced"


def claims_table(results: dict) -> list[dict]:
    """One row per claim: paper, claim, the paper's figure, ours (both sides), d ± se_d and the verdict."""
    rows = []
    for c in CLAIMS:
        sides = c.sides(results)
        row = {"paper": c.paper, "claim": c.text, "figure": c.figure}
        if sides is None:
            rows.append({**row, "ours": "-", "difference": "-", "verdict": "not run"
                         + (f" ({c.missing})" if c.missing else "")})
            continue
        d, se, v = verdict(*sides)
        rows.append({**row, "ours": f"{sides[0]} vs {sides[1]}", "difference": f"{d:+.3f} ± {se:.3f}", "verdict": v})
    return rows


def format_claims(rows: list[dict]) -> str:
    head = "| paper | claim | paper's figure | ours (a vs b) | a − b | verdict |\n|---|---|---|---|---|---|\n"
    return head + "".join(f"| {r['paper']} | {r['claim']} | {r['figure']} | {r['ours']} | {r['difference']} | "
                          f"**{r['verdict']}** |\n" for r in rows)


def write_claims(run, sweep_dirs=()) -> str:
    """`nanobias claims RUN [--sweep DIR ...]`: the claims table of a finished run, with its sweeps, printed
    and written to RUN/claims.md."""
    from pathlib import Path

    from nanobias.checkpoint import read_json, write_atomic

    results = read_json(Path(run) / "results.json", "the results.json of a finished `nanobias reproduce` run")
    sweeps = [read_json(Path(d) / "sweep.json", "the sweep.json of a finished `nanobias sweep`") for d in sweep_dirs]
    table = format_claims(claims_table(with_sweeps(results, sweeps)))
    write_atomic(Path(run) / "claims.md", ("# The papers' claims at this scale\n\n" + table).encode())
    print(table + f"wrote {Path(run) / 'claims.md'}")
    return table
