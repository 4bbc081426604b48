"""Running a recipe: settings in, one folder of trustworthy results out.

:func:`run_recipe` is what ``ncl-ext run`` calls. For a recipe module (see
:mod:`ncl_ext.recipes`) it

1. resolves the settings (preset file, ``--config``, ``key=value``, flags) and checks them all;
2. checks the output folder before any work: it must be writable, and if it holds runs
   trained with other training settings the command stops with one line naming them
   (``--fresh`` discards the old runs; a new ``--output`` keeps them);
3. runs each requested run (``cl``, ``ncl``, ...): a finished run whose settings are
   unchanged is skipped, one whose evaluation settings changed is re-evaluated from its
   final checkpoint, an interrupted one resumes from its last checkpoint;
4. writes ``OUTPUT/config.yaml`` (repeat the run with ``--config``), ``OUTPUT/results.json``
   (metrics, settings, provenance: versions, git commit, device, CPU threads, seed, wall time per run,
   training hash), ``results.md`` and the CL-vs-NCL comparison figure ``compare.png``.

``results.json`` lists every run in the folder trained and evaluated with these settings,
so ``runs=cl`` then ``runs=ncl`` into one folder gives both.

Examples:
    >>> from ncl_ext.recipes import run_recipe
    >>> results = run_recipe("vision-ssl", overrides=["epochs=1"], output="out")   # doctest: +SKIP
    >>> results["runs"]["ncl"]["sparsity"]                                            # doctest: +SKIP
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from ncl_ext.analysis.loading import load_run_features
from ncl_ext.analysis.plots import plot_comparison
from ncl_ext.analysis.report import metric_definitions
from ncl_ext.checkpoint import write_text_atomically
from ncl_ext.log import logger
from ncl_ext.recipes.config import (
    build_config,
    config_to_dict,
    evaluation_settings,
    settings_hash,
    training_hash,
    training_settings,
)
from ncl_ext.recipes.presets import load_config_file, read_preset, write_config_file
from ncl_ext.recipes.provenance import provenance
from ncl_ext.training import differing_keys

__all__ = ["RECIPES", "format_results_table", "load_recipe", "resolve_config", "run_recipe"]

#: Recipe name on the command line -> module implementing it.
RECIPES: dict[str, str] = {
    "vision-ssl": "ncl_ext.recipes.vision_ssl",
    "supervised-nce": "ncl_ext.recipes.supervised_nce",
    "sentence-embedding": "ncl_ext.recipes.sentence_embedding",
    "graph-contrastive": "ncl_ext.recipes.graph_contrastive",
    "clip-finetune": "ncl_ext.recipes.clip_finetune",
    "sparse-retrieval": "ncl_ext.recipes.sparse_retrieval",
}
CONFIG_FILE, RESULTS_FILE, RUN_RECORD = "config.yaml", "results.json", "run.json"


def load_recipe(name: str) -> ModuleType:
    """The module of recipe ``name`` (a key of :data:`RECIPES`)."""
    if name not in RECIPES:
        raise ValueError(f"recipe={name!r} is unknown; expected one of {sorted(RECIPES)}")
    return importlib.import_module(RECIPES[name])


def resolve_config(
    name: str,
    preset: str | None = None,
    overrides: Sequence[str] | dict[str, Any] = (),
    data_root: str | None = None,
    device: str | None = None,
    config_file: str | os.PathLike | None = None,
) -> tuple[Any, str]:
    """``(config, preset name)``: the recipe's settings from its preset or ``config_file``, then overrides."""
    recipe = load_recipe(name)
    if config_file is not None:
        if preset is not None:
            raise ValueError("--preset and --config were both given; pass one of them")
        settings, written_preset = load_config_file(config_file, name)
        preset = written_preset or Path(config_file).stem
    else:
        preset = preset or recipe.DEFAULT_PRESET
        settings, _ = read_preset(name, preset)
    return build_config(recipe.Config, settings, overrides, data_root=data_root, device=device), preset


def derived_settings(name: str, config: Any) -> dict[str, Any]:
    """What the recipe computes from its settings (optimizer, schedule, ...), shown by ``--dry-run``."""
    describe = getattr(load_recipe(name), "derived_settings", None)
    return describe(config) if describe is not None else {}


def run_recipe(
    name: str,
    preset: str | None = None,
    overrides: Sequence[str] | dict[str, Any] = (),
    data_root: str | None = None,
    output: str | os.PathLike | None = None,
    device: str | None = None,
    config_file: str | os.PathLike | None = None,
    fresh: bool = False,
) -> dict[str, Any]:
    """Run recipe ``name`` and write ``OUTPUT/results.json``, ``results.md``, ``config.yaml`` and ``compare.png``.

    Args:
        name: a key of :data:`RECIPES`.
        preset: a preset of the recipe (``recipes/<name>/<preset>.yaml``); ``None``: its offline default.
        overrides: ``["key=value", ...]`` or a dict, applied after the preset.
        data_root: folder with the dataset (read only).
        output: output folder; default ``runs/NAME-PRESET-HASH``, HASH being :func:`training_hash`.
        device: ``cpu``, ``cuda``, ... (default: the best available).
        config_file: a YAML of settings (a preset of your own, or an ``OUTPUT/config.yaml``) instead of ``preset``.
        fresh: discard the runs already in ``output`` instead of resuming or refusing them.

    Returns:
        ``{"recipe", "preset", "config", "training_hash", "provenance", "runs": {run: {metric: value}}}``.
    """
    recipe = load_recipe(name)
    config, preset = resolve_config(name, preset, overrides, data_root, device, config_file)
    output = Path(output) if output is not None else Path("runs") / f"{name}-{preset}-{training_hash(config)}"
    main = _is_main_process()
    if main:
        _prepare_output(output, recipe, fresh)
        _refuse_other_settings(output, config, name)
        write_config_file(output / CONFIG_FILE, name, preset, config, derived_settings(name, config))

    context = None
    for run in config.runs:
        record = _read_record(output / run, config)
        if record is not None:
            logger.info(f"[{run}] finished earlier with these settings: skipped ({output / run / RUN_RECORD})")
            continue
        context = context or recipe.prepare(config, output)
        started = time.perf_counter()
        model = recipe.train(config, run, context, output / run)
        if main:
            metrics = recipe.evaluate(config, run, model, context, output / run)
            _write_record(output / run, config, metrics, time.perf_counter() - started)

    results = None
    if main:
        runs = {run: _read_record(output / run, config) for run in recipe.RUN_NAMES}
        runs = {run: record for run, record in runs.items() if record is not None}
        results = {
            "recipe": name,
            "preset": preset,
            "config": config_to_dict(config),
            "training_hash": training_hash(config),
            "provenance": {
                **provenance(getattr(context, "device", None) or getattr(config, "device", None)),
                "seed": getattr(config, "seed", None),
            },
            "wall_seconds": {run: record["seconds"] for run, record in runs.items()},
            "runs": {run: record["metrics"] for run, record in runs.items()},
            "definitions": metric_definitions(),  # the feature metrics (sparsity, semantic_consistency, ...)
        }
        _write_results(output, results, recipe, config)
    return results


def _is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def _prepare_output(output: Path, recipe: ModuleType, fresh: bool) -> None:
    """A writable output folder; with ``fresh``, without the runs and results of earlier commands."""
    if output.exists() and not output.is_dir():
        raise ValueError(f"--output {output} is a file, not a folder; pass a folder path")
    try:
        output.mkdir(parents=True, exist_ok=True)
        probe = output / ".ncl-ext-write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as error:
        raise ValueError(f"--output {output} is not a writable folder ({error.strerror or error})") from None
    if fresh:
        for run in (*recipe.RUN_NAMES, *getattr(recipe, "SHARED_FOLDERS", ())):
            shutil.rmtree(output / run, ignore_errors=True)
        for name in (CONFIG_FILE, RESULTS_FILE, "results.md", "compare.png"):
            (output / name).unlink(missing_ok=True)


def _refuse_other_settings(output: Path, config: Any, recipe: str) -> None:
    """Stop before any work when ``output`` holds runs trained with other training settings."""
    path = output / CONFIG_FILE
    if not path.is_file():
        if any((output / run).is_dir() for run in getattr(config, "runs", ())):
            logger.warning(f"{output} holds run folders but no {CONFIG_FILE}: their settings cannot be checked")
        return
    settings, _ = load_config_file(path, recipe)
    differences = differing_keys(_training_part(settings, config), training_settings(config))
    if differences:
        raise ValueError(
            f"{output} holds runs trained with other settings ({'; '.join(differences)}); "
            "use a new --output, or --fresh to discard the old runs"
        )


def _training_part(settings: dict[str, Any], config: Any) -> dict[str, Any]:
    known = training_settings(config)
    return {key: value for key, value in settings.items() if key in known}


def _read_record(folder: Path, config: Any) -> dict[str, Any] | None:
    """The record of a run finished and evaluated with ``config``'s settings, or None."""
    path = folder / RUN_RECORD
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as error:
        logger.warning(f"{path} is unreadable ({error}); the run will be evaluated again")
        return None
    same = record.get("training_hash") == training_hash(config)
    return record if same and record.get("evaluation_hash") == settings_hash(evaluation_settings(config)) else None


def _write_record(folder: Path, config: Any, metrics: dict[str, Any], seconds: float) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    record = {
        "training_hash": training_hash(config),
        "evaluation_hash": settings_hash(evaluation_settings(config)),
        "seconds": round(seconds, 1),
        "metrics": metrics,
    }
    write_text_atomically(folder / RUN_RECORD, json.dumps(record, indent=2))


def _write_results(output: Path, results: dict[str, Any], recipe: ModuleType, config: Any) -> None:
    table = format_results_table(results)
    write_text_atomically(output / RESULTS_FILE, json.dumps(results, indent=2))
    write_text_atomically(output / "results.md", table + "\n")
    summarize = getattr(recipe, "summarize", None)
    if summarize is not None:
        summarize(config, results["runs"], output)
    saved = {run: load_run_features(output / run) for run in results["runs"]}
    saved = {run: content for run, content in saved.items() if content is not None}
    if saved:
        plot_comparison(saved, output / "compare.png")
    logger.info(table)
    logger.info(f"\nresults written to {output / RESULTS_FILE}")


def format_results_table(results: Mapping[str, Any]) -> str:
    """A markdown table of the scalar metrics: one row per run, or one row per metric when there are over 12.

    Examples:
        >>> results = {"recipe": "r", "preset": "p", "runs": {"cl": {"acc": 0.5}, "ncl": {"acc": 0.25}}}
        >>> print(format_results_table(results))
        ### r (p)
        <BLANKLINE>
        | run | acc |
        |---|---:|
        | cl | 0.5000 |
        | ncl | 0.2500 |
    """
    runs: Mapping[str, Mapping[str, Any]] = results["runs"]
    metrics: list[str] = []
    for run in runs.values():
        metrics += [k for k, v in run.items() if isinstance(v, (int, float)) and k not in metrics]
    lines = [f"### {results['recipe']} ({results['preset']})", ""]
    if len(metrics) <= 12:
        lines += ["| run | " + " | ".join(metrics) + " |", "|---|" + "---:|" * len(metrics)]
        lines += [f"| {name} | " + " | ".join(_format_number(run.get(m)) for m in metrics) + " |"
                  for name, run in runs.items()]
    else:  # many metrics (e.g. one per budget): a long table reads better than a wide one
        lines += ["| metric | " + " | ".join(runs) + " |", "|---|" + "---:|" * len(runs)]
        lines += [f"| {m} | " + " | ".join(_format_number(run.get(m)) for run in runs.values()) + " |"
                  for m in metrics]
    return "\n".join(lines)


def _format_number(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, int) or (isinstance(value, float) and value.is_integer() and abs(value) >= 2):
        return str(int(value))
    return f"{value:.4f}"
