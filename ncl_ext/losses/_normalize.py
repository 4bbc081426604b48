"""The non-negative map followed by L2 normalisation, and what it does with dead rows.

With ReLU features (Wang, Zhang, Guo, Wang, "Non-negative Contrastive Learning", ICLR
2024, arXiv:2403.12459) a sample can have every unit dead: its row of ``relu(z)`` is zero
and has no direction to normalise. ``F.normalize(x, eps)`` divides such a row by ``eps``,
whose Jacobian ``I / eps`` multiplies the row's gradient by ``1 / eps``: with ``rep_relu``
(whose gradient reaches negative pre-activations) one all-zero row in a batch of 256 gets
a gradient about a million times the live rows' median (``benchmarks/losses.py``).

So here a row is **dead** when its L2 norm is below :data:`NORM_EPS` (after the map), and a
dead row becomes exactly the zero vector and passes exactly zero gradient back. In the
cosine-similarity losses its similarities are all 0, it adds a constant to the loss and
the sample is left out of the update. Live rows are divided by their norm, with the
values and gradients of ``F.normalize``. The scale-invariance of the normalisation still
gives a live row of norm ``r`` a gradient proportional to ``1 / r``; only rows below
``NORM_EPS`` are cut off.

:func:`dead_row_fraction` tells a training loop how many rows of a batch are dead;
:func:`check_not_all_dead` is the losses' guard against a batch with no live row, whose
loss is a constant with zero gradient.

Examples:
    >>> import torch
    >>> z = torch.tensor([[3.0, -1.0, 4.0], [-1.0, -2.0, -0.5]], requires_grad=True)
    >>> u = nonneg_normalize(z, "rep_relu")
    >>> u
    tensor([[0.6000, 0.0000, 0.8000],
            [0.0000, 0.0000, 0.0000]], grad_fn=<DivBackward0>)
    >>> u.sum().backward()
    >>> bool(z.grad[1].any())                       # the dead row: no gradient
    False
    >>> dead_row_fraction(z, mode="relu")
    0.5
"""

from __future__ import annotations

import torch

from ncl_ext._checks import check_features, check_nonneg_mode, check_positive
from ncl_ext.nonneg import nonneg

#: A row whose L2 norm (after the non-negative map) is below this is dead.
NORM_EPS = 1e-6


def nonneg_normalize(features: torch.Tensor, mode: str | None) -> torch.Tensor:
    """``nonneg(features, mode)`` with each row divided by its L2 norm; dead rows become zero.

    A row with norm below :data:`NORM_EPS` comes out as the zero vector and receives exactly
    zero gradient; other rows equal ``F.normalize`` in value and gradient. NaN rows stay NaN.
    """
    mapped = nonneg(features, mode)
    norms = mapped.norm(dim=1, keepdim=True)
    # Dividing a dead row by +inf gives exactly 0, and so does its gradient (g / inf), with no
    # 0 * inf = NaN on the way back; the comparison keeps a NaN norm (a NaN row) NaN.
    return mapped / torch.where(norms < NORM_EPS, torch.inf, norms)


def dead_row_fraction(features: torch.Tensor, mode: str | None = None, eps: float = NORM_EPS) -> float:
    """The share of rows of ``nonneg(features, mode)`` whose L2 norm is below ``eps``.

    A cheap health check for a training loop (one pass over the batch, no gradient, one
    number copied to the host): the contrastive losses of :mod:`ncl_ext.losses` ignore
    dead rows (see the module docstring), so a large share means most of the batch
    trains nothing, typically because the non-negative head's units died.

    Args:
        features: ``(batch, dim)`` floating-point features. Pass what the loss receives:
            the model's outputs, with ``mode`` the loss's ``nonneg`` argument, or features that
            are already non-negative with ``mode=None``.
        mode: the non-negative map to apply first (``None``: none).
        eps: the norm below which a row is dead, > 0 (default: the losses' threshold).

    Examples:
        >>> import torch
        >>> z = torch.tensor([[1.0, -2.0], [-1.0, -3.0], [0.0, 0.0], [0.5, 0.5]])
        >>> dead_row_fraction(z, mode="relu")
        0.5
    """
    check_features(features, "features", check_finite=False)
    mode = check_nonneg_mode(mode)
    eps = check_positive(eps, "eps")
    with torch.no_grad():
        norms = nonneg(features.detach(), mode).float().norm(dim=1)
        return float((norms < eps).float().mean())


def check_not_all_dead(features: torch.Tensor, name: str, mode: str | None) -> None:
    """Raise a ValueError if every row of ``features`` has L2 norm below :data:`NORM_EPS`.

    ``features`` are the rows as the loss uses them (after the map and normalisation). Such
    a batch gives a constant loss and zero gradient, so training would go on silently
    without learning anything.
    """
    if not bool((features.detach().norm(dim=1) >= NORM_EPS).any()):
        raise ValueError(
            f"every row of {name} is dead (L2 norm < {NORM_EPS:g} after nonneg={mode!r}): the loss is "
            "constant and has no gradient. The features have collapsed to zero (all units of the "
            "non-negative head dead); lower the learning rate or use nonneg='rep_relu'. "
            "Pass check_finite=False to the loss to skip this check."
        )
