"""What produced a result: package versions, the git commit, the machine, for ``results.json``.

Examples:
    >>> info = provenance()
    >>> sorted(info)[:3]
    ['cpu_threads', 'device', 'git_commit']
    >>> "torch" in info["versions"]
    True
"""

from __future__ import annotations

import importlib.metadata
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

from ncl_ext import __version__

__all__ = ["provenance"]

#: Distributions whose versions are recorded when their module is loaded (module name -> distribution).
_ECOSYSTEM = {
    "torch": "torch",
    "torchvision": "torchvision",
    "numpy": "numpy",
    "timm": "timm",
    "accelerate": "accelerate",
    "open_clip": "open_clip_torch",
    "transformers": "transformers",
    "sentence_transformers": "sentence-transformers",
    "torch_geometric": "torch-geometric",
    "sklearn": "scikit-learn",
    "safetensors": "safetensors",
    "numba": "numba",
    "peft": "peft",
}


def provenance(device: Any = None) -> dict[str, Any]:
    """ncl_ext's version and git commit, the versions of the libraries in use, Python, the device and host.

    ``cpu_threads`` is recorded because CPU results are reproducible for a given seed and thread
    count only: reductions are summed in another order with another count.
    """
    versions = {"ncl_ext": __version__}
    for module, distribution in _ECOSYSTEM.items():
        if module in sys.modules:
            try:
                versions[distribution] = importlib.metadata.version(distribution)
            except importlib.metadata.PackageNotFoundError:
                versions[distribution] = getattr(sys.modules[module], "__version__", "unknown")
    return {
        "versions": versions,
        "git_commit": _git_commit(),
        "python": platform.python_version(),
        "device": str(device) if device is not None else _default_device(),
        "cpu_threads": torch.get_num_threads(),
        "hostname": platform.node(),
    }


def _default_device() -> str:
    if torch.cuda.is_available():
        return f"cuda ({torch.cuda.get_device_name(0)})"
    return "cpu"


def _git_commit() -> str | None:
    """``HEAD`` of the checkout ncl_ext runs from (with ``-dirty`` when it has changes), or None."""
    checkout = Path(__file__).resolve().parents[2]
    if not (checkout / ".git").exists():
        return None
    try:
        commit = subprocess.run(
            ["git", "-C", str(checkout), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        status = subprocess.run(
            ["git", "-C", str(checkout), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("-dirty" if status else "")
