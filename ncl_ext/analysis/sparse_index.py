"""Exact top-k search over sparse embeddings with an inverted index (posting lists).

Non-negative contrastive learning (Wang, Zhang, Guo, Wang, ICLR 2024, arXiv:2403.12459)
gives embeddings that are > 90% exact zeros. Stored by dimension (one posting list of
``(item, value)`` per dimension, i.e. CSC), a query only visits the items that share one
of its non-zero dimensions, so search costs ``sum_d |posting(d)|`` multiply-adds over the
query's non-zero dims plus one vectorised read of ``num_items`` scores, instead of
``num_items * D``; the index takes ``8 bytes * nnz`` instead of ``4 bytes * num_items * D``.

**What is scored**: the plain inner product ``<query, item>`` of the vectors you pass. To
search by cosine similarity, L2-normalise both sides first (``F.normalize(z, dim=1)``), as
:func:`ncl_ext.analysis.retrieval_precision` does. Scores are accumulated in float64 and
returned as float32; results are the exact top-k of the inner products, ties broken
towards the lower item index (by both backends).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

from ncl_ext._checks import as_features, check_int
from ncl_ext.analysis._sparse import run_in_threads, to_csr
from ncl_ext.analysis.topk import dense_top_k

__all__ = ["SparseIndex", "inverted_index_pays_off"]

#: Above this share of non-zeros a posting list is larger than the dense row: keep it dense.
MAX_SPARSE_DENSITY = 0.3
#: One multiply-add of the inverted index costs about this many dense (BLAS) multiply-adds
#: (measured on 2,048 to 64 dims, 20,000 to 100,000 items: 26 to 38).
SPARSE_OP_COST = 30
#: Reading one item's score out of the accumulator costs about this many dense multiply-adds.
SCAN_COST = 12
BACKENDS = ("auto", "inverted", "dense")


def inverted_index_pays_off(queries: sp.csr_matrix, database: sp.csr_matrix) -> bool:
    """Whether posting lists do less work than the dense product ``queries @ database.T``.

    A query visits ``|posting(d)|`` database items for each of its non-zero dimensions ``d``:
    ``sum_d queries_using(d) * |posting(d)|`` multiply-adds for all queries, each about
    :data:`SPARSE_OP_COST` dense ones, plus :data:`SCAN_COST` per query and item to read the
    scores out, against ``num_queries * num_items * D`` for the product. The share of zeros
    alone does not decide: a few dimensions that fire on most items make every posting scan long.

    Examples:
        >>> import scipy.sparse as sp
        >>> sparse = sp.random(1000, 512, density=0.02, format="csr", random_state=0)
        >>> inverted_index_pays_off(sparse, sparse)
        True
        >>> dense = sp.random(1000, 512, density=0.5, format="csr", random_state=0)
        >>> inverted_index_pays_off(dense, dense)
        False
    """
    dim = database.shape[1]
    database_counts = np.bincount(database.indices, minlength=dim).astype(np.float64)
    query_counts = database_counts if queries is database else np.bincount(queries.indices, minlength=dim)
    pairs = float(queries.shape[0]) * database.shape[0]
    work = float(query_counts @ database_counts) * SPARSE_OP_COST + pairs * SCAN_COST
    return work < pairs * dim


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
            return the same top-k, ties broken towards the lower item index.

    Attributes:
        num_items, dim: database shape.
        density: share of non-zero entries in the database.
        backend: ``"inverted"`` or ``"dense"``.
        nbytes: memory held by the index, in bytes (compare with ``dense_nbytes``).
        dense_nbytes: size of the database as a dense float32 matrix.

    Search cost (inverted): per query, ``sum_d |posting(d)|`` float64 multiply-adds over its
    non-zero dims into a dense accumulator, then one vectorised read of the ``num_items``
    scores; queries run in parallel on ``torch.get_num_threads()`` threads. Any sign of
    values works. On 100,000 x 2,048 L2-normalised uniform-sparse items (1,000 queries,
    k=10, 2 threads on a loaded 2-core machine) it was 9.7x faster than a dense
    ``queries @ database.T`` + ``topk`` at 95% zeros and 94x at 99%, with the same top-10
    (``benchmarks/results/analysis.md``).
    :meth:`search_self` runs every item as a query, leaving the item itself out.

    Ties: equal scores go to the lower item index, whatever the backend, so ``"auto"`` may
    change the backend with the data but not the answer (up to the float32 rounding of the
    dense product on near-equal scores).

    The first inverted search in a fresh environment compiles the numba loop (about 1 s of
    CPU, cached on disk for later processes); building from a dense tensor compiles the CSR
    conversion (well under 1 s) the same way.

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
        nonzeros = int(torch.count_nonzero(matrix)) if isinstance(matrix, torch.Tensor) else matrix.nnz
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
        postings.sort_indices()
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
        csr = to_csr(queries) if isinstance(queries, torch.Tensor) else queries
        return self._search_inverted(csr, k, exclude_self=False)

    def search_self(self, k: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
        """For every database item, the top-``k`` *other* items by inner product, best first.

        Same result as searching the database with itself and dropping each item's own
        match (each item is a query whose own score is left out).

        Returns:
            ``(scores, indices)`` of shape ``(num_items, k)``, ``1 <= k <= num_items - 1``.
        """
        k = self._check_k(k, self.num_items - 1)
        if self.backend == "dense":
            scores, indices = dense_top_k(self._dense, self._dense, k, exclude_self=True)
            return scores.cpu(), indices.cpu()
        rows = sp.csc_matrix(
            (self._posting_values, self._posting_items, self._posting_indptr), shape=(self.num_items, self.dim)
        ).tocsr()
        return self._search_inverted(rows, k, exclude_self=True)

    def _search_inverted(self, queries: sp.csr_matrix, k: int, exclude_self: bool) -> tuple[torch.Tensor, torch.Tensor]:
        from ncl_ext.analysis._inverted_index_kernel import top_k_inner_products

        num_queries = queries.shape[0]
        query_indptr = queries.indptr.astype(np.int64, copy=False)
        query_dims = queries.indices.astype(np.int32, copy=False)
        query_values = queries.data.astype(np.float32, copy=False)
        scores = np.empty((num_queries, k), dtype=np.float32)
        indices = np.empty((num_queries, k), dtype=np.int64)

        def search_rows(first: int, stop: int) -> None:
            top_k_inner_products(
                query_indptr, query_dims, query_values,
                self._posting_indptr, self._posting_items, self._posting_values,
                self.num_items, exclude_self, first, stop, scores, indices,
            )  # fmt: skip

        run_in_threads(search_rows, num_queries)
        return torch.from_numpy(scores), torch.from_numpy(indices)

    @staticmethod
    def _check_k(k: int, available: int) -> int:
        k = check_int(k, "k")
        if k > available:
            raise ValueError(f"k={k} exceeds the {available} database items that can be returned")
        return k
