"""Recipes: one readable module per domain that trains CL and NCL side by side.

Each recipe module defines a ``Config`` dataclass, named ``PRESETS`` (overrides of the
config), a ``DEFAULT_PRESET`` that runs offline, and ``run(config, output) -> runs``,
where ``runs`` maps a run name (``"cl"``, ``"ncl"``, ...) to its metrics. A recipe only
wires data, adapter, loss, the shared :class:`ncl_ext.training.Trainer` and
:mod:`ncl_ext.analysis`; it owns no training loop.

Examples:
    >>> from ncl_ext.recipes import run_recipe
    >>> results = run_recipe("vision-ssl", overrides=["epochs=1"])     # doctest: +SKIP
    >>> results["runs"]["ncl"]["sparsity"]                             # doctest: +SKIP
"""

from __future__ import annotations

import importlib
import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any, Sequence

from ncl_ext.checkpoint import write_text_atomically
from ncl_ext.recipes.config import build_config, format_results_table

__all__ = ["RECIPES", "run_recipe"]

#: Recipe name on the command line -> module implementing it.
RECIPES: dict[str, str] = {
    "vision-ssl": "ncl_ext.recipes.vision_ssl",
    "supervised-nce": "ncl_ext.recipes.supervised_nce",
    "sentence-embedding": "ncl_ext.recipes.sentence_embedding",
    "graph-contrastive": "ncl_ext.recipes.graph_contrastive",
    "clip-finetune": "ncl_ext.recipes.clip_finetune",
}


def run_recipe(
    name: str,
    preset: str | None = None,
    overrides: Sequence[str] | dict[str, Any] = (),
    data_root: str | None = None,
    output: str | os.PathLike | None = None,
    device: str | None = None,
) -> dict[str, Any]:
    """Run recipe ``name`` and write ``OUTPUT/results.json`` and ``OUTPUT/results.md``.

    Args:
        name: a key of :data:`RECIPES`.
        preset: a preset of the recipe; ``None`` runs its offline default.
        overrides: ``["key=value", ...]`` or a dict, applied after the preset.
        data_root: folder with the dataset (read only).
        output: output folder, default ``runs/NAME-PRESET``.
        device: ``cpu``, ``cuda``, ... (default: the best available).

    Returns:
        ``{"recipe", "preset", "config", "runs": {run: {metric: value}}}``.
    """
    if name not in RECIPES:
        raise ValueError(f"recipe={name!r} is unknown; expected one of {sorted(RECIPES)}")
    recipe = importlib.import_module(RECIPES[name])
    preset = preset or recipe.DEFAULT_PRESET
    if preset not in recipe.PRESETS:
        raise ValueError(f"preset={preset!r} is unknown for recipe {name}; expected one of {sorted(recipe.PRESETS)}")
    config = build_config(recipe.Config, recipe.PRESETS[preset], overrides, data_root=data_root, device=device)
    output = Path(output or Path("runs") / f"{name}-{preset}")
    runs = recipe.run(config, output)
    results = {"recipe": name, "preset": preset, "config": asdict(config), "runs": runs}
    if _is_main_process():
        output.mkdir(parents=True, exist_ok=True)
        table = format_results_table(results)
        write_text_atomically(output / "results.json", json.dumps(results, indent=2))
        write_text_atomically(output / "results.md", table + "\n")
        print(table)
        print(f"\nresults written to {output / 'results.json'}")
    return results


def _is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0
