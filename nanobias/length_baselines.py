"""The two length-only baselines of Shinoda et al. (Sec. 5), fitted on a reward model's validation rewards.

    length penalty:  r'(x, y) = r(x, y) - alpha * len(y)       alpha: the pairwise-accuracy-best weight
    LWR:             r'(x, y) = r(x, y) - f(len(y))             f: LOWESS of reward on length

They remove what length alone predicts, wanted or not: CIRM's point is that a reward model should
lose its length cue without losing what longer answers really earn. reward_eval.py scores both beside
the intervention; annotate.py labels preference pairs with them.
"""

from dataclasses import dataclass

import numpy as np


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


@dataclass(frozen=True)
class LengthBaselines:
    """The two length-only baselines, fitted on the base rewards of validation pairs."""
    alpha: float  # the length penalty's weight (fit_length_penalty)
    val_length: np.ndarray  # [2V] characters of the validation completions: LOWESS's x
    val_reward: np.ndarray  # [2V] their base rewards: LOWESS's y

    def debiased(self, r: np.ndarray, lengths: np.ndarray) -> dict[str, np.ndarray]:
        """Base rewards r [N] of completions `lengths` [N] characters long -> {"length_penalty", "lwr"}: [N] each."""
        return {"length_penalty": r - self.alpha * lengths, "lwr": r - lowess(self.val_length, self.val_reward, lengths)}


def fit_length_baselines(val, r_val: np.ndarray) -> LengthBaselines:
    rv_c, rv_r = np.split(np.asarray(r_val, np.float64), 2)  # r_val [2V]: the V pairs' base rewards, chosen first
    len_vc = np.array([p.chosen.attributes["length"] for p in val])
    len_vr = np.array([p.rejected.attributes["length"] for p in val])
    return LengthBaselines(fit_length_penalty(rv_c, rv_r, len_vc, len_vr), np.concatenate([len_vc, len_vr]),
                           np.concatenate([rv_c, rv_r]))
