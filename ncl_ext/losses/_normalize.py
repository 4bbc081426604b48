"""The non-negative map followed by L2 normalisation, shared by the cosine-similarity losses."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ncl_ext.nonneg import nonneg

#: Rows shorter than this are divided by it instead of by their norm. A sample whose units
#: are all dead after ReLU is then the zero vector: its similarities are 0, the loss stays
#: finite and the normalisation's gradient is bounded by 1 / NORM_EPS instead of infinite.
NORM_EPS = 1e-6


def nonneg_normalize(features: torch.Tensor, mode: str | None) -> torch.Tensor:
    """``normalize(nonneg(features, mode))`` row-wise (``mode=None``: normalise only)."""
    return F.normalize(nonneg(features, mode), dim=1, eps=NORM_EPS)
