"""Read a feature matrix or a label vector saved as ``.pt``, ``.npy`` or ``.safetensors``.

A ``.pt`` file may hold a tensor (``torch.save(features, path)``) or a dict; a
``.safetensors`` file always holds a dict. From a dict the entry named like the kind asked
for (``"features"`` / ``"labels"``) is taken, or the only entry if there is one.

Examples:
    >>> import torch, tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "features.pt")
    >>> torch.save({"features": torch.ones(4, 3)}, path)
    >>> load_array(path, "features").shape
    torch.Size([4, 3])
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["SUPPORTED_SUFFIXES", "load_array"]

SUPPORTED_SUFFIXES = (".pt", ".pth", ".npy", ".safetensors")


def _pick(content: Any, kind: str, path: Path) -> Any:
    if not isinstance(content, Mapping):
        return content
    if kind in content:
        return content[kind]
    if len(content) == 1:
        return next(iter(content.values()))
    raise ValueError(f"{kind} file {path} holds several arrays {sorted(map(str, content))}; name one of them {kind!r}")


def load_array(path: str | Path, kind: str = "features") -> torch.Tensor:
    """Load ``path`` as a CPU tensor; ``kind`` ("features" or "labels") names it in messages and dicts.

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        ValueError: for an unsupported suffix, an unreadable file, or content that is not
            one array.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{kind} file not found: {path}")
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        raise ValueError(f"{kind} file {path} has unsupported type {suffix!r}; expected one of {SUPPORTED_SUFFIXES}")
    try:
        if suffix == ".npy":
            content: Any = np.load(path, allow_pickle=False)
        elif suffix == ".safetensors":
            from safetensors.torch import load_file

            content = load_file(str(path), device="cpu")
        else:
            content = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 -- any reader failure means a corrupt or foreign file
        raise ValueError(f"could not read {kind} file {path}: {error}") from None
    content = _pick(content, kind, path)
    if isinstance(content, np.ndarray):
        if content.dtype.kind not in "biuf":
            raise ValueError(f"{kind} file {path} holds an array of dtype {content.dtype}; expected numbers")
        return torch.from_numpy(np.ascontiguousarray(content))
    if isinstance(content, torch.Tensor):
        return content.detach()
    raise ValueError(f"{kind} file {path} holds a {type(content).__name__}; expected a tensor or an array")
