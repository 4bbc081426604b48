"""Models: image backbones by name, the SimCLR projector, the contrastive model and the NCE classifier.

- :mod:`~ncl_ext.models.backbones` — :func:`build_backbone` from a name registry
  (:func:`register_backbone`), :class:`SmallCNN`, torchvision ResNets with the CIFAR stem;
- :mod:`~ncl_ext.models.features` — :func:`extract_features` from any backbone output,
  :func:`infer_feature_dim`;
- :mod:`~ncl_ext.models.heads` — :func:`projection_mlp`, the SimCLR projector;
- :mod:`~ncl_ext.models.contrastive` — :class:`ContrastiveModel` (backbone -> projector ->
  optional non-negative head), the model of self-supervised NCL;
- :mod:`~ncl_ext.models.classifier` — :class:`NonNegativeClassifier` and
  :class:`NonNegativeLinear`, the models of non-negative cross-entropy (NCE).

Examples:
    >>> import torch
    >>> from ncl_ext.models import ContrastiveModel, build_backbone
    >>> model = ContrastiveModel(build_backbone("small_cnn"), projector_dims=(256, 64), nonneg="relu")
    >>> model(torch.randn(2, 1, 8, 8)).projections.shape
    torch.Size([2, 64])
"""

from ncl_ext.models.backbones import (
    BACKBONES,
    SmallCNN,
    build_backbone,
    register_backbone,
    resnet18_cifar,
    resnet18_imagenet,
    torchvision_resnet,
)
from ncl_ext.models.classifier import ClassifierOutput, NonNegativeClassifier, NonNegativeLinear
from ncl_ext.models.contrastive import ContrastiveModel, ContrastiveOutput
from ncl_ext.models.features import OutputField, extract_features, infer_feature_dim
from ncl_ext.models.heads import projection_mlp

__all__ = [
    "BACKBONES",
    "ClassifierOutput",
    "ContrastiveModel",
    "ContrastiveOutput",
    "NonNegativeClassifier",
    "NonNegativeLinear",
    "OutputField",
    "SmallCNN",
    "build_backbone",
    "extract_features",
    "infer_feature_dim",
    "projection_mlp",
    "register_backbone",
    "resnet18_cifar",
    "resnet18_imagenet",
    "torchvision_resnet",
]
