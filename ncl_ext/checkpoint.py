"""Atomic, resumable training checkpoints: safetensors weights + a weights-only state file.

A checkpoint is a folder ``step-000123/`` holding

- ``model.safetensors``: the model's weights (safetensors, no pickle);
- ``state.pt``: optimizer, scheduler and random-number-generator states, loaded back
  with ``torch.load(weights_only=True)`` (tensors and plain Python values only);
- ``trainer_state.json``: epoch, step, the settings it was trained with, the log so far.

Each file is written and ``fsync``-ed under a temporary folder name, the folder is renamed
into place, and the ``latest`` file that points at it is replaced atomically last, so a
run killed at any moment leaves the previous checkpoint or the new one, never half of one.
The two newest checkpoints are kept: if the latest cannot be read (a damaged disk, a file
truncated by hand), :func:`load_checkpoint` warns and falls back to the one before; when
none can be read, the error names the file and how to start over.

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

from ncl_ext.log import logger

__all__ = [
    "CheckpointError",
    "latest_checkpoint",
    "load_backbone_weights",
    "load_checkpoint",
    "save_checkpoint",
    "write_text_atomically",
]

LATEST = "latest"
KEEP = 2


class CheckpointError(ValueError):
    """No usable checkpoint could be read; the message names the file and how to start over."""


def save_checkpoint(
    folder: str | os.PathLike,
    model: nn.Module,
    trainer_state: dict[str, Any],
    extra_state: dict[str, Any] | None = None,
    keep: int = KEEP,
) -> Path:
    """Write a checkpoint for ``trainer_state["step"]`` atomically and durably; keep the newest ``keep``."""
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
    for path in staging.iterdir():
        _fsync(path)
    shutil.rmtree(final, ignore_errors=True)
    os.replace(staging, final)
    _fsync(folder)
    write_text_atomically(folder / LATEST, name)
    for old in _checkpoints(folder)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _checkpoints(folder: Path) -> list[Path]:
    """The checkpoint folders under ``folder``, oldest first."""
    return sorted(path for path in folder.glob("step-*") if path.is_dir())


def latest_checkpoint(folder: str | os.PathLike) -> Path | None:
    """The folder of the newest checkpoint under ``folder`` (by the ``latest`` pointer, else by name), or None."""
    folder = Path(folder)
    pointer = folder / LATEST
    if pointer.is_file():
        path = folder / pointer.read_text().strip()
        if path.is_dir():
            return path
    candidates = _checkpoints(folder)
    return candidates[-1] if candidates else None


def load_checkpoint(
    folder: str | os.PathLike, model: nn.Module, map_location: str | torch.device = "cpu"
) -> dict[str, Any]:
    """Load the newest readable checkpoint under ``folder`` into ``model``.

    Returns the trainer state, with the extra state (optimizer, scheduler, RNG) under the key
    ``"extra_state"``. An unreadable newest checkpoint is skipped with a warning.

    Raises:
        FileNotFoundError: ``folder`` holds no checkpoint.
        CheckpointError: none can be read, or the weights do not fit ``model``; the message
            names the file and says how to start over.
    """
    folder = Path(folder)
    newest = latest_checkpoint(folder)
    if newest is None:
        raise FileNotFoundError(f"no checkpoint found in {folder}")
    candidates = [newest] + [path for path in reversed(_checkpoints(folder)) if path != newest]
    problems = []
    for position, path in enumerate(candidates):
        try:
            return _load(path, model, map_location)
        except _Unreadable as problem:
            problems.append(str(problem))
            if position + 1 < len(candidates):
                logger.warning(f"checkpoint {problem}; trying the previous one")
    raise CheckpointError(
        f"no usable checkpoint in {folder}: {'; '.join(problems)}. "
        "Start the run over with --fresh (or delete that folder)"
    )


class _Unreadable(Exception):
    """One checkpoint file could not be read; the message names it."""


def _load(path: Path, model: nn.Module, map_location: str | torch.device) -> dict[str, Any]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    weights_file, state_file, trainer_file = path / "model.safetensors", path / "state.pt", path / "trainer_state.json"
    for file in (weights_file, state_file, trainer_file):
        if not file.is_file():
            raise _Unreadable(f"{file} is missing")
    try:
        state = json.loads(trainer_file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise _Unreadable(f"{trainer_file} is unreadable ({error})") from None
    try:
        weights = load_file(weights_file, device=str(map_location))
    except (OSError, SafetensorError) as error:
        raise _Unreadable(f"{weights_file} is unreadable ({error})") from None
    try:
        extra = torch.load(state_file, map_location=map_location, weights_only=True)
    except Exception as error:  # noqa: BLE001 - torch raises RuntimeError, EOFError, UnpicklingError, ...
        raise _Unreadable(f"{state_file} is unreadable ({type(error).__name__}: {_first_line(error)})") from None
    try:
        model.load_state_dict(weights)
    except RuntimeError as error:
        raise CheckpointError(
            f"{weights_file} does not fit the model ({_first_line(error)}); it was trained with other settings: "
            "use a new --output, or --fresh to start over"
        ) from None
    state["extra_state"] = extra
    return state


def load_backbone_weights(backbone: nn.Module, folder: str | os.PathLike, prefix: str = "backbone.") -> Path:
    """Copy the ``prefix*`` weights of the newest checkpoint under ``folder`` into ``backbone``.

    ``folder`` is a run folder or its ``checkpoints`` folder, e.g. the ``ncl`` run of
    ``ncl-ext run vision-ssl``, whose model is a :class:`~ncl_ext.models.ContrastiveModel`;
    its projector is dropped, as in the paper's fine-tuning. Returns the checkpoint used.
    """
    from safetensors.torch import load_file

    folder = Path(folder).expanduser()
    checkpoint = latest_checkpoint(folder) or latest_checkpoint(folder / "checkpoints")
    if checkpoint is None:
        raise FileNotFoundError(
            f"init_from={str(folder)!r}: no checkpoint there; expected a vision-ssl run's checkpoints folder, "
            "e.g. init_from=runs/vision-ssl-imagenet100-HASH/ncl/checkpoints"
        )
    weights = load_file(checkpoint / "model.safetensors")
    selected = {key.removeprefix(prefix): value for key, value in weights.items() if key.startswith(prefix)}
    if not selected:
        raise ValueError(f"init_from={str(folder)!r}: {checkpoint} holds no {prefix}* weights (not a vision-ssl run)")
    try:
        backbone.load_state_dict(selected)
    except RuntimeError as error:
        raise ValueError(
            f"init_from={str(folder)!r}: its backbone does not fit {type(backbone).__name__} "
            f"({_first_line(error)}); use the same backbone setting as the vision-ssl run"
        ) from None
    return checkpoint


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _fsync(path: Path) -> None:
    """Flush ``path`` (a file, or a folder's entries) to disk, where the platform allows."""
    try:
        descriptor = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def write_text_atomically(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` so that readers see the old or the new file, never a partial one."""
    path = Path(path)
    staging = path.with_name(f".{path.name}.tmp")
    with open(staging, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(staging, path)
