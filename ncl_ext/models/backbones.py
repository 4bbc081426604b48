"""Image backbones by name: a registry of factories that return ``(N, D)`` feature extractors.

The recipes name their backbone with a string (``backbone=resnet18_cifar`` on the command
line); :func:`build_backbone` turns it into a module whose classification head is removed.
Built in: :class:`SmallCNN` (the 8x8 digits of the offline default), torchvision ResNets
(with the CIFAR stem of SimCLR and of Wang, Zhang, Guo, Wang, "Non-negative Contrastive
Learning", ICLR 2024, for ``*_cifar``), any timm model (``timm:<name>``) and a local Hugging
Face vision encoder (``hf:<folder>``). Add your own with :func:`register_backbone`.

Examples:
    >>> import torch
    >>> build_backbone("small_cnn")(torch.randn(2, 1, 8, 8)).shape
    torch.Size([2, 128])
    >>> @register_backbone("tiny_mlp")
    ... def tiny_mlp(in_channels=1):
    ...     return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(in_channels * 64, 16))
    >>> build_backbone("tiny_mlp")(torch.randn(2, 1, 8, 8)).shape
    torch.Size([2, 16])
    >>> _ = BACKBONES.pop("tiny_mlp")
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = [
    "BACKBONES",
    "SmallCNN",
    "build_backbone",
    "register_backbone",
    "resnet18_cifar",
    "resnet18_imagenet",
    "torchvision_resnet",
]


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


# ------------------------------------------------------------------ the registry

#: Backbone name -> factory ``(in_channels=..., pretrained=..., **kwargs) -> nn.Module``.
BACKBONES: dict[str, Callable[..., nn.Module]] = {}
#: Name prefix -> factory ``(rest_of_name, in_channels=..., pretrained=..., **kwargs)``: ``timm:``, ``hf:``.
_PREFIXED: dict[str, Callable[..., nn.Module]] = {}


def register_backbone(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator: make ``factory(in_channels=..., **kwargs)`` buildable as ``build_backbone(name)``.

    ``pretrained=True`` reaches the factory as a keyword only when asked for.
    A name ending in ``:`` registers a prefix: ``factory(rest, in_channels=..., **kwargs)``
    receives what follows it (``timm:resnet50`` -> ``"resnet50"``).
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"name={name!r}; expected a non-empty string")

    def register(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        (_PREFIXED if name.endswith(":") else BACKBONES)[name] = factory
        return factory

    return register


def build_backbone(name: str, in_channels: int | None = None, pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """Build a feature backbone (classification head removed) from its registered name.

    Args:
        name: a key of :data:`BACKBONES` (``small_cnn``, ``small_cnn_signed``, ``resnet18``,
            ``resnet18_cifar``, ... ``resnet152_cifar``) or a prefixed name: ``timm:<model>``
            (``timm.create_model(<model>, num_classes=0)``) or ``hf:<folder>`` (a local Hugging
            Face checkpoint loaded with ``AutoModel``, never downloaded).
        in_channels: image channels; each factory has its own default (1 for ``small_cnn``).
        pretrained: load pretrained weights (torchvision / timm may download them).
        kwargs: passed to the factory (:class:`SmallCNN` options, ``timm.create_model``, ...).
    """
    options = {**kwargs, **({"pretrained": True} if pretrained else {})}
    if in_channels is not None:
        options["in_channels"] = in_channels
    if isinstance(name, str) and name in BACKBONES:
        return BACKBONES[name](**options)
    prefix, _, rest = name.partition(":") if isinstance(name, str) else ("", "", "")
    if rest and f"{prefix}:" in _PREFIXED:
        return _PREFIXED[f"{prefix}:"](rest, **options)
    known = sorted(BACKBONES) + [f"{prefix}<name>" for prefix in sorted(_PREFIXED)]
    raise ValueError(f"backbone name={name!r} is unknown; expected one of {known}")


def _no_pretrained_weights(name: str, pretrained: bool) -> None:
    if pretrained:
        raise ValueError(f"backbone {name!r} has no pretrained weights; use pretrained=False")


@register_backbone("small_cnn")
def _small_cnn(in_channels: int = 1, pretrained: bool = False, **kwargs: Any) -> nn.Module:
    _no_pretrained_weights("small_cnn", pretrained)
    return SmallCNN(in_channels=in_channels, **kwargs)


@register_backbone("small_cnn_signed")
def _small_cnn_signed(in_channels: int = 1, pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """The small CNN with signed features: its last block ends at BatchNorm (see :class:`SmallCNN`)."""
    _no_pretrained_weights("small_cnn_signed", pretrained)
    return SmallCNN(in_channels=in_channels, final_relu=False, **kwargs)


def _register_resnet(arch: str, cifar_stem: bool) -> None:
    def factory(in_channels: int = 3, pretrained: bool = False, **kwargs: Any) -> nn.Module:
        if kwargs:
            name = arch + ("_cifar" if cifar_stem else "")
            raise ValueError(f"backbone {name} takes no extra options; got {sorted(kwargs)}")
        return torchvision_resnet(arch, cifar_stem, in_channels, "DEFAULT" if pretrained else None)

    register_backbone(arch + ("_cifar" if cifar_stem else ""))(factory)


for _arch in _TORCHVISION_RESNETS:
    _register_resnet(_arch, cifar_stem=False)
    _register_resnet(_arch, cifar_stem=True)


@register_backbone("timm:")
def _timm(model_name: str, in_channels: int = 3, pretrained: bool = False, **kwargs: Any) -> nn.Module:
    import timm

    if not timm.is_model(model_name):
        raise ValueError(f"backbone 'timm:{model_name}': timm has no model {model_name!r} (see timm.list_models())")
    return timm.create_model(model_name, pretrained=pretrained, num_classes=0, in_chans=in_channels, **kwargs)


@register_backbone("hf:")
def _hugging_face(folder: str, in_channels: int | None = None, pretrained: bool = False, **kwargs: Any) -> nn.Module:
    from transformers import AutoModel

    path = Path(folder).expanduser()
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"backbone 'hf:{folder}': expected a local Hugging Face model folder with config.json at {path} "
            "(hf: backbones are never downloaded; create one with model.save_pretrained(folder))"
        )
    model = AutoModel.from_pretrained(path, local_files_only=True, **kwargs)
    expected_channels = getattr(model.config, "num_channels", in_channels)
    if in_channels is not None and expected_channels != in_channels:
        raise ValueError(
            f"backbone 'hf:{folder}' takes {expected_channels}-channel images, not in_channels={in_channels}"
        )
    return model
