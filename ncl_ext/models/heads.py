"""The SimCLR projector: the MLP between a backbone's features and the contrastive loss.

Examples:
    >>> [type(layer).__name__ for layer in projection_mlp(512, (2048, 256))]
    ['Linear', 'BatchNorm1d', 'ReLU', 'Linear']
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

__all__ = ["check_dims", "projection_mlp"]


def projection_mlp(in_dim: int, dims: Sequence[int]) -> nn.Module:
    """The SimCLR projector: ``Linear-BN-ReLU`` for each hidden size, then a final ``Linear``.

    ``dims`` lists the hidden sizes then the output size: ``(2048, 256)`` on a 512-d
    ResNet-18 is the paper's CIFAR projector 512 -> 2048 -> 256 and ``(16384, 2048)`` its
    ImageNet-100 one. ``()`` returns ``nn.Identity()`` (no projector).

    Examples:
        >>> [type(layer).__name__ for layer in projection_mlp(512, (2048, 256))]
        ['Linear', 'BatchNorm1d', 'ReLU', 'Linear']
    """
    dims = check_dims(dims, "projector_dims")
    if not dims:
        return nn.Identity()
    layers: list[nn.Module] = []
    width = in_dim
    for hidden in dims[:-1]:
        layers += [nn.Linear(width, hidden, bias=False), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True)]
        width = hidden
    layers.append(nn.Linear(width, dims[-1]))
    return nn.Sequential(*layers)


def check_dims(dims: Sequence[int] | None, argument: str) -> tuple[int, ...]:
    if dims is None:
        return ()
    if isinstance(dims, (str, bytes)) or not isinstance(dims, Sequence):
        raise ValueError(f"{argument}={dims!r}; expected a sequence of positive layer sizes, e.g. (2048, 256)")
    if any(isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in dims):
        raise ValueError(f"{argument}={tuple(dims)!r}; expected positive integer layer sizes")
    return tuple(dims)
