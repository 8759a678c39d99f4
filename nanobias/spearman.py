"""Spearman's rank correlation, column by column, with tied values sharing their average rank.

    rank(x)_i = 1 + #{j : x_j < x_i} + (#{j : x_j = x_i} - 1) / 2
    rho(x, y) = Pearson(rank(x), rank(y))     (0 where either side is constant)

Without ties this is the textbook 1 - 6 sum d_i^2 / (n (n^2 - 1)), d = rank(x) - rank(y).
intervention.py correlates every MLP neuron's activation with every style attribute this way.
"""

import torch


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
