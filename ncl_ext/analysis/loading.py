"""Read a feature matrix or a label vector saved as ``.pt``, ``.npy`` or ``.safetensors``; save a run's features.

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

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["RUN_FEATURES", "SUPPORTED_SUFFIXES", "load_array", "load_run_features", "save_run_features"]

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
    if path.stat().st_size == 0:
        raise ValueError(f"{kind} file {path} is empty")
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
        raise ValueError(f"could not read {kind} file {path}: {_reason(error, suffix)}") from None
    content = _pick(content, kind, path)
    if isinstance(content, np.ndarray):
        if content.dtype.kind not in "biuf":
            raise ValueError(f"{kind} file {path} holds an array of dtype {content.dtype}; expected numbers")
        return torch.from_numpy(np.ascontiguousarray(content))
    if isinstance(content, torch.Tensor):
        return content.detach()
    raise ValueError(f"{kind} file {path} holds a {type(content).__name__}; expected a tensor or an array")


def _reason(error: Exception, suffix: str) -> str:
    """The first line of a reader's error; for ``.pt`` files, without torch's advice to unpickle untrusted data."""
    text = str(error).strip()
    if suffix in (".pt", ".pth") and "weights_only" in text:
        return (
            "not a tensor file that loads with torch.load(weights_only=True) (only tensors and plain containers "
            "are read; arbitrary pickles are refused)"
        )
    return text.splitlines()[0] if text else type(error).__name__


#: The file in a run folder that holds what the CL-vs-NCL comparison figure needs.
RUN_FEATURES = "run_features.safetensors"


def save_run_features(
    folder: str | Path,
    features: torch.Tensor,
    labels: torch.Tensor | None = None,
    *,
    ea_order: torch.Tensor | None = None,
    images: torch.Tensor | Callable[[int], torch.Tensor] | None = None,
    texts: Sequence[str] | None = None,
    num_dims: int = 4,
    per_dim: int = 6,
) -> Path:
    """Save a run's evaluation features and its top-activating samples for :func:`~ncl_ext.analysis.plot_comparison`.

    Writes ``folder/run_features.safetensors`` (``features``, ``labels``, the ``num_dims`` first
    dimensions of ``ea_order`` (default: the expected-activation order of ``features``), the
    indices of their ``per_dim`` most activating samples and, given ``images`` (a ``(N, C, H, W)``
    tensor, or a function ``index -> (C, H, W)`` image that decodes only those), those images)
    and, given ``texts``, ``folder/top_texts.json``.
    """
    from safetensors.torch import save_file

    from ncl_ext.analysis.plots import top_activating_samples
    from ncl_ext.analysis.selection import expected_activation_order

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    features = features.detach().float().cpu().contiguous()
    order = expected_activation_order(features) if ea_order is None else torch.as_tensor(ea_order)
    dims, top = top_activating_samples(features, order[:num_dims], per_dim=min(per_dim, features.shape[0]))
    tensors = {"features": features, "top_dims": dims.contiguous(), "top_samples": top.contiguous()}
    if labels is not None:
        tensors["labels"] = torch.as_tensor(labels).long().cpu().contiguous()
    if images is not None:
        pick = images.__getitem__ if isinstance(images, torch.Tensor) else images
        chosen = torch.stack([pick(int(i)) for i in top.flatten()])
        tensors["top_images"] = chosen.detach().cpu().reshape(*top.shape, *chosen.shape[1:]).contiguous()
    save_file(tensors, folder / RUN_FEATURES)
    if texts is not None:
        chosen = [[" ".join(texts[int(i)].split()) for i in row] for row in top]
        (folder / "top_texts.json").write_text(json.dumps(chosen, indent=1), encoding="utf-8")
    return folder / RUN_FEATURES


def load_run_features(folder: str | Path) -> dict[str, Any] | None:
    """What :func:`save_run_features` wrote (with ``"texts"`` when saved), or None when the run saved nothing."""
    from safetensors.torch import load_file

    folder = Path(folder)
    if not (folder / RUN_FEATURES).is_file():
        return None
    content: dict[str, Any] = load_file(str(folder / RUN_FEATURES))
    texts = folder / "top_texts.json"
    if texts.is_file():
        content["texts"] = json.loads(texts.read_text(encoding="utf-8"))
    return content
