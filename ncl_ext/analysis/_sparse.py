"""Dense feature matrices to ``scipy.sparse`` CSR, and row normalisation in that form.

:func:`to_csr` is the one dense-to-CSR conversion of :mod:`ncl_ext.analysis` (the Gram
matrix, the inverted index and the retrieval metrics all start from it).
:func:`run_in_threads` spreads a compiled, GIL-releasing loop over row ranges.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import scipy.sparse as sp
import torch


def run_in_threads(task: Callable[[int, int], None], num_rows: int, chunks_per_thread: int = 4) -> None:
    """Call ``task(first_row, stop_row)`` on consecutive row ranges covering ``range(num_rows)``.

    The ranges run on ``torch.get_num_threads()`` threads (the same count as the dense
    products they are compared with), a few ranges per thread so that a thread slowed down
    by other work on the machine does not hold the others up. ``task`` must release the GIL
    (``numba.njit(nogil=True)``) and write only its own rows.
    """
    threads = max(1, min(torch.get_num_threads(), num_rows))
    num_chunks = max(1, min(num_rows, threads * chunks_per_thread if threads > 1 else 1))
    bounds = [num_rows * chunk // num_chunks for chunk in range(num_chunks + 1)]
    if num_chunks == 1:
        task(0, num_rows)
        return
    with ThreadPoolExecutor(max_workers=threads) as pool:
        for future in [pool.submit(task, bounds[i], bounds[i + 1]) for i in range(num_chunks)]:
            future.result()


def to_csr(features: torch.Tensor, dtype: type = np.float32) -> sp.csr_matrix:
    """The non-zero entries of a 2-D tensor as a CSR matrix (int32 column indices, sorted).

    ``-0.0`` counts as zero. Runs a compiled two-pass loop (count, fill) on the threads of
    :func:`run_in_threads`; the first call in a fresh environment compiles it (about a second).
    """
    from ncl_ext.analysis._csr_kernel import count_row_nonzeros, fill_rows

    array = np.ascontiguousarray(features.detach().cpu().numpy(), dtype=dtype)
    num_rows = array.shape[0]
    counts = np.empty(num_rows, dtype=np.int64)
    run_in_threads(lambda first, stop: count_row_nonzeros(array, first, stop, counts), num_rows)
    indptr = np.zeros(num_rows + 1, dtype=np.int64)
    np.cumsum(counts, out=indptr[1:])
    indices = np.empty(indptr[-1], dtype=np.int32)
    data = np.empty(indptr[-1], dtype=array.dtype)
    run_in_threads(lambda first, stop: fill_rows(array, first, stop, indptr, indices, data), num_rows)
    return sp.csr_matrix((data, indices, indptr), shape=array.shape)


def l2_normalize_rows(matrix: sp.csr_matrix, eps: float = 1e-12) -> sp.csr_matrix:
    """Rows divided by ``max(||row||, eps)`` in place, as ``torch.nn.functional.normalize``."""
    squares = sp.csr_matrix((matrix.data.astype(np.float64) ** 2, matrix.indices, matrix.indptr), shape=matrix.shape)
    norms = np.maximum(np.sqrt(np.asarray(squares.sum(axis=1)).ravel()), eps)
    matrix.data /= np.repeat(norms, np.diff(matrix.indptr)).astype(matrix.data.dtype)
    return matrix


def density(features: torch.Tensor) -> float:
    """Share of entries that are not exactly zero."""
    return float(torch.count_nonzero(features)) / features.numel()
