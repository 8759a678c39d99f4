import numpy as np
import pytest
import torch

from nanobias.spearman import average_ranks, spearman


def brute_force_ranks(v):
    """rank_i = 1 + #(v_j < v_i) + (#(v_j == v_i) - 1) / 2: the average rank, by counting."""
    v = np.asarray(v, dtype=float)
    return np.array([1 + (v < x).sum() + ((v == x).sum() - 1) / 2 for x in v])


def test_average_ranks_by_hand():
    x = torch.tensor([[3.0, 1.0], [1.0, 1.0], [2.0, 1.0], [2.0, 0.0]])
    assert average_ranks(x).tolist() == [[4.0, 3.0], [1.0, 3.0], [2.5, 3.0], [2.5, 1.0]]


def test_spearman_tie_free_matches_the_rank_difference_formula():
    g = torch.Generator().manual_seed(0)
    n = 50
    x = torch.randn(n, 7, generator=g)
    y = torch.randn(n, generator=g)
    d = torch.tensor(np.array([brute_force_ranks(x[:, j]) for j in range(7)]).T) - torch.tensor(brute_force_ranks(y))[:, None]
    expected = 1 - 6 * (d ** 2).sum(0) / (n * (n ** 2 - 1))
    torch.testing.assert_close(spearman(x, y), expected, atol=1e-10, rtol=0)
    assert spearman(y[:, None] * 3 + 1, y).item() == pytest.approx(1.0)
    assert spearman(-(y[:, None] ** 3), y).item() == pytest.approx(-1.0)  # monotone, not linear


def test_spearman_with_ties_is_pearson_of_average_ranks():
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 4, (40, 5), generator=g).double()  # heavy ties, like paragraph counts
    y = torch.randint(0, 3, (40,), generator=g).double()
    ry = brute_force_ranks(y)
    expected = [np.corrcoef(brute_force_ranks(x[:, j]), ry)[0, 1] for j in range(5)]
    np.testing.assert_allclose(spearman(x, y).numpy(), expected, atol=1e-10)
    assert spearman(torch.ones(10, 1), torch.arange(10.0)).item() == 0.0  # constant column
