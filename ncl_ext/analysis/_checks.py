"""Input validation shared by the analysis tools: every message names the offending argument."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

#: Entries with ``|z| <= eps`` count as zero; a dimension is active on a sample when ``z > eps``.
DEFAULT_EPS = 1e-5


def as_features(features: Any, name: str = "features") -> torch.Tensor:
    """Return ``features`` as a finite 2-D floating-point tensor ``(N, D)`` with N, D >= 1.

    Accepts a torch tensor or anything ``numpy.asarray`` understands. Integer and boolean
    inputs become float32; float64 stays float64; the device is kept.
    """
    if not isinstance(features, torch.Tensor):
        try:
            array = np.asarray(features)
        except (ValueError, TypeError) as error:  # ragged lists and the like
            raise ValueError(f"{name} must be a 2-D numeric array (N x D): {error}") from None
        if array.dtype.kind not in "biuf":
            raise ValueError(f"{name} must be a 2-D numeric array (N x D), got dtype {array.dtype}")
        features = torch.from_numpy(np.ascontiguousarray(array))
    if features.is_sparse or features.layout != torch.strided:
        raise ValueError(f"{name} must be a dense tensor, got layout {features.layout}")
    if features.dim() != 2:
        raise ValueError(f"{name} must be 2-D (N samples x D dims), got shape {tuple(features.shape)}")
    if features.shape[0] == 0 or features.shape[1] == 0:
        raise ValueError(f"{name} must have at least one sample and one dimension, got shape {tuple(features.shape)}")
    if features.is_complex():
        raise ValueError(f"{name} must be real-valued, got dtype {features.dtype}")
    if not features.is_floating_point() or features.dtype in (torch.float16, torch.bfloat16):
        features = features.float()
    low, high = torch.aminmax(features)  # one pass; NaN and +-Inf show up in the extremes
    if not (math.isfinite(float(low)) and math.isfinite(float(high))):
        raise ValueError(f"{name} contains NaN or Inf values")
    return features


def as_labels(labels: Any, num_samples: int, name: str = "labels") -> torch.Tensor:
    """Return ``labels`` as class codes ``0..C-1`` (a LongTensor of length ``num_samples``).

    Any 1-D sequence of hashable, comparable values works (ints, strings, floats without NaN);
    codes follow the sorted order of the distinct values.
    """
    if isinstance(labels, torch.Tensor):
        labels = labels.detach().cpu().numpy()
    try:
        array = np.asarray(labels)
    except (ValueError, TypeError) as error:
        raise ValueError(f"{name} must be a 1-D array of class labels: {error}") from None
    if array.ndim == 2 and 1 in array.shape:
        array = array.reshape(-1)
    if array.ndim != 1:
        raise ValueError(f"{name} must be 1-D (one class label per sample), got shape {array.shape}")
    if array.shape[0] != num_samples:
        raise ValueError(f"{name} has {array.shape[0]} entries but features have {num_samples} samples")
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise ValueError(f"{name} contains NaN or Inf values")
    if array.dtype.kind not in "biufUSO":
        raise ValueError(f"{name} must hold class labels (ints or strings), got dtype {array.dtype}")
    try:
        _, codes = np.unique(array, return_inverse=True)
    except TypeError as error:
        raise ValueError(f"{name} must hold comparable class labels: {error}") from None
    return torch.from_numpy(codes.reshape(-1).astype(np.int64))


def check_eps(eps: float) -> float:
    """A finite ``eps >= 0``."""
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not math.isfinite(eps) or eps < 0:
        raise ValueError(f"eps must be a finite number >= 0, got {eps!r}")
    return float(eps)


def check_int(value: Any, name: str, minimum: int = 1) -> int:
    """An int ``>= minimum`` (bools are rejected)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return int(value)


def check_positive(value: Any, name: str) -> float:
    """A finite number > 0."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)
