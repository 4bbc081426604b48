"""ncl_ext: non-negative contrastive learning (NCL) for the models you already train.

Wang, Zhang, Guo, Wang, "Non-negative Contrastive Learning", ICLR 2024. A ReLU on the
output features turns contrastive learning into a non-negative matrix factorisation:
features become sparse, disentangled and interpretable at equal or better accuracy.

The public face: :func:`nonneg`, :class:`NonNegative`, :func:`make_nonneg` (any module),
:func:`patch` / :func:`unpatch` / :func:`from_pretrained` (Hugging Face models), and the
sub-packages ``losses``, ``models``, ``analysis``, ``adapters`` (clip, text, graph, hf),
``data``, ``training``, ``recipes``, imported on first use. ``import ncl_ext`` loads torch
and :mod:`ncl_ext.nonneg` only, and installs no hooks.

Vocabulary, the same everywhere:

- a name that already says non-negative and always applies the map takes ``mode=``:
  ``nonneg``, ``NonNegative``, ``make_nonneg``, ``patch``, ``nonneg_clip``,
  ``add_nonneg_head``, ``sparse_encoder``;
- a component where the map is optional takes ``nonneg=``, and ``nonneg=None`` is plain
  contrastive learning (or plain cross-entropy): ``InfoNCELoss``, ``SpectralContrastiveLoss``,
  ``ClipLoss``, ``SigLipLoss``, ``ContrastiveModel``, ``NonNegativeClassifier``,
  ``NonNegativeLinear``, ``GRACE``, ``PyGCLInfoNCE``, and the recipes' ``nonneg`` setting
  (the map of their NCL run);
- losses named ``NCL*`` (and ``NonNegativeCrossEntropyLoss``) default to ``nonneg="relu"``;
  the others default to ``None``.

Examples:
    >>> import torch, ncl_ext
    >>> loss = ncl_ext.losses.InfoNCELoss(temperature=0.2, nonneg="relu")   # NCL
    >>> z1, z2 = torch.randn(8, 16), torch.randn(8, 16)
    >>> bool(loss(z1, z2) > 0)
    True
"""

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

from ncl_ext.nonneg import MODES, NON_NEGATIVE_MODES, NonNegative, NonNegativeWrapper, make_nonneg, nonneg

__all__ = [
    "MODES",
    "NON_NEGATIVE_MODES",
    "NonNegative",
    "NonNegativeWrapper",
    "make_nonneg",
    "nonneg",
    "patch",
    "unpatch",
    "from_pretrained",
    "enable_auto_restore",
    "losses",
    "models",
    "analysis",
    "adapters",
    "distributed",
]

# Sub-packages are imported on first use, so `import ncl_ext` stays light (torch only)
# and optional dependencies are needed only by what you call.
_LAZY_SUBMODULES = {"losses", "models", "analysis", "adapters", "distributed", "training", "data", "recipes"}
# The HF adapter's functions, imported on first use too: importing ncl_ext touches no hook.
_HF_FUNCTIONS = {"patch", "unpatch", "from_pretrained", "enable_auto_restore"}

if TYPE_CHECKING:
    from ncl_ext.adapters.hf import enable_auto_restore, from_pretrained, patch, unpatch


def __getattr__(name: str) -> Any:
    if name in _LAZY_SUBMODULES:
        return importlib.import_module(f"ncl_ext.{name}")
    if name in _HF_FUNCTIONS:
        return getattr(importlib.import_module("ncl_ext.adapters.hf"), name)
    raise AttributeError(f"module 'ncl_ext' has no attribute {name!r}")
