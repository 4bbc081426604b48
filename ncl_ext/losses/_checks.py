"""Input validation shared by the losses: every message names the offending argument."""

from __future__ import annotations

import math

import torch

from ncl_ext.nonneg import check_mode


def check_nonneg_mode(mode: str | None) -> str | None:
    """Validate a loss's ``nonneg`` argument (``None`` = plain contrastive learning)."""
    return check_mode(mode, "nonneg", allow_none=True)


def check_positive(value: float, name: str) -> float:
    """Return ``value`` as a float if it is a finite number > 0, else raise a ValueError."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


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
