"""Vision adapter: non-negative contrastive models and classifiers around any image backbone.

Wang, Zhang, Guo, Wang, "Non-negative Contrastive Learning", ICLR 2024
(arXiv:2403.12459). Self-supervised NCL is SimCLR with one change: the projector's
output passes through a non-negative map (:class:`~ncl_ext.nonneg.NonNegative`) before
the loss. Its supervised analogue, non-negative cross-entropy (NCE), makes the features
that feed the linear classifier, and the class weights, non-negative.

- :class:`ContrastiveModel`: backbone -> MLP projector -> optional non-negative head;
  returns the backbone features ``h`` (for linear probes) and the projections ``z``
  (for the loss and the sparsity / semantic-consistency analysis).
- :class:`NonNegativeClassifier`: backbone -> optional MLP projector -> optional
  non-negative head -> bias-free linear classifier; the paper's four variants (CE, NCE,
  CE + MLP, NCE + MLP) come from :func:`classifier_variant`.
- Backbones: torchvision ResNets (:func:`resnet18_cifar`, :func:`resnet18_imagenet`),
  any timm model, Hugging Face vision encoders, :class:`SmallCNN` for 8x8 digits, or any
  module that returns an ``(N, D)`` tensor. :func:`build_backbone` builds one by name.

The paper's settings: ResNet-18 with a 512 -> 2048 -> 256 projector on CIFAR (CIFAR
stem) and 512 -> 16384 -> 2048 on ImageNet-100.

Examples:
    >>> import torch
    >>> model = ContrastiveModel(SmallCNN(), projector_dims=(256, 64), nonneg="relu")
    >>> out = model(torch.randn(4, 1, 8, 8))
    >>> out.features.shape, out.projections.shape, bool((out.projections >= 0).all())
    (torch.Size([4, 128]), torch.Size([4, 64]), True)
"""

from __future__ import annotations

import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn

from ncl_ext.nonneg import NonNegative, check_mode

__all__ = [
    "CLASSIFIER_VARIANTS",
    "ClassifierOutput",
    "ContrastiveModel",
    "ContrastiveOutput",
    "NonNegativeClassifier",
    "SmallCNN",
    "build_backbone",
    "classifier_variant",
    "extract_features",
    "infer_feature_dim",
    "projection_mlp",
    "resnet18_cifar",
    "resnet18_imagenet",
    "torchvision_resnet",
    "variant_options",
]

#: Which part of a backbone's output holds the features: a dict / ``ModelOutput`` key,
#: a tuple index, or ``None`` (a Tensor, or HF ``pooler_output`` / ``last_hidden_state``).
OutputField = str | int | None

#: The rows of the paper's supervised table, in order.
CLASSIFIER_VARIANTS: tuple[str, ...] = ("ce", "nce", "ce_mlp", "nce_mlp")


class ContrastiveOutput(NamedTuple):
    """What :class:`ContrastiveModel` returns."""

    features: torch.Tensor  #: backbone features ``h``, shape ``(N, feature_dim)``
    projections: torch.Tensor  #: projector outputs ``z`` (non-negative under NCL), ``(N, projection_dim)``


class ClassifierOutput(NamedTuple):
    """What :class:`NonNegativeClassifier` returns with ``return_features=True``."""

    logits: torch.Tensor  #: ``(N, num_classes)``
    features: torch.Tensor  #: the penultimate features feeding the classifier (after the head)


# --------------------------------------------------------------------------- backbones


class SmallCNN(nn.Module):
    """A ~93k-parameter CNN for tiny images (the 8x8 digits of the offline default).

    Three 3x3 conv-BN-ReLU blocks (a 2x2 max-pool after the second) and global average
    pooling, so it accepts any image size and returns ``(N, widths[-1])`` features.

    With ``final_relu=False`` the last block ends at its BatchNorm, so the pooled
    features are signed (as a transformer's are). That matters for NCE: the pooled
    features of a ReLU-ended CNN (this default, torchvision ResNets) are already
    non-negative, so there NCE without a projector computes exactly what CE does.

    Examples:
        >>> SmallCNN()(torch.randn(2, 1, 8, 8)).shape
        torch.Size([2, 128])
    """

    def __init__(self, in_channels: int = 1, widths: Sequence[int] = (32, 64, 128), final_relu: bool = True) -> None:
        super().__init__()
        if len(widths) != 3 or any(int(w) < 1 for w in widths):
            raise ValueError(f"widths={tuple(widths)!r}; expected three positive channel counts")
        first, second, third = (int(w) for w in widths)
        last_block = _conv_bn_relu(second, third)
        self.layers = nn.Sequential(
            *_conv_bn_relu(in_channels, first),
            *_conv_bn_relu(first, second),
            nn.MaxPool2d(2),
            *(last_block if final_relu else last_block[:-1]),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.num_features = third
        self.input_shape = (in_channels, 8, 8)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.layers(images)


def _conv_bn_relu(in_channels: int, out_channels: int) -> list[nn.Module]:
    return [
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    ]


_TORCHVISION_RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")


def torchvision_resnet(
    arch: str = "resnet18", cifar_stem: bool = False, in_channels: int = 3, weights: str | None = None
) -> nn.Module:
    """A torchvision ResNet without its ``fc`` layer, returning ``(N, 512)`` (or 2048) features.

    Args:
        arch: ``resnet18``, ``resnet34``, ``resnet50``, ``resnet101`` or ``resnet152``.
        cifar_stem: the CIFAR stem of SimCLR on 32 px images (and of the paper): a 3x3
            stride-1 first convolution and no max-pool, instead of 7x7 stride 2 + max-pool.
        in_channels: image channels (the first convolution is rebuilt when not 3).
        weights: torchvision weights name (e.g. ``"DEFAULT"``, downloads); ``None``: random init.
    """
    import torchvision

    if arch not in _TORCHVISION_RESNETS:
        raise ValueError(f"arch={arch!r}; expected one of {_TORCHVISION_RESNETS}")
    model = getattr(torchvision.models, arch)(weights=weights)
    if cifar_stem:
        model.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
        model.maxpool = nn.Identity()
    elif in_channels != 3:
        model.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
    model.fc = nn.Identity()
    return model


def resnet18_cifar(in_channels: int = 3) -> nn.Module:
    """ResNet-18 with the CIFAR stem (3x3 stride-1 conv1, no max-pool), ``fc`` removed: ``(N, 512)``.

    Examples:
        >>> resnet18_cifar()(torch.randn(2, 3, 32, 32)).shape
        torch.Size([2, 512])
    """
    return torchvision_resnet("resnet18", cifar_stem=True, in_channels=in_channels)


def resnet18_imagenet(in_channels: int = 3, weights: str | None = None) -> nn.Module:
    """The standard ResNet-18 (7x7 stride-2 conv1 + max-pool), ``fc`` removed: ``(N, 512)``."""
    return torchvision_resnet("resnet18", cifar_stem=False, in_channels=in_channels, weights=weights)


_BACKBONE_NAMES = (
    "'small_cnn', 'small_cnn_signed', 'resnet18_cifar', 'resnet18' (also 34/50/101/152, '_cifar'), 'timm:<name>', 'hf:<local folder>'"
)


def build_backbone(name: str, in_channels: int | None = None, pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """Build a feature backbone (classification head removed) from a recipe's name string.

    Args:
        name: ``"small_cnn"``; ``"small_cnn_signed"`` (the same CNN with signed
            features: its last block ends at BatchNorm, see :class:`SmallCNN`);
            ``"resnet18_cifar"`` / ``"resnet18"`` (torchvision; also resnet34/50/101/152,
            with ``_cifar`` for the CIFAR stem); ``"timm:<model>"``
            (``timm.create_model(<model>, num_classes=0)``); ``"hf:<folder>"`` (a local
            Hugging Face checkpoint loaded with ``AutoModel``, never downloaded).
        in_channels: image channels; default 1 for ``small_cnn`` (digits), 3 otherwise.
        pretrained: load pretrained weights (torchvision / timm may download them).
        kwargs: passed to :class:`SmallCNN`, ``timm.create_model`` or ``AutoModel.from_pretrained``.

    Examples:
        >>> build_backbone("small_cnn")(torch.randn(2, 1, 8, 8)).shape
        torch.Size([2, 128])
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"backbone name={name!r}; expected one of {_BACKBONE_NAMES}")
    if name in ("small_cnn", "small_cnn_signed"):
        if name == "small_cnn_signed":
            kwargs = {**kwargs, "final_relu": False}
        return SmallCNN(in_channels=1 if in_channels is None else in_channels, **kwargs)
    channels = 3 if in_channels is None else in_channels
    resnet = re.fullmatch(r"(resnet\d+)(_cifar|_imagenet)?", name)
    if resnet and resnet.group(1) in _TORCHVISION_RESNETS:
        if kwargs:
            raise ValueError(f"backbone {name!r} takes no extra options; got {sorted(kwargs)}")
        weights = "DEFAULT" if pretrained else None
        return torchvision_resnet(resnet.group(1), resnet.group(2) == "_cifar", channels, weights)
    if name.startswith("timm:"):
        import timm

        model_name = name.removeprefix("timm:")
        if not timm.is_model(model_name):
            raise ValueError(f"backbone {name!r}: timm has no model {model_name!r} (see timm.list_models())")
        return timm.create_model(model_name, pretrained=pretrained, num_classes=0, in_chans=channels, **kwargs)
    if name.startswith("hf:"):
        from transformers import AutoModel

        folder = Path(name.removeprefix("hf:")).expanduser()
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(
                f"backbone {name!r}: expected a local Hugging Face model folder with config.json at {folder} "
                "(hf: backbones are never downloaded; create one with model.save_pretrained(folder))"
            )
        model = AutoModel.from_pretrained(folder, local_files_only=True, **kwargs)
        expected_channels = getattr(model.config, "num_channels", channels)
        if in_channels is not None and expected_channels != in_channels:
            raise ValueError(
                f"backbone {name!r} takes {expected_channels}-channel images, not in_channels={in_channels}"
            )
        return model
    raise ValueError(f"backbone name={name!r} is unknown; expected one of {_BACKBONE_NAMES}")


# ------------------------------------------------------------------ feature extraction


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
            output = output[output_field]
        except (KeyError, IndexError, TypeError):
            raise ValueError(
                f"output_field={output_field!r} is not in the backbone's output ({_describe(output)})"
            ) from None
        return _as_feature_matrix(output)
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


def projection_mlp(in_dim: int, dims: Sequence[int]) -> nn.Module:
    """The SimCLR projector: ``Linear-BN-ReLU`` for each hidden size, then a final ``Linear``.

    ``dims`` lists the hidden sizes then the output size: ``(2048, 256)`` on a 512-d
    ResNet-18 is the paper's CIFAR projector 512 -> 2048 -> 256 and ``(16384, 2048)`` its
    ImageNet-100 one. ``()`` returns ``nn.Identity()`` (no projector).

    Examples:
        >>> [type(layer).__name__ for layer in projection_mlp(512, (2048, 256))]
        ['Linear', 'BatchNorm1d', 'ReLU', 'Linear']
    """
    dims = _check_dims(dims, "projector_dims")
    if not dims:
        return nn.Identity()
    layers: list[nn.Module] = []
    width = in_dim
    for hidden in dims[:-1]:
        layers += [nn.Linear(width, hidden, bias=False), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True)]
        width = hidden
    layers.append(nn.Linear(width, dims[-1]))
    return nn.Sequential(*layers)


def _check_dims(dims: Sequence[int] | None, argument: str) -> tuple[int, ...]:
    if dims is None:
        return ()
    if isinstance(dims, (str, bytes)) or not isinstance(dims, Sequence):
        raise ValueError(f"{argument}={dims!r}; expected a sequence of positive layer sizes, e.g. (2048, 256)")
    if any(isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in dims):
        raise ValueError(f"{argument}={tuple(dims)!r}; expected positive integer layer sizes")
    return tuple(dims)


def _check_backbone(backbone: Any) -> nn.Module:
    if not isinstance(backbone, nn.Module):
        raise ValueError(f"backbone must be a torch.nn.Module, got {type(backbone).__name__}")
    return backbone


def _feature_dim(
    backbone: nn.Module, feature_dim: int | None, output_field: OutputField, input_shape: Sequence[int] | None
) -> int:
    if feature_dim is None:
        return infer_feature_dim(backbone, output_field, input_shape)
    if isinstance(feature_dim, bool) or not isinstance(feature_dim, int) or feature_dim < 1:
        raise ValueError(f"feature_dim={feature_dim!r}; expected a positive int (or None to infer it)")
    return feature_dim


# --------------------------------------------------------------------------- SSL model


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
        self.backbone = _check_backbone(backbone)
        self.output_field = output_field
        self.feature_dim = _feature_dim(backbone, feature_dim, output_field, input_shape)
        dims = _check_dims(projector_dims, "projector_dims")
        self.projection_dim = dims[-1] if dims else self.feature_dim
        self.projector = projection_mlp(self.feature_dim, dims)
        self.head = NonNegative(nonneg) if nonneg is not None else nn.Identity()

    def forward(self, images: torch.Tensor) -> ContrastiveOutput:
        features = extract_features(self.backbone(images), self.output_field)
        return ContrastiveOutput(features, self.head(self.projector(features)))


# ------------------------------------------------------------------ supervised model


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
    (``W+ = NonNegative(nonneg)(W)``, initialised as ``|W|``); :func:`variant_options`
    sets it for the ``nce`` rows. This is what gives NCE its effect on backbones whose
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
        self.backbone = _check_backbone(backbone)
        self.output_field = output_field
        self.feature_dim = _feature_dim(backbone, feature_dim, output_field, input_shape)
        dims = _check_dims(projector_dims, "projector_dims")
        self.projector = projection_mlp(self.feature_dim, dims)
        self.head = NonNegative(nonneg) if nonneg is not None else nn.Identity()
        self.classifier = nn.Linear(dims[-1] if dims else self.feature_dim, num_classes, bias=bias)
        if self.nonneg_weights:
            with torch.no_grad():  # start with every class weight active (relu would kill half of them)
                self.classifier.weight.abs_()

    def class_weights(self) -> torch.Tensor:
        """The ``(num_classes, D)`` weights the logits use (non-negative with ``nonneg_weights``)."""
        weight = self.classifier.weight
        return self.head(weight) if self.nonneg_weights else weight

    def penultimate(self, images: torch.Tensor) -> torch.Tensor:
        """The features that feed the classifier (non-negative under NCE)."""
        features = extract_features(self.backbone(images), self.output_field)
        return self.head(self.projector(features))

    def forward(self, images: torch.Tensor, return_features: bool = False) -> torch.Tensor | ClassifierOutput:
        features = self.penultimate(images)
        logits = nn.functional.linear(features, self.class_weights(), self.classifier.bias)
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
        removed_classes, output_field = _strip_classification_head(_check_backbone(model))
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


def variant_options(
    variant: str, mode: str = "relu", projector_dims: Sequence[int] = (2048, 512), nonneg_weights: bool = True
) -> dict[str, Any]:
    """``nonneg``, ``projector_dims`` and ``nonneg_weights`` for a row of the paper's supervised table.

    ``"ce"``: plain features and weights; ``"nce"``: ``mode`` on the features and, with
    ``nonneg_weights`` (the paper's formulation, see :class:`NonNegativeClassifier`), on
    the class weights; ``"ce_mlp"`` / ``"nce_mlp"``: the same after an MLP projector with
    ``projector_dims``. Pass the result to :class:`NonNegativeClassifier` or
    :meth:`NonNegativeClassifier.from_classifier`.

    Examples:
        >>> variant_options("nce_mlp")
        {'nonneg': 'relu', 'projector_dims': (2048, 512), 'nonneg_weights': True}
    """
    if variant not in CLASSIFIER_VARIANTS:
        raise ValueError(f"variant={variant!r}; expected one of {CLASSIFIER_VARIANTS}")
    check_mode(mode, "mode")
    nce = variant.startswith("nce")
    return {
        "nonneg": mode if nce else None,
        "projector_dims": tuple(projector_dims) if variant.endswith("_mlp") else None,
        "nonneg_weights": nce and bool(nonneg_weights),
    }


def classifier_variant(
    variant: str,
    backbone: nn.Module,
    num_classes: int,
    mode: str = "relu",
    projector_dims: Sequence[int] = (2048, 512),
    nonneg_weights: bool = True,
    **kwargs: Any,
) -> NonNegativeClassifier:
    """Build one of the paper's four classifiers (``ce``, ``nce``, ``ce_mlp``, ``nce_mlp``) on ``backbone``.

    ``kwargs`` go to :class:`NonNegativeClassifier` (``bias``, ``feature_dim``, ...).
    Give each variant its own backbone instance.

    Examples:
        >>> models = {v: classifier_variant(v, SmallCNN(), 10, projector_dims=(256, 64)) for v in CLASSIFIER_VARIANTS}
        >>> [models[v].classifier.in_features for v in CLASSIFIER_VARIANTS]
        [128, 128, 64, 64]
    """
    options = variant_options(variant, mode, projector_dims, nonneg_weights)
    return NonNegativeClassifier(backbone, num_classes, **options, **kwargs)
