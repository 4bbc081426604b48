"""Input validation shared by the whole package: every message names the offending argument.

- numbers: :func:`check_positive`, :func:`check_int`, :func:`check_eps`;
- feature matrices and labels given to the analysis tools: :func:`as_features`, :func:`as_labels`;
- feature batches given to the losses: :func:`check_features`, :func:`check_pair`,
  :func:`check_scalar_tensor`, :func:`check_nonneg_mode`, :func:`check_chunk_size`.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from ncl_ext.nonneg import check_mode

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

def check_nonneg_mode(mode: str | None) -> str | None:
    """Validate a loss's ``nonneg`` argument (``None`` = plain contrastive learning)."""
    return check_mode(mode, "nonneg", allow_none=True)




def check_chunk_size(chunk_size: int | None) -> int | None:
    """``None`` (no tiling) or a positive int."""
    if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1):
        raise ValueError(f"chunk_size must be None or an int >= 1, got {chunk_size!r}")
    return chunk_size


def check_features(features: torch.Tensor, name: str, check_finite: bool = True) -> None:
    """A 2-D floating-point ``(batch, dim)`` tensor with at least one row, finite if asked."""
    if not isinstance(features, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor of shape (batch, dim), got {type(features).__name__}")
    if features.dim() != 2:
        raise ValueError(f"{name} must be 2-D (batch, dim), got shape {tuple(features.shape)}")
    if features.shape[0] == 0 or features.shape[1] == 0:
        raise ValueError(f"{name} must have at least one row and one column, got shape {tuple(features.shape)}")
    if not features.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got dtype {features.dtype}")
    if check_finite:
        check_all_finite(features, name)


def check_all_finite(tensor: torch.Tensor, name: str) -> None:
    """Raise a ValueError if ``tensor`` holds NaN or Inf (pass ``check_finite=False`` to skip)."""
    if not bool(torch.isfinite(tensor).all()):
        raise ValueError(f"{name} contains NaN or Inf values; pass check_finite=False to the loss to skip this check")


def check_pair(
    first: torch.Tensor,
    second: torch.Tensor,
    names: tuple[str, str] = ("z1", "z2"),
    check_finite: bool = True,
) -> None:
    """Two feature batches of the same shape: pairs ``(first[i], second[i])`` are positives."""
    check_features(first, names[0], check_finite)
    check_features(second, names[1], check_finite)
    if first.shape[0] != second.shape[0]:
        raise ValueError(
            f"{names[0]} and {names[1]} must have the same batch size, got {first.shape[0]} and {second.shape[0]}"
        )
    if first.shape[1] != second.shape[1]:
        raise ValueError(
            f"{names[0]} and {names[1]} must have the same feature dim, got {first.shape[1]} and {second.shape[1]}"
        )
    if first.dtype != second.dtype:
        raise ValueError(f"{names[0]} and {names[1]} must have the same dtype, got {first.dtype} and {second.dtype}")


def check_scalar_tensor(value: torch.Tensor | float, name: str, check_finite: bool = True) -> None:
    """A logit scale / bias: a Python number or a tensor with one element."""
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(f"{name} must hold a single value, got shape {tuple(value.shape)}")
        if check_finite:
            check_all_finite(value, name)
    elif isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number or a one-element tensor, got {type(value).__name__}")
    elif check_finite and not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")
