"""Atomic, resumable training checkpoints: safetensors weights + a weights-only state file.

A checkpoint is a folder ``step-000123/`` holding

- ``model.safetensors``: the model's weights (safetensors, no pickle);
- ``state.pt``: optimizer, scheduler and random-number-generator states, loaded back
  with ``torch.load(weights_only=True)`` (tensors and plain Python values only);
- ``trainer_state.json``: epoch, step and anything else the loop needs.

The folder is written under a temporary name and renamed into place, and the ``latest``
file that points at it is replaced atomically last, so a run killed at any moment leaves
either the previous checkpoint or the new one, never a half-written one.

Examples:
    >>> import tempfile, torch
    >>> model = torch.nn.Linear(2, 2)
    >>> folder = tempfile.mkdtemp()
    >>> _ = save_checkpoint(folder, model, {"step": 3})
    >>> load_checkpoint(folder, model)["step"]
    3
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = ["latest_checkpoint", "load_checkpoint", "save_checkpoint", "write_text_atomically"]

LATEST = "latest"


def save_checkpoint(
    folder: str | os.PathLike,
    model: nn.Module,
    trainer_state: dict[str, Any],
    extra_state: dict[str, Any] | None = None,
    keep: int = 1,
) -> Path:
    """Write a checkpoint for ``trainer_state["step"]`` atomically; keep the newest ``keep``."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    name = f"step-{int(trainer_state['step']):09d}"
    final, staging = folder / name, folder / f".{name}.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    weights = {key: value.detach().contiguous().cpu() for key, value in model.state_dict().items()}
    save_file(weights, staging / "model.safetensors")
    torch.save(extra_state or {}, staging / "state.pt")
    (staging / "trainer_state.json").write_text(json.dumps(trainer_state, indent=2))
    shutil.rmtree(final, ignore_errors=True)
    os.replace(staging, final)
    write_text_atomically(folder / LATEST, name)
    for old in sorted(p for p in folder.glob("step-*") if p.is_dir())[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(folder: str | os.PathLike) -> Path | None:
    """The folder of the newest complete checkpoint under ``folder``, or None."""
    pointer = Path(folder) / LATEST
    if not pointer.is_file():
        return None
    path = Path(folder) / pointer.read_text().strip()
    return path if (path / "trainer_state.json").is_file() else None


def load_checkpoint(
    folder: str | os.PathLike, model: nn.Module, map_location: str | torch.device = "cpu"
) -> dict[str, Any]:
    """Load the newest checkpoint under ``folder`` into ``model``.

    Returns the trainer state, with the extra state (optimizer, scheduler, RNG) under
    the key ``"extra_state"``. Raises FileNotFoundError when there is none.
    """
    from safetensors.torch import load_file

    path = latest_checkpoint(folder)
    if path is None:
        raise FileNotFoundError(f"no checkpoint found in {folder}")
    model.load_state_dict(load_file(path / "model.safetensors", device=str(map_location)))
    state = json.loads((path / "trainer_state.json").read_text())
    state["extra_state"] = torch.load(path / "state.pt", map_location=map_location, weights_only=True)
    return state


def write_text_atomically(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` so that readers see the old or the new file, never a partial one."""
    path = Path(path)
    staging = path.with_name(f".{path.name}.tmp")
    staging.write_text(text)
    os.replace(staging, path)
