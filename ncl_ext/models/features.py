"""Reading ``(N, D)`` features out of any backbone's output, and the feature size by a dry run.

A backbone may return a tensor, a tuple, a dict or a Hugging Face ``ModelOutput``;
:func:`extract_features` finds the feature matrix in all of them, and
:func:`infer_feature_dim` finds ``D`` so that a projector can be built on top.

Examples:
    >>> import torch
    >>> extract_features({"last_hidden_state": torch.ones(2, 5, 3)}).shape
    torch.Size([2, 3])
    >>> infer_feature_dim(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 7)), input_shape=(3, 2, 2))
    7
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from ncl_ext.nonneg import select_output

__all__ = ["OutputField", "check_backbone", "extract_features", "infer_feature_dim", "resolve_feature_dim"]

#: Which part of a backbone's output holds the features: a dict / ``ModelOutput`` key,
#: a tuple index, or ``None`` (a Tensor, or HF ``pooler_output`` / ``last_hidden_state``).
OutputField = str | int | None


def extract_features(output: Any, output_field: OutputField = None) -> torch.Tensor:
    """The ``(N, D)`` feature matrix in a backbone's output.

    ``output_field`` picks a dict / ``ModelOutput`` key or a tuple index. Without it: a
    Tensor is used as is (trailing singleton dimensions, e.g. ``(N, C, 1, 1)``, are
    flattened); a Hugging Face output gives ``pooler_output``, else the mean of
    ``last_hidden_state`` over tokens (ViT) or over positions (CNN feature maps).

    Raises:
        ValueError: no feature matrix can be found; the message says what to pass.

    Examples:
        >>> extract_features({"last_hidden_state": torch.ones(2, 5, 3)}).shape
        torch.Size([2, 3])
    """
    if output_field is not None:
        try:
            return _as_feature_matrix(select_output(output, output_field))
        except ValueError as error:
            raise ValueError(f"output_field={output_field!r}: {error}") from None
    if isinstance(output, torch.Tensor):
        return _as_feature_matrix(output)
    if isinstance(output, Mapping):
        if output.get("pooler_output") is not None:
            return _as_feature_matrix(output["pooler_output"])
        hidden = output.get("last_hidden_state")
        if isinstance(hidden, torch.Tensor) and hidden.dim() in (3, 4):
            return hidden.mean(dim=1) if hidden.dim() == 3 else hidden.mean(dim=(2, 3))
    raise ValueError(
        f"cannot find (N, D) features in the backbone's output ({_describe(output)}); pass output_field=<key or "
        "index> naming the feature tensor, or a backbone that returns an (N, D) tensor"
    )


def _as_feature_matrix(features: Any) -> torch.Tensor:
    if isinstance(features, torch.Tensor) and features.dim() >= 2:
        if features.dim() == 2:
            return features
        if all(size == 1 for size in features.shape[2:]):
            return features.flatten(1)
    raise ValueError(
        f"the backbone returns {_describe(features)}, not (N, D) features; pass a backbone that pools its "
        "feature map, e.g. nn.Sequential(backbone, nn.AdaptiveAvgPool2d(1), nn.Flatten()) or timm with num_classes=0"
    )


def _describe(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {tuple(value.shape)}"
    if isinstance(value, Mapping):
        return f"{type(value).__name__} with fields {list(value.keys())}"
    if isinstance(value, (tuple, list)):
        return f"a {type(value).__name__} of {len(value)} items"
    return f"a {type(value).__name__}"


def infer_feature_dim(
    backbone: nn.Module, output_field: OutputField = None, input_shape: Sequence[int] | None = None
) -> int:
    """The feature dimension ``D`` of ``backbone``, found by a dry forward pass.

    The pass runs in eval mode without gradients (BatchNorm statistics are untouched)
    on two blank images of ``input_shape`` = ``(C, H, W)``; without it the shape comes
    from the backbone (``input_shape`` attribute, HF ``config.image_size`` /
    ``num_channels``, timm ``patch_embed.img_size`` / ``pretrained_cfg``), then 3x32x32
    and 3x224x224 are tried.

    Raises:
        ValueError: every dry pass failed (pass ``feature_dim`` and ``input_shape``), or
            the output holds no ``(N, D)`` features (see :func:`extract_features`).
    """
    candidates = [tuple(input_shape)] if input_shape is not None else _input_shape_candidates(backbone)
    reference = next(backbone.parameters(), None)
    device = reference.device if reference is not None else torch.device("cpu")
    dtype = reference.dtype if reference is not None and reference.is_floating_point() else torch.float32
    was_training = backbone.training
    backbone.eval()
    failure = None
    try:
        for shape in candidates:
            try:
                with torch.no_grad():
                    output = backbone(torch.zeros(2, *shape, device=device, dtype=dtype))
            except Exception as error:  # noqa: BLE001 - any failure means "try the next shape"
                failure = error
                continue
            return int(extract_features(output, output_field).shape[1])
    finally:
        backbone.train(was_training)
    reason = str(failure).strip().splitlines()[0] if failure is not None and str(failure).strip() else ""
    raise ValueError(
        f"could not infer the feature dimension of {type(backbone).__name__}: a dry forward pass on inputs of shape "
        f"{candidates} failed ({type(failure).__name__}: {reason[:200]}); "
        "pass feature_dim=<int> and input_shape=(C, H, W)"
    )


def _input_shape_candidates(backbone: nn.Module) -> list[tuple[int, ...]]:
    hints: list[tuple[int, ...]] = []
    if getattr(backbone, "input_shape", None) is not None:
        hints.append(tuple(backbone.input_shape))
    config = getattr(backbone, "config", None)
    if config is not None and getattr(config, "image_size", None) is not None:
        size = config.image_size
        height, width = (size, size) if isinstance(size, int) else tuple(size)
        hints.append((getattr(config, "num_channels", 3), height, width))
    patch_embed = getattr(backbone, "patch_embed", None)
    if patch_embed is not None and getattr(patch_embed, "img_size", None) is not None:
        proj = getattr(patch_embed, "proj", None)
        hints.append((getattr(proj, "in_channels", 3), *tuple(patch_embed.img_size)))
    pretrained_cfg = getattr(backbone, "pretrained_cfg", None)
    if isinstance(pretrained_cfg, Mapping) and pretrained_cfg.get("input_size"):
        hints.append(tuple(pretrained_cfg["input_size"]))
    hints += [(3, 32, 32), (3, 224, 224)]
    return list(dict.fromkeys(hints))


def check_backbone(backbone: Any) -> nn.Module:
    """``backbone`` if it is an ``nn.Module``, else a ValueError."""
    if not isinstance(backbone, nn.Module):
        raise ValueError(f"backbone must be a torch.nn.Module, got {type(backbone).__name__}")
    return backbone


def resolve_feature_dim(
    backbone: nn.Module, feature_dim: int | None, output_field: OutputField, input_shape: Sequence[int] | None
) -> int:
    """``feature_dim`` when given (a positive int), else :func:`infer_feature_dim`."""
    if feature_dim is None:
        return infer_feature_dim(backbone, output_field, input_shape)
    if isinstance(feature_dim, bool) or not isinstance(feature_dim, int) or feature_dim < 1:
        raise ValueError(f"feature_dim={feature_dim!r}; expected a positive int (or None to infer it)")
    return feature_dim
