"""Classifiers for non-negative cross-entropy (NCE), the supervised counterpart of NCL.

Wang, Zhang, Guo, Wang, "Non-negative Contrastive Learning" (ICLR 2024, arXiv:2403.12459,
Sec. 6) make the penultimate features of a classifier non-negative (ImageNet-100 from
scratch: CE 76.1 vs NCE 78.6). :class:`NonNegativeLinear` is the classification layer
(optionally with non-negative class weights), :class:`NonNegativeClassifier` a whole image
classifier built around any backbone, and
:class:`ncl_ext.losses.NonNegativeCrossEntropyLoss` the same layer behind a loss interface.

Examples:
    >>> import torch
    >>> layer = NonNegativeLinear(8, 3, nonneg="relu")
    >>> bool((layer.class_weights() >= 0).all())
    True
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ncl_ext.models.features import OutputField, check_backbone, extract_features, resolve_feature_dim
from ncl_ext.models.heads import check_dims, projection_mlp
from ncl_ext.nonneg import NonNegative, check_mode
from ncl_ext.nonneg import nonneg as apply_nonneg

__all__ = ["ClassifierOutput", "NonNegativeClassifier", "NonNegativeLinear"]


class ClassifierOutput(NamedTuple):
    """What :class:`NonNegativeClassifier` returns with ``return_features=True``."""

    logits: torch.Tensor  #: ``(N, num_classes)``
    features: torch.Tensor  #: the penultimate features feeding the classifier (after the head)


class NonNegativeLinear(nn.Linear):
    """``nn.Linear`` whose weights pass through a non-negative map: ``logits = x @ nonneg(W).T (+ b)``.

    The class-weight side of NCE: with non-negative weights every class is a non-negative
    combination of feature dimensions. ``nonneg=None`` is a plain ``nn.Linear``. Weights
    start as ``nn.Linear``'s, in absolute value under a mode (ReLU would otherwise start with
    half of them dead). The inputs are used as given: map the features before this layer.

    Args:
        in_features, out_features, bias: as ``nn.Linear`` (no bias by default).
        nonneg: the map applied to the weights (a mode of :func:`ncl_ext.nonneg`), or ``None``.

    Examples:
        >>> layer = NonNegativeLinear(4, 2, nonneg="relu")
        >>> layer(torch.ones(1, 4)).shape, layer.bias is None
        (torch.Size([1, 2]), True)
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = False, nonneg: str | None = None) -> None:
        for name, value in (("in_features", in_features), ("out_features", out_features)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        super().__init__(in_features, out_features, bias=bias)
        self.nonneg = check_mode(nonneg, "nonneg", allow_none=True)
        if self.nonneg is not None:
            with torch.no_grad():
                self.weight.abs_()

    def class_weights(self) -> torch.Tensor:
        """The ``(out_features, in_features)`` weights the logits use."""
        return apply_nonneg(self.weight, self.nonneg)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return F.linear(features, self.class_weights(), self.bias)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, nonneg={self.nonneg!r}"


class NonNegativeClassifier(nn.Module):
    """A classifier whose penultimate features (and optionally class weights) are non-negative under NCE.

    ``logits = W f(x)`` with ``f(x) = NonNegative(nonneg)(projector(backbone(x)))``
    (NCE) or ``f(x) = projector(backbone(x))`` (CE, ``nonneg=None``); the loss stays the
    usual cross-entropy. The classifier has no bias by default, so the logits are exactly
    the inner products of the features with the class weights.

    The paper (Sec. 6) reads cross-entropy as contrastive learning between a sample's
    features ``f(x)`` and the class weights ``W_y``, and NCE makes *both* sides
    non-negative, as NCL does for its two views: ``logits = f+(x) W+^T``. With
    ``nonneg_weights=True`` the class weights pass through the same non-negative map
    (``W+ = NonNegative(nonneg)(W)``, initialised as ``|W|``, see :class:`NonNegativeLinear`);
    the supervised recipe sets it for its ``nce`` rows. This is what gives NCE its effect on backbones whose
    pooled features are already non-negative (ReLU before average pooling: torchvision
    ResNets, :class:`SmallCNN` by default): there ``nonneg`` on the features alone
    computes exactly what CE does, while non-negative class weights make every class a
    non-negative combination of feature dimensions, so each dimension must fire for few
    classes (sparse, class-aligned features).

    Args:
        backbone: any ``nn.Module`` returning features (see :func:`extract_features`);
            to wrap a torchvision / timm / HF classifier use :meth:`from_classifier`.
        num_classes: number of classes.
        nonneg: ``None`` for CE, a mode (``"relu"``, ...) for NCE.
        projector_dims: optional MLP projector before the head (:func:`projection_mlp`).
        bias: whether the linear classifier has a bias.
        nonneg_weights: also map the class weights through ``nonneg`` (needs ``nonneg``).
        feature_dim, output_field, input_shape: as in :class:`ContrastiveModel`.

    Examples:
        >>> from ncl_ext.models import SmallCNN
        >>> model = NonNegativeClassifier(SmallCNN(final_relu=False), num_classes=10, nonneg="relu")
        >>> logits, features = model(torch.randn(4, 1, 8, 8), return_features=True)
        >>> logits.shape, bool((features >= 0).all()), model.classifier.bias is None
        (torch.Size([4, 10]), True, True)
    """

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        nonneg: str | None = None,
        projector_dims: Sequence[int] | None = None,
        bias: bool = False,
        feature_dim: int | None = None,
        *,
        nonneg_weights: bool = False,
        output_field: OutputField = None,
        input_shape: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes={num_classes!r}; expected a positive int")
        self.nonneg = check_mode(nonneg, "nonneg", allow_none=True)
        if nonneg_weights and self.nonneg is None:
            raise ValueError("nonneg_weights=True needs a nonneg mode (got nonneg=None)")
        self.nonneg_weights = bool(nonneg_weights)
        self.backbone = check_backbone(backbone)
        self.output_field = output_field
        self.feature_dim = resolve_feature_dim(backbone, feature_dim, output_field, input_shape)
        dims = check_dims(projector_dims, "projector_dims")
        self.projector = projection_mlp(self.feature_dim, dims)
        self.head = NonNegative(nonneg) if nonneg is not None else nn.Identity()
        self.classifier = NonNegativeLinear(
            dims[-1] if dims else self.feature_dim, num_classes, bias=bias,
            nonneg=self.nonneg if nonneg_weights else None,
        )

    def class_weights(self) -> torch.Tensor:
        """The ``(num_classes, D)`` weights the logits use (non-negative with ``nonneg_weights``)."""
        return self.classifier.class_weights()

    def penultimate(self, images: torch.Tensor) -> torch.Tensor:
        """The features that feed the classifier (non-negative under NCE)."""
        features = extract_features(self.backbone(images), self.output_field)
        return self.head(self.projector(features))

    def forward(self, images: torch.Tensor, return_features: bool = False) -> torch.Tensor | ClassifierOutput:
        features = self.penultimate(images)
        logits = self.classifier(features)
        return ClassifierOutput(logits, features) if return_features else logits

    @classmethod
    def from_classifier(
        cls,
        model: nn.Module,
        num_classes: int | None = None,
        nonneg: str | None = None,
        projector_dims: Sequence[int] | None = None,
        bias: bool = False,
        *,
        nonneg_weights: bool = False,
        input_shape: Sequence[int] | None = None,
    ) -> NonNegativeClassifier:
        """Turn a torchvision, timm or Hugging Face image classifier into a (non-negative) one.

        The model's own head is replaced **in place** by ``nn.Identity`` (timm:
        ``reset_classifier(0)``; torchvision ``fc`` / ``classifier`` / ``heads``; HF
        ``classifier``, whose ``logits`` then hold the features), and the stripped
        model becomes the backbone. ``num_classes`` defaults to the removed head's.

        Examples:
            >>> import torchvision
            >>> resnet = torchvision.models.resnet18(num_classes=10)
            >>> model = NonNegativeClassifier.from_classifier(resnet, nonneg="relu")
            >>> model.feature_dim, model.classifier.out_features
            (512, 10)
        """
        removed_classes, output_field = _strip_classification_head(check_backbone(model))
        return cls(
            model,
            removed_classes if num_classes is None else num_classes,
            nonneg=nonneg,
            projector_dims=projector_dims,
            bias=bias,
            nonneg_weights=nonneg_weights,
            output_field=output_field,
            input_shape=input_shape,
        )


def _strip_classification_head(model: nn.Module) -> tuple[int, OutputField]:
    """Replace ``model``'s classification head by ``nn.Identity``; return (its classes, the feature field)."""
    if callable(getattr(model, "reset_classifier", None)) and isinstance(getattr(model, "num_classes", None), int):
        num_classes = model.num_classes  # timm
        model.reset_classifier(0)
        return num_classes, None
    output_field = "logits" if _is_hf_model(model) else None
    for name in ("fc", "classifier", "heads", "head"):
        head = getattr(model, name, None)
        if isinstance(head, nn.Linear):
            setattr(model, name, nn.Identity())
            return head.out_features, output_field
        if isinstance(head, nn.Sequential) and len(head) and isinstance(head[-1], nn.Linear):
            num_classes = head[-1].out_features
            head[-1] = nn.Identity()
            return num_classes, output_field
    raise ValueError(
        f"cannot find the classification head of {type(model).__name__} (looked for timm reset_classifier() and a "
        "Linear .fc/.classifier/.heads/.head); remove it yourself and pass the backbone to NonNegativeClassifier"
    )


def _is_hf_model(model: nn.Module) -> bool:
    transformers = sys.modules.get("transformers")  # an HF model implies transformers is imported
    return transformers is not None and isinstance(model, transformers.PreTrainedModel)
