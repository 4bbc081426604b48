"""The compiled loops behind :class:`~ncl_ext.analysis.sparse_index.SparseIndex` (numba).

For a query, the scores of the database items are accumulated from the posting lists of
the query's non-zero dimensions (``score[item] += q_d * x_item,d``), in float64, into a
dense per-thread accumulator; the ``k`` best are kept in a heap. Work per query is
``sum_d |posting(d)|`` over its non-zero dims instead of ``num_items * D``. Two ways to
read the accumulator, chosen per query by that work:

- *scan*: visit every item (any sign);
- *touched list*: visit only the items that received a contribution, then fill up with
  zero-score items (lowest index first). Exact only when queries and items are
  non-negative: every untouched item then scores exactly 0 and every touched one > 0.

:func:`top_k_inner_products` searches queries against the database;
:func:`top_k_self_join` finds each database item's nearest *other* items and computes each
pair once (item ``q`` only accumulates the items after it and offers every score to both
heaps), half the work of searching the database with itself. Ties are broken towards the
lower item index, so results are deterministic.
"""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(cache=True, inline="always")
def _worse(score_a: float, item_a: int, score_b: float, item_b: int) -> bool:
    return score_a < score_b or (score_a == score_b and item_a > item_b)


@numba.njit(cache=True)
def _sift_down(scores: np.ndarray, items: np.ndarray, row: int, position: int, size: int) -> None:
    # Min-heap by (score, -item) in scores[row, :size]: the root is the worst of those kept.
    while True:
        child = 2 * position + 1
        if child >= size:
            return
        right = child + 1
        if right < size and _worse(scores[row, right], items[row, right], scores[row, child], items[row, child]):
            child = right
        if not _worse(scores[row, child], items[row, child], scores[row, position], items[row, position]):
            return
        scores[row, child], scores[row, position] = scores[row, position], scores[row, child]
        items[row, child], items[row, position] = items[row, position], items[row, child]
        position = child


@numba.njit(cache=True, inline="always")
def _offer(scores: np.ndarray, items: np.ndarray, row: int, score: float, item: int, k: int) -> None:
    if _worse(scores[row, 0], items[row, 0], score, item):
        scores[row, 0] = score
        items[row, 0] = item
        _sift_down(scores, items, row, 0, k)


@numba.njit(cache=True)
def _write_sorted(scores: np.ndarray, items: np.ndarray, row: int, k: int, out_scores, out_items, out_row) -> None:
    # Heap sort: move the worst to the last free slot, so slot 0 ends up the best.
    for size in range(k - 1, 0, -1):
        scores[row, 0], scores[row, size] = scores[row, size], scores[row, 0]
        items[row, 0], items[row, size] = items[row, size], items[row, 0]
        _sift_down(scores, items, row, 0, size)
    for j in range(k):
        out_scores[out_row, j] = scores[row, j]
        out_items[out_row, j] = items[row, j]


@numba.njit(cache=True, inline="always")
def _posting_start(posting_indptr, posting_items, dim: int, after: int) -> int:
    """First position in ``posting(dim)`` of an item ``> after`` (``after = -1``: the start)."""
    start, stop = posting_indptr[dim], posting_indptr[dim + 1]
    if after < 0:
        return start
    return start + np.searchsorted(posting_items[start:stop], after, side="right")


@numba.njit(cache=True, inline="always")
def _accumulate(dims, values, start, stop, posting_indptr, posting_items, posting_values, after, accumulator) -> None:
    for t in range(start, stop):
        dim, value = dims[t], np.float64(values[t])
        for s in range(_posting_start(posting_indptr, posting_items, dim, after), posting_indptr[dim + 1]):
            accumulator[posting_items[s]] += value * posting_values[s]


@numba.njit(cache=True, inline="always")
def _accumulate_touched(
    dims, values, start, stop, posting_indptr, posting_items, posting_values, after, accumulator, touched
) -> int:
    # A product of two non-zero float32 values is never 0 in float64 and sums of positive
    # terms never return to 0, so "accumulator == 0" means "not touched yet". Always writing
    # and advancing only on a first touch is about twice as fast as an if.
    num_touched = 0
    for t in range(start, stop):
        dim, value = dims[t], np.float64(values[t])
        for s in range(_posting_start(posting_indptr, posting_items, dim, after), posting_indptr[dim + 1]):
            item = posting_items[s]
            touched[num_touched] = item
            num_touched += accumulator[item] == 0.0
            accumulator[item] += value * posting_values[s]
    return num_touched


@numba.njit(cache=True, inline="always")
def _work(dims, start, stop, posting_indptr, posting_items, after) -> int:
    work = 0
    for t in range(start, stop):
        dim = dims[t]
        work += posting_indptr[dim + 1] - _posting_start(posting_indptr, posting_items, dim, after)
    return work


@numba.njit(parallel=True, cache=True)
def top_k_inner_products(
    query_indptr: np.ndarray,
    query_dims: np.ndarray,
    query_values: np.ndarray,
    posting_indptr: np.ndarray,
    posting_items: np.ndarray,
    posting_values: np.ndarray,
    num_items: int,
    k: int,
    non_negative: bool,
    num_chunks: int,
    out_scores: np.ndarray,
    out_items: np.ndarray,
) -> None:
    """Fill ``out_scores`` / ``out_items`` ``(num_queries, k)`` with each query's top-k, best first.

    Queries are CSR (``query_indptr``, ``query_dims``, ``query_values``); the database is
    stored by dimension (CSC: ``posting_indptr`` over dims, ``posting_items``,
    ``posting_values``). ``non_negative`` allows the touched-list read-out.
    """
    num_queries = query_indptr.shape[0] - 1
    for chunk in numba.prange(num_chunks):
        accumulator = np.zeros(num_items, dtype=np.float64)
        touched = np.empty(num_items + 1, dtype=np.int64)
        heap_scores = np.empty((1, k), dtype=np.float64)
        heap_items = np.empty((1, k), dtype=np.int64)
        for query in range(chunk * num_queries // num_chunks, (chunk + 1) * num_queries // num_chunks):
            start, stop = query_indptr[query], query_indptr[query + 1]
            heap_scores[:] = -np.inf
            heap_items[:] = num_items
            work = _work(query_dims, start, stop, posting_indptr, posting_items, -1)
            if non_negative and 4 * work < num_items:
                num_touched = _accumulate_touched(
                    query_dims, query_values, start, stop, posting_indptr, posting_items, posting_values, -1,
                    accumulator, touched,
                )  # fmt: skip
                for u in range(num_touched):
                    _offer(heap_scores, heap_items, 0, accumulator[touched[u]], touched[u], k)
                offered, item = num_touched, 0
                while offered < k:  # zero-score items, lowest index first
                    if accumulator[item] == 0.0:
                        _offer(heap_scores, heap_items, 0, 0.0, item, k)
                        offered += 1
                    item += 1
                for u in range(num_touched):
                    accumulator[touched[u]] = 0.0
            else:
                _accumulate(
                    query_dims, query_values, start, stop, posting_indptr, posting_items, posting_values, -1,
                    accumulator,
                )  # fmt: skip
                root_score, root_item = heap_scores[0, 0], heap_items[0, 0]
                for item in range(num_items):
                    score = accumulator[item]
                    accumulator[item] = 0.0
                    if _worse(root_score, root_item, score, item):
                        _offer(heap_scores, heap_items, 0, score, item, k)
                        root_score, root_item = heap_scores[0, 0], heap_items[0, 0]
            _write_sorted(heap_scores, heap_items, 0, k, out_scores, out_items, query)


@numba.njit(parallel=True, cache=True)
def top_k_self_join(
    row_indptr: np.ndarray,
    row_dims: np.ndarray,
    row_values: np.ndarray,
    posting_indptr: np.ndarray,
    posting_items: np.ndarray,
    posting_values: np.ndarray,
    k: int,
    non_negative: bool,
    num_threads: int,
    out_scores: np.ndarray,
    out_items: np.ndarray,
) -> None:
    """For each database item, its top-k among the *other* items, best first (``k < num_items``).

    The database is given twice: by row (CSR) and by dimension (CSC). Each thread keeps a
    heap per item; they are merged at the end.
    """
    num_items = row_indptr.shape[0] - 1
    heap_scores = np.full((num_threads, num_items, k), -np.inf)
    heap_items = np.full((num_threads, num_items, k), num_items, dtype=np.int64)
    for thread in numba.prange(num_threads):
        accumulator = np.zeros(num_items, dtype=np.float64)
        touched = np.empty(num_items + 1, dtype=np.int64)
        scores, items = heap_scores[thread], heap_items[thread]
        # worst[i] mirrors scores[i, 0] (the root of item i's heap) in one contiguous array, so
        # that offering a score to every later item reads memory sequentially.
        worst = np.full(num_items, -np.inf)
        for query in range(thread, num_items, num_threads):  # interleaved: early rows cost more
            start, stop = row_indptr[query], row_indptr[query + 1]
            work = _work(row_dims, start, stop, posting_indptr, posting_items, query)
            if non_negative and 4 * work < num_items - query:
                num_touched = _accumulate_touched(
                    row_dims, row_values, start, stop, posting_indptr, posting_items, posting_values, query,
                    accumulator, touched,
                )  # fmt: skip
                for u in range(num_touched):
                    item = touched[u]
                    score = accumulator[item]
                    accumulator[item] = 0.0
                    _offer(scores, items, query, score, item, k)
                    if score >= worst[item]:
                        _offer(scores, items, item, score, query, k)
                        worst[item] = scores[item, 0]
            else:
                _accumulate(
                    row_dims, row_values, start, stop, posting_indptr, posting_items, posting_values, query,
                    accumulator,
                )  # fmt: skip
                # The heap root (worst kept score) lives in registers between the rare updates.
                root_score, root_item = scores[query, 0], items[query, 0]
                for item in range(query + 1, num_items):
                    score = accumulator[item]
                    accumulator[item] = 0.0
                    if _worse(root_score, root_item, score, item):
                        _offer(scores, items, query, score, item, k)
                        root_score, root_item = scores[query, 0], items[query, 0]
                    if score >= worst[item]:
                        _offer(scores, items, item, score, query, k)
                        worst[item] = scores[item, 0]

    for query in numba.prange(num_items):  # merge the threads' heaps into thread 0's
        for thread in range(1, num_threads):
            for j in range(k):
                _offer(
                    heap_scores[0], heap_items[0], query, heap_scores[thread, query, j], heap_items[thread, query, j], k
                )
        if non_negative:
            # Zero scores were only offered by scanned rows: replace them by the lowest-index
            # zero-score items, the ones the touched-list rows would have picked.
            positives = 0
            for j in range(k):
                if heap_scores[0, query, j] > 0.0:
                    heap_scores[0, query, positives] = heap_scores[0, query, j]
                    heap_items[0, query, positives] = heap_items[0, query, j]
                    positives += 1
            item = 0
            filled = positives
            while filled < k:
                taken = item == query
                for j in range(positives):
                    taken = taken or heap_items[0, query, j] == item
                if not taken:
                    heap_scores[0, query, filled] = 0.0
                    heap_items[0, query, filled] = item
                    filled += 1
                item += 1
            for position in range(k // 2 - 1, -1, -1):  # restore the heap order
                _sift_down(heap_scores[0], heap_items[0], query, position, k)
        _write_sorted(heap_scores[0], heap_items[0], query, k, out_scores, out_items, query)
