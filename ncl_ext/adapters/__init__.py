"""Adapters: one bridge per outside ecosystem, imported on first use.

- :mod:`~ncl_ext.adapters.hf` — Hugging Face ``transformers`` models (:func:`ncl_ext.patch`);
- :mod:`~ncl_ext.adapters.clip` — open_clip models and HF CLIP / SigLIP behind open_clip's interface;
- :mod:`~ncl_ext.adapters.text` — sentence-transformers: the non-negative head, NCL losses, sparse encoders;
- :mod:`~ncl_ext.adapters.text_search` — sentence-transformers' evaluators and search engines
  (Qdrant, Seismic) on embeddings computed once;
- :mod:`~ncl_ext.adapters.graph` — PyTorch Geometric: GRACE with the non-negative head.

Each is imported when first touched (``ncl_ext.adapters.clip.nonneg_clip`` works after
``import ncl_ext``), so only the ecosystems you use need to be installed.

Examples:
    >>> import ncl_ext
    >>> ncl_ext.adapters.graph.GRACE.__name__
    'GRACE'
"""

import importlib
from typing import Any

__all__ = ["clip", "graph", "hf", "text", "text_search"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        return importlib.import_module(f"ncl_ext.adapters.{name}")
    raise AttributeError(f"module 'ncl_ext.adapters' has no attribute {name!r}; the adapters are {__all__}")


def __dir__() -> list[str]:
    return sorted(__all__)
