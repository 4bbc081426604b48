"""ncl_ext: non-negative contrastive learning (NCL) for the models you already train.

Wang, Zhang, Guo, Wang, "Non-negative Contrastive Learning", ICLR 2024. A ReLU on the
output features turns contrastive learning into a non-negative matrix factorisation:
features become sparse, disentangled and interpretable at equal or better accuracy.

Examples:
    >>> import torch, ncl_ext
    >>> loss = ncl_ext.losses.InfoNCELoss(temperature=0.2, nonneg="relu")   # NCL
    >>> z1, z2 = torch.randn(8, 16), torch.randn(8, 16)
    >>> bool(loss(z1, z2) > 0)
    True
"""

import importlib
from typing import Any

__version__ = "0.1.0"

# Importing the HF adapter is cheap (it does not import transformers) and installs the hook
# that restores the head whenever a patched checkpoint is loaded, even by plain AutoModel.
from ncl_ext.adapters.hf import from_pretrained, patch, unpatch
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
    "losses",
    "analysis",
    "adapters",
    "distributed",
]

# Sub-packages are imported on first use, so `import ncl_ext` stays light (torch only)
# and optional dependencies are needed only by what you call.
_LAZY_SUBMODULES = {"losses", "analysis", "adapters", "distributed", "training", "data", "recipes"}


def __getattr__(name: str) -> Any:
    if name in _LAZY_SUBMODULES:
        return importlib.import_module(f"ncl_ext.{name}")
    raise AttributeError(f"module 'ncl_ext' has no attribute {name!r}")
