"""SimCLR's model with an optional non-negative head: the model of Non-negative Contrastive Learning.

Wang, Zhang, Guo, Wang, "Non-negative Contrastive Learning", ICLR 2024 (arXiv:2403.12459):
self-supervised NCL is SimCLR with one change, a non-negative map
(:class:`~ncl_ext.nonneg.NonNegative`) on the projector's output before the loss. The
paper's settings: ResNet-18 with a 512 -> 2048 -> 256 projector on CIFAR (CIFAR stem) and
512 -> 16384 -> 2048 on ImageNet-100.

Examples:
    >>> import torch
    >>> from ncl_ext.models import SmallCNN
    >>> model = ContrastiveModel(SmallCNN(), projector_dims=(256, 64), nonneg="relu")
    >>> out = model(torch.randn(4, 1, 8, 8))
    >>> out.features.shape, out.projections.shape, bool((out.projections >= 0).all())
    (torch.Size([4, 128]), torch.Size([4, 64]), True)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import nn

from ncl_ext.models.features import OutputField, check_backbone, extract_features, resolve_feature_dim
from ncl_ext.models.heads import check_dims, projection_mlp
from ncl_ext.nonneg import NonNegative, check_mode

__all__ = ["ContrastiveModel", "ContrastiveOutput"]


class ContrastiveOutput(NamedTuple):
    """What :class:`ContrastiveModel` returns."""

    features: torch.Tensor  #: backbone features ``h``, shape ``(N, feature_dim)``
    projections: torch.Tensor  #: projector outputs ``z`` (non-negative under NCL), ``(N, projection_dim)``


class ContrastiveModel(nn.Module):
    """A SimCLR-style model whose projections are non-negative under NCL.

    ``forward(images)`` returns :class:`ContrastiveOutput` ``(features, projections)``:
    ``h = backbone(images)`` and ``z = NonNegative(nonneg)(projector(h))`` (NCL), or
    ``z = projector(h)`` when ``nonneg=None`` (plain CL).

    Args:
        backbone: any ``nn.Module`` (torchvision, timm, HF vision encoder, ...); see
            :func:`extract_features` for how its output becomes ``(N, D)`` features.
        feature_dim: ``D``; inferred by :func:`infer_feature_dim` when ``None``.
        projector_dims: hidden sizes then output size of the MLP projector
            (:func:`projection_mlp`); ``()`` for none.
        nonneg: ``None`` for CL, or a mode of :data:`ncl_ext.MODES` (``"relu"``,
            ``"rep_relu"``, ...) for NCL.
        output_field: where the features are in the backbone's output (see :data:`OutputField`).
        input_shape: ``(C, H, W)`` for the dry pass that infers ``feature_dim``.

    Examples:
        >>> from ncl_ext.models import resnet18_cifar
        >>> model = ContrastiveModel(resnet18_cifar(), projector_dims=(2048, 256), nonneg="rep_relu")
        >>> model.feature_dim, model.projection_dim
        (512, 256)
    """

    def __init__(
        self,
        backbone: nn.Module,
        feature_dim: int | None = None,
        projector_dims: Sequence[int] = (2048, 256),
        nonneg: str | None = None,
        *,
        output_field: OutputField = None,
        input_shape: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        self.nonneg = check_mode(nonneg, "nonneg", allow_none=True)
        self.backbone = check_backbone(backbone)
        self.output_field = output_field
        self.feature_dim = resolve_feature_dim(backbone, feature_dim, output_field, input_shape)
        dims = check_dims(projector_dims, "projector_dims")
        self.projection_dim = dims[-1] if dims else self.feature_dim
        self.projector = projection_mlp(self.feature_dim, dims)
        self.head = NonNegative(nonneg) if nonneg is not None else nn.Identity()

    def forward(self, images: torch.Tensor) -> ContrastiveOutput:
        features = extract_features(self.backbone(images), self.output_field)
        return ContrastiveOutput(features, self.head(self.projector(features)))
