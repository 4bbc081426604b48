"""Retrieval quality on cosine similarity: precision@k and mAP@k, self excluded.

Each sample is a query against all the *other* samples, ranked by cosine similarity;
a retrieved sample is relevant when it has the query's label. Similarities are computed a
block of queries at a time (dense features, any device) or with an inverted index
(:class:`~ncl_ext.analysis.sparse_index.SparseIndex`, sparse features on the CPU),
whichever is cheaper, so 100,000 x 2,048 features fit in memory and sparse NCL features
are searched much faster than dense ones. Both paths break exact ties towards the lower
index, so the choice of path changes no result (up to the float32 rounding of the dense
product on near-equal similarities).

The first call in a fresh environment compiles two small numba loops (the CSR conversion
and the inverted-index search): about 1-2 s of CPU, cached on disk afterwards (see
``benchmarks/results/analysis.md``, "cold start").

Examples:
    >>> import torch
    >>> features = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    >>> retrieval_precision(features, labels=[0, 0, 1, 1], k=1)
    1.0
"""

from __future__ import annotations

from typing import Any

import scipy.sparse as sp
import torch
import torch.nn.functional as F

from ncl_ext._checks import as_features, as_labels, check_int
from ncl_ext.analysis._sparse import density, l2_normalize_rows, to_csr
from ncl_ext.analysis.sparse_index import MAX_SPARSE_DENSITY, SparseIndex, inverted_index_pays_off
from ncl_ext.analysis.topk import dense_top_k

__all__ = ["cosine_top_k", "mean_average_precision", "retrieval_precision"]


def _normalized_sparse_rows(features: torch.Tensor) -> sp.csr_matrix | None:
    """L2-normalised rows as CSR when ``features`` are on the CPU and sparse enough, else ``None``."""
    if features.device.type != "cpu" or density(features) > MAX_SPARSE_DENSITY:
        return None
    return l2_normalize_rows(to_csr(features))


def cosine_top_k(queries: Any, database: Any = None, k: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-``k`` database items by cosine similarity for each query: ``(scores, indices)``, best first.

    Args:
        queries: ``(Q, D)`` features.
        database: ``(N, D)`` features; ``None`` searches the queries among themselves, each
            query excluding itself.
        k: results per query.

    Rows are L2-normalised (all-zero rows stay zero and score 0 against everything). Sparse
    CPU features go through :class:`SparseIndex`, the rest through a blocked matrix product;
    either way equal similarities go to the lower database index.

    Examples:
        >>> import torch
        >>> database = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
        >>> scores, indices = cosine_top_k(torch.tensor([[3.0, 0.0]]), database, k=2)
        >>> indices.tolist()                   # items 0 and 2 tie: the lower index first
        [[0, 2]]
    """
    queries = as_features(queries, "queries").float()
    self_join = database is None
    database = queries if self_join else as_features(database, "database").float()
    if database.shape[1] != queries.shape[1]:
        raise ValueError(f"queries have {queries.shape[1]} dims but database has {database.shape[1]}")
    available = database.shape[0] - (1 if self_join else 0)
    k = check_int(k, "k")
    if k > available:
        raise ValueError(f"k={k} exceeds the {available} items that can be retrieved per query")
    sparse_database = _normalized_sparse_rows(database)
    sparse_queries = sparse_database if self_join or sparse_database is None else _normalized_sparse_rows(queries)
    if sparse_queries is not None and inverted_index_pays_off(sparse_queries, sparse_database):
        index = SparseIndex(sparse_database, backend="inverted")
        return index.search_self(k) if self_join else index.search(sparse_queries, k)
    queries = F.normalize(queries, dim=1)
    database = queries if self_join else F.normalize(database, dim=1).to(queries.device)
    return dense_top_k(queries, database, k, exclude_self=self_join)


def _neighbour_labels(features: Any, labels: Any, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    features = as_features(features)
    codes = as_labels(labels, features.shape[0])
    if features.shape[0] < 2:
        raise ValueError("retrieval needs at least 2 samples")
    _, indices = cosine_top_k(features, None, k)
    return codes, codes[indices.cpu()]


def retrieval_precision(features: Any, labels: Any, k: int = 10) -> float:
    """Mean precision@k: the share of each sample's ``k`` nearest others that share its label.

    ``P@k = (1/N) sum_n (1/k) #{j in top_k(n) : y_j = y_n}``, where ``top_k(n)`` are the ``k``
    samples most cosine-similar to sample ``n`` other than ``n`` itself.

    Args:
        features: ``(N, D)`` features (tensor or numpy array, any device).
        labels: ``(N,)`` class labels.
        k: number of neighbours, ``1 <= k <= N - 1``.

    Examples:
        >>> import torch
        >>> z = torch.eye(3)[[0, 0, 1, 1, 2, 2]]
        >>> retrieval_precision(z, labels=[0, 0, 1, 1, 2, 2], k=1)
        1.0
    """
    codes, neighbours = _neighbour_labels(features, labels, check_int(k, "k"))
    return float((neighbours == codes[:, None]).double().mean())


def mean_average_precision(features: Any, labels: Any, k: int | None = None) -> float:
    """Mean average precision at ``k`` (mAP@k) on cosine similarity, self excluded.

    For a query with ``R`` relevant samples (same label, itself excluded) and ranked
    relevance ``rel_1..rel_k``::

        AP@k = (1 / min(k, R)) * sum_{i<=k} rel_i * P@i

    averaged over the queries with ``R > 0``. ``k=None`` ranks all ``N - 1`` others (the
    usual, uncut AP, as in ``sklearn.metrics.average_precision_score`` per query).

    Raises:
        ValueError: if no sample shares its label with another one.
    """
    features = as_features(features)
    k = features.shape[0] - 1 if k is None else check_int(k, "k")
    codes, neighbours = _neighbour_labels(features, labels, k)
    relevant = (neighbours == codes[:, None]).double()
    num_relevant = torch.bincount(codes)[codes] - 1
    has_relevant = num_relevant > 0
    if not bool(has_relevant.any()):
        raise ValueError("mean_average_precision needs at least one label shared by two samples")
    precision_at_i = relevant.cumsum(1) / torch.arange(1, k + 1, dtype=torch.float64)
    average_precision = (relevant * precision_at_i).sum(1) / num_relevant.clamp(max=k).clamp(min=1)
    return float(average_precision[has_relevant].mean())
