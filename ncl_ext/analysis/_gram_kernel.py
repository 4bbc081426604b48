"""Compiled Gram matrix ``Z^T Z`` of a sparse feature matrix stored densely (numba).

Row ``a`` of the Gram matrix is ``sum_n z_na z_n``: the sparse rows ``z_n`` of the samples
that use dimension ``a``. With the non-zeros listed by row (CSR) and by dimension (CSC),
each output row is accumulated in place (16 KB for 2,048 dims: it stays in the L1 cache),
in float64 (the effective rank needs accurate small eigenvalues). Cost:
``sum_n nnz(z_n)^2`` multiply-adds (10,000 x 2,048 at 95% zeros: 104 million, against 43
billion for the dense product); output rows are spread over the threads.
"""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(parallel=True, cache=True)
def gram(features: np.ndarray) -> np.ndarray:
    """``G[a, b] = sum_n z_na z_nb`` for a 2-D array with mostly zero entries."""
    num_rows, dim = features.shape
    row_ptr = np.zeros(num_rows + 1, dtype=np.int64)
    for row in range(num_rows):
        count = 0
        for d in range(dim):
            count += features[row, d] != 0
        row_ptr[row + 1] = row_ptr[row] + count
    nonzeros = row_ptr[num_rows]
    row_dims = np.empty(nonzeros, dtype=np.int64)
    row_values = np.empty(nonzeros, dtype=np.float64)
    for row in numba.prange(num_rows):
        position = row_ptr[row]
        for d in range(dim):
            value = features[row, d]
            if value != 0:
                row_dims[position] = d
                row_values[position] = value
                position += 1

    dim_ptr = np.zeros(dim + 1, dtype=np.int64)  # the same entries listed by dimension
    for t in range(nonzeros):
        dim_ptr[row_dims[t] + 1] += 1
    for d in range(dim):
        dim_ptr[d + 1] += dim_ptr[d]
    next_slot = dim_ptr[:-1].copy()
    dim_rows = np.empty(nonzeros, dtype=np.int64)
    dim_values = np.empty(nonzeros, dtype=np.float64)
    for row in range(num_rows):
        for t in range(row_ptr[row], row_ptr[row + 1]):
            slot = next_slot[row_dims[t]]
            dim_rows[slot] = row
            dim_values[slot] = row_values[t]
            next_slot[row_dims[t]] = slot + 1

    result = np.zeros((dim, dim), dtype=np.float64)
    for a in numba.prange(dim):
        output = result[a]
        for s in range(dim_ptr[a], dim_ptr[a + 1]):
            row, value = dim_rows[s], dim_values[s]
            for t in range(row_ptr[row], row_ptr[row + 1]):
                output[row_dims[t]] += value * row_values[t]
    return result
