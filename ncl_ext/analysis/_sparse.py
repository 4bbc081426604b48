"""Dense feature matrices to ``scipy.sparse`` CSR, and row normalisation in that form."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch


def to_csr(features: torch.Tensor, dtype: type = np.float32) -> sp.csr_matrix:
    """The non-zero entries of a 2-D tensor as a CSR matrix (int32 column indices)."""
    from ncl_ext.analysis._csr_kernel import dense_to_csr_arrays

    array = np.ascontiguousarray(features.detach().cpu().numpy(), dtype=dtype)
    indptr, indices, data = dense_to_csr_arrays(array)
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
