"""Contrastive and supervised losses in which CL and NCL differ by one argument, ``nonneg``.

Wang, Zhang, Guo, Wang, "Non-negative Contrastive Learning", ICLR 2024 (arXiv:2403.12459):
``nonneg=None`` is plain contrastive learning, ``nonneg="relu"`` (or any mode of
:func:`ncl_ext.nonneg`) applies the non-negative map to the features before the loss.

- :class:`InfoNCELoss` — NT-Xent (SimCLR), optionally gathered over ranks and tiled;
- :class:`SpectralContrastiveLoss` — the loss that is exactly NMF on non-negative features;
- :class:`ClipLoss`, :class:`SigLipLoss` — open_clip's image-text losses;
- :class:`NonNegativeCrossEntropyLoss` — supervised non-negative cross-entropy (NCE);
- :func:`dead_row_fraction` — the share of a batch's rows with no active unit after the map.

Every loss computes in float32 under 16-bit inputs or autocast (gradients arrive in the
inputs' dtype), and a row that is all zero after the map (a sample whose units are all
dead) passes no gradient through the normalisation instead of ``1 / eps``.

Examples:
    >>> import torch
    >>> from ncl_ext.losses import InfoNCELoss
    >>> z1, z2 = torch.randn(8, 16), torch.randn(8, 16)
    >>> cl, ncl = InfoNCELoss(nonneg=None)(z1, z2), InfoNCELoss(nonneg="relu")(z1, z2)
"""

from ncl_ext.losses._normalize import dead_row_fraction
from ncl_ext.losses.clip import ClipLoss, SigLipLoss
from ncl_ext.losses.cross_entropy import NonNegativeCrossEntropyLoss
from ncl_ext.losses.infonce import InfoNCELoss
from ncl_ext.losses.spectral import SpectralContrastiveLoss

__all__ = [
    "ClipLoss",
    "InfoNCELoss",
    "NonNegativeCrossEntropyLoss",
    "SigLipLoss",
    "SpectralContrastiveLoss",
    "dead_row_fraction",
]
