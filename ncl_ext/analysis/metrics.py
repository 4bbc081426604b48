"""The feature statistics of Non-negative Contrastive Learning, defined as the official code defines them.

Wang, Zhang, Guo, Wang, "Non-negative Contrastive Learning", ICLR 2024 (arXiv:2403.12459)
measure what non-negativity does to the features ``Z`` (``N`` samples x ``D`` dims). Their
code (github.com/PKU-ML/non_neg, ``solo/methods/simclr.py``: ``sparsity``,
``semantic_consistency``, ``orthogonality``, ``erank``, ``act_dim``) computes every statistic
on the features with **L2-normalised rows**, ``z^ = z / max(||z||, 1e-12)`` (as
``torch.nn.functional.normalize``), so no number depends on the feature scale. ``eps =
1e-5``. Signed features are read by magnitude, ``|z^|``, never as ``relu(z)``:

- **sparsity** — ``1 - mean(|z^| > eps)`` over all ``N D`` entries (NCL > 0.9, CL ~ 0);
- **activation frequency** — per dimension, the share of samples with ``|z^| > eps``; a
  dimension is *active* if that share is above 0 and *dead* if ``|z^| <= eps`` on every
  sample (a signed dimension that is always negative is active);
- **semantic consistency** — per dimension, among the samples with ``|z^| > eps``, the share
  of the most frequent label, averaged over the dimensions that have such samples. About
  ``1/C`` (``C`` classes) for dense signed CL features, whose every dimension is non-zero on
  every sample; near 1 when each dimension fires for one class (NCL);
- **correlation** (the paper's "orthogonality") — keep the columns of ``z^`` with a non-zero
  entry, L2-normalise each column (no centring), ``C = Zc^T Zc``; the mean of ``|C - I|``
  over all ``d^2`` entries (diagonal included, where it is 0);
- **effective rank** — with ``p_i = s_i / sum_j s_j`` the normalised singular values of
  ``z^``, the official entropy ``H = -sum_i p_i log(p_i + 1e-6)`` and Roy & Vetterli's
  (EUSIPCO 2007) effective rank ``exp(H)``.

Every function takes ``normalize_rows=False`` to use the features as given instead. All
fractions are in ``[0, 1]``. Inputs are ``(N, D)`` tensors (any device) or numpy arrays.

Examples:
    >>> import torch
    >>> z = torch.tensor([[0.0, 2.0, 0.0], [1.0, 0.0, 0.0], [0.0, 3.0, 0.0]])
    >>> round(sparsity(z), 4)
    0.6667
    >>> semantic_consistency(z, labels=[0, 1, 0])
    1.0
    >>> dead_dims(z)
    tensor([2])
    >>> signed = torch.tensor([[-1.0, 0.5], [-2.0, -0.5]])          # dim 0 is always negative
    >>> active_dims(signed).tolist(), sparsity(signed)
    ([0, 1], 0.0)
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from ncl_ext._checks import DEFAULT_EPS, as_features, as_labels, check_eps
from ncl_ext.analysis._sparse import density

__all__ = [
    "CorrelationSummary",
    "activation_frequency",
    "active_dims",
    "batch_statistics",
    "correlation_matrix",
    "dead_dims",
    "effective_rank",
    "effective_rank_entropy",
    "feature_correlation",
    "is_non_negative",
    "semantic_consistency",
    "sparsity",
]

#: The epsilon inside the logarithm of the official effective-rank entropy.
ENTROPY_EPS = 1e-6
_ROWS_PER_BLOCK = 8192
# Below this share of non-zeros the Gram matrix is cheaper as a sparse product (scipy CSR)
# than as a dense float64 matrix product.
_SPARSE_GRAM_DENSITY = 0.1
# Eigenvalues of a Gram matrix below this share of the largest are rounding noise (float64
# eigvalsh is accurate to ~1e-16 of the largest): counted as exact zeros.
_EIGENVALUE_FLOOR = 1e-12


class CorrelationSummary(NamedTuple):
    """Mean and median of ``|C - I|`` over all ``d^2`` entries (see :func:`feature_correlation`)."""

    mean: float
    median: float


def _row_blocks(features: torch.Tensor, normalize_rows: bool) -> Iterator[torch.Tensor]:
    for start in range(0, features.shape[0], _ROWS_PER_BLOCK):
        block = features[start : start + _ROWS_PER_BLOCK]
        yield F.normalize(block, dim=1) if normalize_rows else block


def activation_counts(
    features: torch.Tensor, eps: float, normalize_rows: bool, codes: torch.Tensor | None = None
) -> torch.Tensor:
    """Per dimension, the number of samples with ``|z^| > eps``: a float64 ``(D,)`` tensor on the features' device.

    With class ``codes`` (``0 .. C-1``), the counts per (class, dimension): ``(C, D)``. Shared by
    :func:`sparsity`, :func:`activation_frequency`, :func:`semantic_consistency` and
    :func:`~ncl_ext.analysis.feature_report` (which needs them all from one pass).
    ``|z / max(||z||, 1e-12)| > eps`` is tested as ``|z| > eps * max(||z||, 1e-12)``.
    """
    classes = 1 if codes is None else int(codes.max()) + 1
    counts = torch.zeros(classes, features.shape[1], dtype=torch.float64, device=features.device)
    for start in range(0, features.shape[0], _ROWS_PER_BLOCK):
        block = features[start : start + _ROWS_PER_BLOCK]
        threshold = eps * block.norm(dim=1, keepdim=True).clamp_min(1e-12) if normalize_rows else eps
        fires = block.abs() > threshold
        if codes is None:
            counts[0] += fires.sum(0)
        else:  # float32 sums of at most _ROWS_PER_BLOCK ones are exact
            block_codes = codes[start : start + _ROWS_PER_BLOCK].to(features.device)
            block_counts = torch.zeros(classes, features.shape[1], device=features.device)
            counts += block_counts.index_add_(0, block_codes, fires.float())
    return counts if codes is not None else counts[0]


def sparsity(features: Any, eps: float = DEFAULT_EPS, normalize_rows: bool = True) -> float:
    """``1 - mean(|z^| > eps)``: the share of (near-)zero entries, ``z^`` the L2-normalised rows.

    Matches ``sparsity`` of ``solo/methods/simclr.py`` (PKU-ML/non_neg), which is applied to
    normalised features. Signed features count by magnitude. NCL features are > 90% sparse,
    CL features ~ 0%. It equals ``1 - mean(activation_frequency(features))``.

    Examples:
        >>> sparsity(torch.tensor([[0.0, 1.0], [0.0, 0.0]]))
        0.75
        >>> z = torch.tensor([[2e-5, 10.0]])             # 2e-5 is 2e-6 of its row's norm
        >>> sparsity(z), sparsity(z, normalize_rows=False)
        (0.5, 0.0)
    """
    features, eps = as_features(features), check_eps(eps)
    return 1.0 - float(activation_counts(features, eps, normalize_rows).sum()) / features.numel()


def activation_frequency(features: Any, eps: float = DEFAULT_EPS, normalize_rows: bool = True) -> torch.Tensor:
    """Per dimension, the share of samples with ``|z^| > eps`` (non-zero entries): a ``(D,)`` float tensor.

    ``z^``: the L2-normalised rows, as for :func:`sparsity` (whose value is one minus the mean
    of these shares). Signed features count by magnitude.

    Examples:
        >>> activation_frequency(torch.tensor([[0.0, 1.0], [2.0, -3.0]]))
        tensor([0.5000, 1.0000])
    """
    features, eps = as_features(features), check_eps(eps)
    return activation_counts(features, eps, normalize_rows).div(features.shape[0]).float().cpu()


def active_dims(features: Any, eps: float = DEFAULT_EPS, normalize_rows: bool = True) -> torch.Tensor:
    """Indices of the dimensions with ``|z^| > eps`` on at least one sample (a LongTensor).

    By magnitude: a signed dimension that is always negative is active. ``act_dim`` of
    ``solo/methods/simclr.py`` (PKU-ML/non_neg) counts ``|z| > 0`` on a batch; ``eps=0`` gives that.
    """
    return torch.nonzero(activation_frequency(features, eps, normalize_rows) > 0).flatten()


def dead_dims(features: Any, eps: float = DEFAULT_EPS, normalize_rows: bool = True) -> torch.Tensor:
    """Indices of the dimensions that are never non-zero: ``|z^| <= eps`` on every sample (a LongTensor).

    The complement of :func:`active_dims`; signed values count by magnitude, so only dimensions
    that are (near) zero everywhere are dead, whatever their sign elsewhere.
    """
    return torch.nonzero(activation_frequency(features, eps, normalize_rows) == 0).flatten()


def is_non_negative(features: Any) -> bool:
    """Whether every entry is ``>= 0`` (what a non-negative head such as ReLU guarantees)."""
    features = as_features(features)
    return all(bool((block >= 0).all()) for block in _row_blocks(features, normalize_rows=False))


def consistency_from_counts(counts: torch.Tensor) -> float | None:
    """Semantic consistency from per-(class, dimension) counts; ``None`` if no dimension fires."""
    totals = counts.sum(0)
    fired = totals > 0
    if not bool(fired.any()):
        return None
    return float((counts.max(0).values[fired] / totals[fired]).mean())


def semantic_consistency(features: Any, labels: Any, eps: float = DEFAULT_EPS, normalize_rows: bool = True) -> float:
    """Mean over dimensions of the share of the most frequent label among the samples where the dimension is non-zero.

    For dimension ``d`` with ``A_d = {n : |z^_nd| > eps}`` (``z^``: L2-normalised rows)::

        consistency_d = max_c #{n in A_d : y_n = c} / |A_d|

    averaged over the dimensions with ``A_d`` non-empty. Matches ``semantic_consistency`` of
    ``solo/methods/simclr.py`` (PKU-ML/non_neg). Signed features count by magnitude, so a
    dense CL dimension has ``A_d`` = all samples and scores the largest class share, about
    ``1/C`` for ``C`` balanced classes; a dimension that fires for one class scores 1.

    Raises:
        ValueError: if no entry has ``|z^| > eps`` (consistency is then undefined).

    Examples:
        >>> z = torch.tensor([[1.0, 0.0], [2.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
        >>> semantic_consistency(z, labels=[0, 0, 1, 1])   # dim 0: 2/3, dim 1: 2/2
        0.8333333333333333
    """
    features, eps = as_features(features), check_eps(eps)
    codes = as_labels(labels, features.shape[0])
    consistency = consistency_from_counts(activation_counts(features, eps, normalize_rows, codes))
    if consistency is None:
        raise ValueError(f"features have no entry with |z| > eps={eps}; consistency is undefined")
    return consistency


def _nonzero_columns(features: torch.Tensor) -> torch.Tensor:
    nonzero = sum((block != 0).any(0) for block in _row_blocks(features, normalize_rows=False))
    return torch.nonzero(nonzero).flatten().cpu()


def _gram(features: torch.Tensor, normalize_rows: bool, by_rows: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Float64 ``(Z^T Z, columns)`` over the non-zero columns of ``Z`` (``Z Z^T`` with ``by_rows``), on the CPU."""
    if features.device.type == "cpu" and density(features) <= _SPARSE_GRAM_DENSITY:
        from ncl_ext.analysis._gram_kernel import sparse_gram

        gram, columns = sparse_gram(features, normalize_rows, by_rows)
        return torch.from_numpy(gram), torch.from_numpy(columns)
    columns = _nonzero_columns(features)
    if by_rows:
        selected = torch.cat(list(_row_blocks(features.double(), normalize_rows)))
        return (selected @ selected.T).cpu(), columns
    gram = torch.zeros(len(columns), len(columns), dtype=torch.float64, device=features.device)
    # Dropping all-zero columns leaves the row norms as they are.
    for block in _row_blocks(features[:, columns.to(features.device)].double(), normalize_rows):
        gram.addmm_(block.T, block)
    return gram.cpu(), columns


def _absolute_cosine_error(gram: torch.Tensor) -> torch.Tensor:
    """``|C - I|`` with ``C`` the cosine matrix of a Gram matrix of non-zero columns."""
    norms = gram.diagonal().sqrt()
    cosine = (gram / norms[:, None] / norms[None, :]).fill_diagonal_(1.0)  # 1 up to rounding
    return (cosine - torch.eye(len(gram), dtype=gram.dtype)).abs_()


def correlation_matrix(features: Any, dims: Any = None, normalize_rows: bool = True) -> torch.Tensor:
    """Cosine similarity between the columns ``dims`` of the row-normalised features (``C = Zc^T Zc``), float32.

    All-zero columns get zero rows and columns. ``dims=None`` uses every dimension.
    """
    features = as_features(features)
    dims = torch.arange(features.shape[1]) if dims is None else torch.as_tensor(dims, dtype=torch.long).flatten()
    if len(dims) and (int(dims.min()) < 0 or int(dims.max()) >= features.shape[1]):
        raise ValueError(f"dims must index the {features.shape[1]} feature dimensions, got {dims.tolist()}")
    selected = features[:, dims.to(features.device)]
    if normalize_rows:  # normalise by the norm of the whole row before selecting
        norms = torch.cat([block.norm(dim=1) for block in _row_blocks(features, False)]).clamp_min(1e-12)
        selected = selected / norms[:, None]
    gram, columns = _gram(selected, normalize_rows=False)
    matrix = torch.zeros(len(dims), len(dims), dtype=torch.float64)
    norms = gram.diagonal().sqrt()
    matrix[columns[:, None], columns[None, :]] = gram / norms[:, None] / norms[None, :]
    return matrix.float()


def _summarise_correlation(gram: torch.Tensor) -> CorrelationSummary | None:
    if len(gram) == 0:
        return None
    error = _absolute_cosine_error(gram).flatten().numpy()
    return CorrelationSummary(mean=float(error.mean()), median=float(np.median(error)))


def feature_correlation(features: Any, normalize_rows: bool = True) -> CorrelationSummary:
    """Mean and median of ``|C - I|`` over all ``d^2`` entries: the paper's "orthogonality".

    Keep the ``d`` columns of ``z^`` (L2-normalised rows) with a non-zero entry, L2-normalise
    each column (no centring) and take ``C = Zc^T Zc``, the cosine between dimensions across
    samples (``C_ii = 1``). Matches ``orthogonality`` of ``solo/methods/simclr.py``
    (PKU-ML/non_neg): the mean runs over all ``d^2`` entries, the zero diagonal included, so
    it is the off-diagonal mean times ``(d - 1) / d``. Dimensions that are non-zero on disjoint
    samples give 0, duplicated dimensions 1. Signed values enter as they are (a cosine).

    Raises:
        ValueError: if every entry is zero.

    Examples:
        >>> one_hot = torch.eye(4)[[0, 1, 2, 3, 0]]
        >>> feature_correlation(one_hot)
        CorrelationSummary(mean=0.0, median=0.0)
        >>> feature_correlation(torch.ones(5, 2)).mean                  # off-diagonal 1, diagonal 0
        0.5
    """
    features = as_features(features)
    summary = _summarise_correlation(_gram(features, normalize_rows)[0])
    if summary is None:
        raise ValueError("feature correlation needs a non-zero entry; every entry is zero")
    return summary


def _entropy_from_gram(gram: torch.Tensor) -> float | None:
    """``H = -sum p log(p + 1e-6)`` of the normalised singular values; ``None`` without one."""
    if gram.numel() == 0:
        return None
    eigenvalues = torch.linalg.eigvalsh(gram)
    eigenvalues = torch.where(eigenvalues > _EIGENVALUE_FLOOR * eigenvalues.max(), eigenvalues, 0.0)
    singular_values = eigenvalues.sqrt()
    total = singular_values.sum()
    if float(total) == 0.0:
        return None
    p = singular_values / total
    return float(-(p * torch.log(p + ENTROPY_EPS)).sum())


def _entropy(features: torch.Tensor, normalize_rows: bool) -> float | None:
    by_rows = features.shape[0] < features.shape[1]  # the smaller Gram matrix has the same non-zero spectrum
    return _entropy_from_gram(_gram(features, normalize_rows, by_rows)[0])


def effective_rank_entropy(features: Any, normalize_rows: bool = True) -> float:
    """``H = -sum_i p_i log(p_i + 1e-6)``, ``p_i = s_i / sum_j s_j``, ``s`` the singular values of ``z^``.

    The official form: ``erank`` of ``solo/methods/simclr.py`` (PKU-ML/non_neg), on the
    L2-normalised rows ``z^``, with its ``1e-6`` inside the logarithm. From about 0 (rank one:
    ``-log(1 + 1e-6)``) to about ``log min(N, D)``; 0.0 for an all-zero matrix. Singular values come from the
    eigenvalues of the float64 Gram matrix of the smaller side (sparse features: a scipy
    sparse product), not from a full SVD. Signs need no treatment: singular values ignore them.
    """
    features = as_features(features)
    entropy = _entropy(features, normalize_rows)
    return 0.0 if entropy is None else entropy


def effective_rank(features: Any, normalize_rows: bool = True) -> float:
    """Roy & Vetterli's effective rank ``exp(H)``, ``H`` from :func:`effective_rank_entropy`.

    Roy & Vetterli, "The effective rank: a measure of effective dimensionality", EUSIPCO
    2007, with the official ``1e-6`` inside the log (so a flat spectrum of ``r`` values gives
    ``r (1 - r * 1e-6)`` to first order, not exactly ``r``). From 1 (rank one) to about
    ``min(N, D)``; 0.0 for an all-zero matrix.

    Examples:
        >>> round(effective_rank(torch.eye(3)), 4)
        3.0
    """
    features = as_features(features)
    entropy = _entropy(features, normalize_rows)
    return 0.0 if entropy is None else math.exp(entropy)


def batch_statistics(features: torch.Tensor, eps: float = DEFAULT_EPS) -> dict[str, float]:
    """Sparsity, active dimensions and effective rank of one batch, cheaply, for training logs.

    The same definitions as :func:`sparsity`, :func:`active_dims` and
    :func:`effective_rank` (L2-normalised rows, ``|z^| > eps``, official entropy), in torch
    on the batch's device: one float64 Gram matrix of the smaller side and its eigenvalues
    (512 x 2,048 on the CPU: about 0.1 s), and one transfer to the host for all numbers.
    Features of any shape ``(B, ...)`` are flattened to ``(B, -1)``.

    Returns:
        ``{"sparsity", "active_dims", "effective_rank", "effective_rank_entropy"}``, floats.

    Raises:
        ValueError: if the batch is not a floating tensor with a sample and a dimension, or
            holds NaN or Inf (checked with the same transfer, after the arithmetic).

    Examples:
        >>> stats = batch_statistics(torch.relu(torch.randn(64, 32)))
        >>> sorted(stats), 0.3 < stats["sparsity"] < 0.7
        (['active_dims', 'effective_rank', 'effective_rank_entropy', 'sparsity'], True)
    """
    if not isinstance(features, torch.Tensor) or not features.is_floating_point():
        raise ValueError(f"features must be a floating-point torch.Tensor, got {type(features).__name__}")
    eps = check_eps(eps)
    if features.dim() < 2 or features.shape[0] == 0 or features[0].numel() == 0:
        raise ValueError(
            f"features must be (batch, dim, ...) with a sample and a dimension, got {tuple(features.shape)}"
        )
    z = features.detach().flatten(1).double()
    finite = torch.isfinite(z).all()
    z = F.normalize(torch.nan_to_num(z, nan=0.0, posinf=0.0, neginf=0.0), dim=1)
    fires = z.abs() > eps
    gram = z @ z.T if z.shape[0] <= z.shape[1] else z.T @ z
    eigenvalues = torch.linalg.eigvalsh(gram)
    eigenvalues = torch.where(eigenvalues > _EIGENVALUE_FLOOR * eigenvalues.max(), eigenvalues, 0.0)
    singular_values = eigenvalues.sqrt()
    p = singular_values / singular_values.sum().clamp_min(torch.finfo(torch.float64).tiny)
    entropy = -(p * torch.log(p + ENTROPY_EPS)).sum()
    has_rank = singular_values.sum() > 0
    values = torch.stack(
        [
            1 - fires.double().mean(),
            fires.any(0).sum().double(),
            torch.where(has_rank, entropy.exp(), 0.0),
            entropy,
            finite.double(),
        ]
    ).tolist()
    if not values[4]:
        raise ValueError("features contain NaN or Inf values")
    return dict(zip(("sparsity", "active_dims", "effective_rank", "effective_rank_entropy"), values[:4], strict=True))


class GramStatistics(NamedTuple):
    """What :func:`ncl_ext.analysis.feature_report` needs from the one Gram matrix it builds."""

    correlation: CorrelationSummary | None
    effective_rank_entropy: float | None


def gram_statistics(features: torch.Tensor) -> GramStatistics:
    """Correlation summary and effective-rank entropy of the row-normalised features from one Gram matrix.

    ``None`` entries: every entry is zero.
    """
    gram = _gram(features, normalize_rows=True)[0]
    return GramStatistics(_summarise_correlation(gram), _entropy_from_gram(gram))
