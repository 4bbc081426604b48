"""Dense feature matrices to ``scipy.sparse`` CSR, a block of rows at a time (bounded extra memory)."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch

_ROWS_PER_BLOCK = 8192


def to_csr(features: torch.Tensor, dtype: type = np.float32) -> sp.csr_matrix:
    """The non-zero entries of a 2-D tensor as a CSR matrix (int32 indices when they fit)."""
    blocks = [
        sp.csr_matrix(features[start : start + _ROWS_PER_BLOCK].detach().cpu().numpy().astype(dtype, copy=False))
        for start in range(0, features.shape[0], _ROWS_PER_BLOCK)
    ]
    matrix = blocks[0] if len(blocks) == 1 else sp.vstack(blocks, format="csr")
    matrix.sum_duplicates()
    return matrix


def density(features: torch.Tensor) -> float:
    """Share of entries that are not exactly zero."""
    return float(torch.count_nonzero(features)) / features.numel()
