"""Feature selection by expected activation (EA), and the random baseline it is compared with.

Wang, Zhang, Guo, Wang, "Non-negative Contrastive Learning", ICLR 2024 (arXiv:2403.12459),
Sec. 5: NCL features can be pruned like a dictionary. The expected activation of dimension
``d`` is the mean of the L2-normalised non-negative features::

    EA_d = (1/N) sum_n z_nd / ||z_n||_2

Keeping the dimensions with the largest EA (e.g. 512 of 2,048) keeps NCL's accuracy,
while the same number of random dimensions does not. For signed (CL) features EA uses
magnitudes ``|z_nd|``, which equals the definition above on non-negative features.

Examples:
    >>> import torch
    >>> z = torch.tensor([[0.0, 3.0, 4.0], [0.0, 0.0, 1.0]])
    >>> expected_activation(z)
    tensor([0.0000, 0.3000, 0.9000])
    >>> expected_activation_order(z)
    tensor([2, 1, 0])
    >>> select_top_dims(z, 2)
    tensor([2, 1])
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from ncl_ext._checks import as_features, check_int

__all__ = ["expected_activation", "expected_activation_order", "random_dims", "select_top_dims"]


def expected_activation(features: Any) -> torch.Tensor:
    """``EA_d = mean_n |z_nd| / ||z_n||_2``: a float32 ``(D,)`` tensor (all-zero rows count as 0)."""
    features = as_features(features)
    return F.normalize(features.abs().double(), dim=1).mean(0).float().cpu()


def expected_activation_order(features: Any) -> torch.Tensor:
    """Dimensions sorted by expected activation, most active first (LongTensor ``(D,)``; ties: lower index first)."""
    return torch.sort(expected_activation(features), descending=True, stable=True).indices


def _num_dims(num_dims: float, dim: int) -> int:
    if isinstance(num_dims, float) and not isinstance(num_dims, bool):
        if not 0 < num_dims <= 1:
            raise ValueError(f"num_dims as a fraction must be in (0, 1], got {num_dims!r}")
        return max(1, round(num_dims * dim))
    num_dims = check_int(num_dims, "num_dims")
    if num_dims > dim:
        raise ValueError(f"num_dims={num_dims} exceeds the {dim} feature dimensions")
    return num_dims


def select_top_dims(features: Any, num_dims: float) -> torch.Tensor:
    """The ``num_dims`` dimensions with the largest expected activation, most active first.

    Args:
        features: ``(N, D)`` features to rank the dimensions on (usually the training set).
        num_dims: how many to keep: an int, or a float fraction of ``D`` in ``(0, 1]``
            (``0.25`` keeps the top quarter).

    Returns:
        A LongTensor of dimension indices; select with ``features[:, dims]``.
    """
    order = expected_activation_order(features)
    return order[: _num_dims(num_dims, len(order))]


def random_dims(dim: int, num_dims: float, seed: int = 0) -> torch.Tensor:
    """``num_dims`` distinct dimensions out of ``dim``, uniformly at random (sorted): the EA baseline.

    Examples:
        >>> random_dims(8, 0.5, seed=0).shape
        torch.Size([4])
    """
    dim = check_int(dim, "dim")
    count = _num_dims(num_dims, dim)
    generator = torch.Generator().manual_seed(seed)
    return torch.randperm(dim, generator=generator)[:count].sort().values
