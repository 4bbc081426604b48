"""The feature metrics of Non-negative Contrastive Learning, each with its formula.

Wang, Zhang, Guo, Wang, "Non-negative Contrastive Learning", ICLR 2024 (arXiv:2403.12459)
measure what non-negativity does to the features ``Z`` (``N`` samples x ``D`` dims):

- **sparsity** — share of entries with ``|z| <= eps`` in each sample, averaged over samples
  (NCL > 90%, CL ~ 0%);
- **activation frequency** — per dimension, the share of samples with ``z > eps``; a
  dimension is *active* if it fires on at least one sample and *dead* otherwise;
- **semantic consistency** — for each active dimension, the share of the samples activating
  it that belong to its most frequent class, averaged over active dimensions (CL ~ 1/C);
- **feature correlation** — ``|C - I|`` averaged (mean and median) over the off-diagonal
  entries, where ``C = Zn^T Zn`` and ``Zn`` is ``Z`` restricted to the active dimensions
  with every column L2-normalised (the cosine similarity between dimensions);
- **effective rank** (Roy & Vetterli, 2007) — ``exp(H(p))`` with ``p_i = s_i / sum_j s_j``
  the normalised singular values of ``Z``: 1 for rank-one features, ``D`` for a flat spectrum.

All fractions are in ``[0, 1]``. Inputs are ``(N, D)`` tensors or numpy arrays.

Examples:
    >>> import torch
    >>> z = torch.tensor([[0.0, 2.0, 0.0], [1.0, 0.0, 0.0], [0.0, 3.0, 0.0]])
    >>> round(sparsity(z), 4)
    0.6667
    >>> semantic_consistency(z, labels=[0, 1, 0])
    1.0
    >>> dead_dims(z)
    tensor([2])
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, NamedTuple

import numpy as np
import torch

from ncl_ext._checks import DEFAULT_EPS, as_features, as_labels, check_eps
from ncl_ext.analysis._sparse import density

__all__ = [
    "CorrelationSummary",
    "activation_frequency",
    "active_dims",
    "correlation_matrix",
    "dead_dims",
    "effective_rank",
    "feature_correlation",
    "is_non_negative",
    "semantic_consistency",
    "sparsity",
]

_ROWS_PER_BLOCK = 8192
# Below this share of non-zeros the Gram matrix is cheaper from the pairs of non-zeros of each
# row (compiled loop) than as a dense float64 matrix product.
_SPARSE_GRAM_DENSITY = 0.1


class CorrelationSummary(NamedTuple):
    """Mean and median of ``|C - I|`` over the off-diagonal entries (see :func:`feature_correlation`)."""

    mean: float
    median: float


def _row_blocks(features: torch.Tensor) -> Iterator[torch.Tensor]:
    for start in range(0, features.shape[0], _ROWS_PER_BLOCK):
        yield features[start : start + _ROWS_PER_BLOCK]


def sparsity(features: Any, eps: float = DEFAULT_EPS) -> float:
    """Share of entries with ``|z| <= eps`` in each sample, averaged over the samples.

    ``sparsity = (1/N) sum_n (1/D) #{d : |z_nd| <= eps}``. NCL features are > 90% sparse,
    CL features ~ 0%.

    Examples:
        >>> sparsity(torch.tensor([[0.0, 1.0], [0.0, 0.0]]))
        0.75
    """
    features, eps = as_features(features), check_eps(eps)
    zeros = sum(int((block.abs() <= eps).sum()) for block in _row_blocks(features))
    return zeros / features.numel()


def _activation_counts(features: torch.Tensor, eps: float) -> torch.Tensor:
    return sum((block > eps).sum(0) for block in _row_blocks(features))


def activation_frequency(features: Any, eps: float = DEFAULT_EPS) -> torch.Tensor:
    """Per dimension, the share of samples that activate it (``z > eps``): a ``(D,)`` float tensor.

    Examples:
        >>> activation_frequency(torch.tensor([[0.0, 1.0], [2.0, 3.0]]))
        tensor([0.5000, 1.0000])
    """
    features, eps = as_features(features), check_eps(eps)
    return _activation_counts(features, eps).double().div(features.shape[0]).float().cpu()


def active_dims(features: Any, eps: float = DEFAULT_EPS) -> torch.Tensor:
    """Indices of the dimensions with ``z > eps`` on at least one sample (a LongTensor)."""
    return torch.nonzero(activation_frequency(features, eps) > 0).flatten()


def dead_dims(features: Any, eps: float = DEFAULT_EPS) -> torch.Tensor:
    """Indices of the dimensions that never fire (``z <= eps`` on every sample)."""
    return torch.nonzero(activation_frequency(features, eps) == 0).flatten()


def is_non_negative(features: Any) -> bool:
    """Whether every entry is ``>= 0`` (what a non-negative head such as ReLU guarantees)."""
    features = as_features(features)
    return all(bool((block >= 0).all()) for block in _row_blocks(features))


def semantic_consistency(features: Any, labels: Any, eps: float = DEFAULT_EPS) -> float:
    """Mean over active dimensions of the share of activating samples in the dimension's top class.

    For a dimension ``d`` with activating set ``A_d = {n : z_nd > eps}`` (non-empty)::

        consistency_d = max_c #{n in A_d : y_n = c} / |A_d|

    and the result is the mean of ``consistency_d`` over the active dimensions. It is 1 when
    every dimension fires for a single class and about ``1/C`` for dimensions that fire for
    all classes alike (dense CL features). Signed features are read as ``relu(z)``.

    Raises:
        ValueError: if no dimension is active (consistency is then undefined).

    Examples:
        >>> z = torch.tensor([[1.0, 0.0], [2.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
        >>> semantic_consistency(z, labels=[0, 0, 1, 1])   # dim 0: 2/3, dim 1: 2/2
        0.8333333333333333
    """
    features, eps = as_features(features), check_eps(eps)
    codes = as_labels(labels, features.shape[0]).to(features.device)
    num_classes = int(codes.max()) + 1
    counts = torch.zeros(num_classes, features.shape[1], dtype=torch.float64, device=features.device)
    for start in range(0, features.shape[0], _ROWS_PER_BLOCK):
        block = features[start : start + _ROWS_PER_BLOCK]
        counts.index_add_(0, codes[start : start + _ROWS_PER_BLOCK], (block > eps).double())
    totals = counts.sum(0)
    active = totals > 0
    if not bool(active.any()):
        raise ValueError(f"features have no active dimension (no entry > eps={eps}); consistency is undefined")
    return float((counts.max(0).values[active] / totals[active]).mean())


def _nonzero_columns(features: torch.Tensor) -> torch.Tensor:
    nonzero = sum((block != 0).any(0) for block in _row_blocks(features))
    return torch.nonzero(nonzero).flatten()


def _gram(features: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
    """Float64 Gram matrix ``Z[:, columns]^T Z[:, columns]``, by row pairs of non-zeros or densely."""
    if len(columns) == 0:
        return torch.zeros(0, 0, dtype=torch.float64)
    selected = features[:, columns.to(features.device)].contiguous()
    if selected.device.type == "cpu" and density(selected) <= _SPARSE_GRAM_DENSITY:
        from ncl_ext.analysis._gram_kernel import gram

        return torch.from_numpy(gram(selected.numpy()))
    gram = torch.zeros(len(columns), len(columns), dtype=torch.float64, device=features.device)
    for block in _row_blocks(selected):
        block = block.double()
        gram.addmm_(block.T, block)
    return gram.cpu()


def _correlation_from_gram(gram: torch.Tensor) -> torch.Tensor:
    norms = gram.diagonal().clamp_min(0).sqrt()
    norms = torch.where(norms > 0, norms, torch.ones_like(norms))
    return gram / norms[:, None] / norms[None, :]


def correlation_matrix(features: Any, dims: Any = None) -> torch.Tensor:
    """Cosine similarity between the columns ``dims`` of ``features`` (``C = Zn^T Zn``), float32.

    All-zero columns get zero rows and columns. ``dims=None`` uses every dimension.
    """
    features = as_features(features)
    dims = torch.arange(features.shape[1]) if dims is None else torch.as_tensor(dims, dtype=torch.long).flatten()
    if len(dims) and (int(dims.min()) < 0 or int(dims.max()) >= features.shape[1]):
        raise ValueError(f"dims must index the {features.shape[1]} feature dimensions, got {dims.tolist()}")
    return _correlation_from_gram(_gram(features, dims)).float()


def _summarise_correlation(correlation: torch.Tensor) -> CorrelationSummary:
    size = correlation.shape[0]
    if size < 2:
        raise ValueError(f"feature correlation needs at least 2 active dimensions, got {size}")
    rows, cols = torch.triu_indices(size, size, offset=1)
    off_diagonal = correlation[rows, cols].abs().numpy()
    return CorrelationSummary(mean=float(off_diagonal.mean()), median=float(np.median(off_diagonal)))


def feature_correlation(features: Any, eps: float = DEFAULT_EPS) -> CorrelationSummary:
    """Mean and median of ``|C - I|`` off the diagonal, over the active dimensions.

    ``C = Zn^T Zn`` where ``Zn`` keeps the active dimensions (``z > eps`` on some sample) of
    ``Z`` and L2-normalises each column, so ``C_ij`` is the cosine similarity of dimensions
    ``i`` and ``j`` across samples and ``C_ii = 1``. Dimensions that fire on disjoint sets
    of samples give 0; identical (duplicated) dimensions give 1. This is the paper's
    "orthogonality" measure; the mean and median run over the ``D_a (D_a - 1)`` off-diagonal
    entries (the diagonal of ``C - I`` is zero by construction).

    Raises:
        ValueError: with fewer than 2 active dimensions.

    Examples:
        >>> one_hot = torch.eye(4)[[0, 1, 2, 3, 0]]
        >>> feature_correlation(one_hot)
        CorrelationSummary(mean=0.0, median=0.0)
    """
    features, eps = as_features(features), check_eps(eps)
    active = torch.nonzero(_activation_counts(features, eps) > 0).flatten().cpu()
    return _summarise_correlation(_correlation_from_gram(_gram(features, active)))


def _effective_rank_from_gram(gram: torch.Tensor) -> float:
    if gram.numel() == 0:
        return 0.0
    singular_values = torch.linalg.eigvalsh(gram).clamp_min(0).sqrt()
    total = singular_values.sum()
    if float(total) == 0.0:
        return 0.0
    p = singular_values / total
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


def effective_rank(features: Any) -> float:
    """Effective rank ``exp(-sum_i p_i log p_i)``, ``p_i = s_i / sum_j s_j``, ``s`` the singular values of ``Z``.

    Roy & Vetterli, "The effective rank: a measure of effective dimensionality", EUSIPCO 2007.
    Ranges from 1 (rank one) to ``min(N, D)`` (all singular values equal); 0 for an
    all-zero matrix. The singular values come from the eigenvalues of the float64 Gram
    matrix of the non-zero columns (built from the pairs of non-zeros of each row when the
    features are sparse), so the cost is ``O(N D^2 density^2 + D^3)``, not a full SVD.

    Examples:
        >>> round(effective_rank(torch.eye(3)), 6)
        3.0
    """
    features = as_features(features)
    return _effective_rank_from_gram(_gram(features, _nonzero_columns(features).cpu()))


def gram_statistics(features: torch.Tensor, eps: float) -> tuple[CorrelationSummary | None, float]:
    """Correlation summary (``None`` below 2 active dims) and effective rank from one Gram matrix.

    Used by :func:`ncl_ext.analysis.feature_report`, which must not build the Gram matrix twice.
    """
    nonzero = _nonzero_columns(features).cpu()
    gram = _gram(features, nonzero)
    active_mask = (_activation_counts(features, eps) > 0).cpu()[nonzero]
    active = torch.nonzero(active_mask).flatten()
    correlation = None
    if len(active) >= 2:
        correlation = _summarise_correlation(_correlation_from_gram(gram[active][:, active]))
    return correlation, _effective_rank_from_gram(gram)
