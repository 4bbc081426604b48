"""Exact top-k search over sparse embeddings with an inverted index (posting lists).

Non-negative contrastive learning (Wang, Zhang, Guo, Wang, ICLR 2024, arXiv:2403.12459)
gives embeddings that are > 90% exact zeros. Stored by dimension (one posting list of
``(item, value)`` per dimension, i.e. CSC), a query only visits the items that share one
of its non-zero dimensions, so search costs ``sum_d |posting(d)|`` over the query's
non-zero dims instead of ``num_items * D``, and the index takes ``8 bytes * nnz`` instead
of ``4 bytes * num_items * D``.

**What is scored**: the plain inner product ``<query, item>`` of the vectors you pass. To
search by cosine similarity, L2-normalise both sides first (``F.normalize(z, dim=1)``), as
:func:`ncl_ext.analysis.retrieval_precision` does. Scores are accumulated in float64 and
returned as float32; results are the exact top-k of the inner products, ties broken
towards the lower item index.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

from ncl_ext._checks import as_features, check_int
from ncl_ext.analysis._sparse import to_csr
from ncl_ext.analysis.topk import dense_top_k

__all__ = ["SparseIndex", "inverted_index_pays_off"]

#: Above this share of non-zeros a posting list is larger than the dense row: keep it dense.
MAX_SPARSE_DENSITY = 0.3
#: One multiply-add of the inverted index costs about this many dense (BLAS) multiply-adds.
SPARSE_OP_COST = 100
BACKENDS = ("auto", "inverted", "dense")


def inverted_index_pays_off(queries: sp.csr_matrix, database: sp.csr_matrix, self_join: bool = False) -> bool:
    """Whether posting lists do less work than the dense product ``queries @ database.T``.

    A query visits ``|posting(d)|`` database items for each of its non-zero dimensions ``d``:
    ``sum_d queries_using(d) * |posting(d)|`` multiply-adds for all queries (half that for a
    self-join, which scores each pair once), each about :data:`SPARSE_OP_COST` dense ones,
    against ``num_queries * num_items * D`` for the product. The share of zeros alone does not
    decide: a few dimensions that fire on most items make every posting scan long.
    """
    dim = database.shape[1]
    database_counts = np.bincount(database.indices, minlength=dim).astype(np.float64)
    query_counts = database_counts if queries is database else np.bincount(queries.indices, minlength=dim)
    work = float(query_counts @ database_counts) * SPARSE_OP_COST
    if self_join:
        work /= 2
    return work < queries.shape[0] * database.shape[0] * dim


def _as_matrix(data: Any, name: str) -> torch.Tensor | sp.csr_matrix:
    if sp.issparse(data):
        matrix = sp.csr_matrix(data, dtype=np.float32)
        if matrix.shape[0] == 0 or matrix.shape[1] == 0:
            raise ValueError(f"{name} must have at least one row and one column, got shape {matrix.shape}")
        if not np.isfinite(matrix.data).all():
            raise ValueError(f"{name} contains NaN or Inf values")
        matrix.eliminate_zeros()
        return matrix
    return as_features(data, name).float()


class SparseIndex:
    """Exact top-k inner-product search for sparse (e.g. non-negative NCL) embeddings.

    Args:
        database: ``(num_items, D)`` embeddings: a tensor, a numpy array or a
            ``scipy.sparse`` matrix.
        backend: ``"inverted"`` (posting lists), ``"dense"`` (the dense matrix, searched by
            matrix product) or ``"auto"`` (default): posting lists when
            :func:`inverted_index_pays_off` for queries distributed like the database, the
            dense matrix otherwise (always above :data:`MAX_SPARSE_DENSITY` non-zeros). Both
            return the same results.

    Attributes:
        num_items, dim: database shape.
        density: share of non-zero entries in the database.
        backend: ``"inverted"`` or ``"dense"``.
        nbytes: memory held by the index, in bytes (compare with ``dense_nbytes``).
        dense_nbytes: size of the database as a dense float32 matrix.

    Search cost (inverted): per query, ``sum_d |posting(d)|`` multiply-adds over its non-zero
    dims plus a read-out of either all items or only those touched (for non-negative
    queries and items), in parallel over queries (numba threads). Signed values are
    supported; only the touched-list read-out needs non-negativity. :meth:`search_self`
    (each item's nearest other items) scores every pair once.

    Examples:
        >>> import torch, torch.nn.functional as F
        >>> database = F.normalize(torch.relu(torch.randn(1000, 64) - 1.5), dim=1)
        >>> index = SparseIndex(database)
        >>> scores, indices = index.search(database[:5], k=3)
        >>> indices[:, 0].tolist()                  # each row finds itself first
        [0, 1, 2, 3, 4]
        >>> index.nbytes < index.dense_nbytes
        True
        >>> neighbour_scores, neighbours = index.search_self(k=3)   # excludes the item itself
    """

    def __init__(self, database: Any, backend: str = "auto") -> None:
        if backend not in BACKENDS:
            raise ValueError(f"backend={backend!r}; expected one of {BACKENDS}")
        matrix = _as_matrix(database, "database")
        self.num_items, self.dim = matrix.shape
        self.dense_nbytes = self.num_items * self.dim * 4
        if isinstance(matrix, torch.Tensor):
            nonzeros = int(torch.count_nonzero(matrix))
            self.non_negative = bool((matrix >= 0).all())
        else:
            nonzeros = matrix.nnz
            self.non_negative = bool((matrix.data >= 0).all())
        self.density = nonzeros / (self.num_items * self.dim)
        csr = None
        if backend == "inverted" or (backend == "auto" and self.density <= MAX_SPARSE_DENSITY):
            csr = to_csr(matrix) if isinstance(matrix, torch.Tensor) else matrix
        if backend == "auto":
            backend = "inverted" if csr is not None and inverted_index_pays_off(csr, csr) else "dense"
        self.backend = backend
        if self.backend == "dense":
            self._dense = (
                matrix.contiguous() if isinstance(matrix, torch.Tensor) else torch.from_numpy(matrix.toarray())
            )
            self.nbytes = self._dense.element_size() * self._dense.numel()
            return
        postings = csr.tocsc()  # per dimension: the items that use it, in item order
        self._posting_indptr = postings.indptr.astype(np.int64)
        self._posting_items = postings.indices.astype(np.uint32)  # unsigned: no negative-index check
        self._posting_values = postings.data.astype(np.float32)
        self.nbytes = self._posting_indptr.nbytes + self._posting_items.nbytes + self._posting_values.nbytes

    def __repr__(self) -> str:
        return (
            f"SparseIndex(num_items={self.num_items}, dim={self.dim}, density={self.density:.4f}, "
            f"backend={self.backend!r}, nbytes={self.nbytes})"
        )

    def search(self, queries: Any, k: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-``k`` database items by inner product for each query, best first.

        Args:
            queries: ``(num_queries, D)`` tensor, numpy array or ``scipy.sparse`` matrix.
            k: number of results per query, ``1 <= k <= num_items``.

        Returns:
            ``(scores, indices)``: a float32 and a LongTensor of shape ``(num_queries, k)``;
            exactly the dense top-k of ``queries @ database.T`` (ties: lower index first).
        """
        queries = _as_matrix(queries, "queries")
        if queries.shape[1] != self.dim:
            raise ValueError(f"queries have {queries.shape[1]} dims but the index has {self.dim}")
        k = self._check_k(k, self.num_items)
        if self.backend == "dense":
            dense_queries = queries if isinstance(queries, torch.Tensor) else torch.from_numpy(queries.toarray())
            scores, indices = dense_top_k(dense_queries.to(self._dense.device).float(), self._dense, k)
            return scores.cpu(), indices.cpu()
        from ncl_ext.analysis._inverted_index_kernel import top_k_inner_products

        csr = to_csr(queries) if isinstance(queries, torch.Tensor) else queries
        num_queries = csr.shape[0]
        scores = np.empty((num_queries, k), dtype=np.float32)
        indices = np.empty((num_queries, k), dtype=np.int64)
        top_k_inner_products(
            csr.indptr.astype(np.int64),
            csr.indices.astype(np.int32),
            csr.data.astype(np.float32),
            self._posting_indptr,
            self._posting_items,
            self._posting_values,
            self.num_items,
            k,
            self.non_negative and bool((csr.data >= 0).all()),
            max(1, min(num_queries, 8 * _threads())),
            scores,
            indices,
        )
        return torch.from_numpy(scores), torch.from_numpy(indices)

    def search_self(self, k: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
        """For every database item, the top-``k`` *other* items by inner product, best first.

        Same result as searching the database with itself and dropping each item's own
        match, at about half the cost: each pair of items is scored once.

        Returns:
            ``(scores, indices)`` of shape ``(num_items, k)``, ``1 <= k <= num_items - 1``.
        """
        k = self._check_k(k, self.num_items - 1)
        if self.backend == "dense":
            scores, indices = dense_top_k(self._dense, self._dense, k, exclude_self=True)
            return scores.cpu(), indices.cpu()
        from ncl_ext.analysis._inverted_index_kernel import top_k_self_join

        rows = sp.csc_matrix(
            (self._posting_values, self._posting_items, self._posting_indptr), shape=(self.num_items, self.dim)
        ).tocsr()
        scores = np.empty((self.num_items, k), dtype=np.float32)
        indices = np.empty((self.num_items, k), dtype=np.int64)
        top_k_self_join(
            rows.indptr.astype(np.int64),
            rows.indices.astype(np.int32),
            rows.data.astype(np.float32),
            self._posting_indptr,
            self._posting_items,
            self._posting_values,
            k,
            self.non_negative,
            _threads(),
            scores,
            indices,
        )
        return torch.from_numpy(scores), torch.from_numpy(indices)

    @staticmethod
    def _check_k(k: int, available: int) -> int:
        k = check_int(k, "k")
        if k > available:
            raise ValueError(f"k={k} exceeds the {available} database items that can be returned")
        return k


def _threads() -> int:
    import numba

    return numba.get_num_threads()
