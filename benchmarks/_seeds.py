"""Shared driver of the per-seed benchmarks: run a recipe's offline default once per seed, check targets, save tables.

Each seed runs into a fresh folder (nothing resumed) and is timed; the load average
before and after is kept, since on a CPU shared with other processes the wall-clock time
is pessimistic.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ncl_ext.recipes import run_recipe

RESULTS = Path(__file__).resolve().parent / "results"


def seed_benchmark(
    recipe: str,
    result_name: str,
    title: str,
    columns: tuple[tuple[str, str], ...],
    targets: Callable[[dict[str, dict], float], dict[str, bool]],
    describe: Callable[[dict[str, Any]], str],
    description: str,
    measure: Callable[[Path, dict[str, dict]], None] | None = None,
) -> None:
    """Command-line entry point: ``--seeds``, ``--device``, ``--data-root`` and recipe ``KEY=VALUE`` overrides.

    Args:
        recipe: the recipe to run (its default preset).
        result_name: writes ``benchmarks/results/<result_name>.md`` and ``.json`` (``--name`` changes it).
        title: the markdown heading.
        columns: ``(metric, column title)`` of the per-seed table.
        targets: ``(runs, wall_seconds) -> {target: met}`` for one seed.
        describe: one line about the settings, from the recipe's config.
        description: the ``--help`` text.
        measure: ``(output folder, runs) -> None``, called before the folder is deleted, may add
            metrics to ``runs[run]`` from what the recipe saved there (e.g. search timings).
    """
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--data-root", default=None, help="the recipe's --data-root")
    parser.add_argument("--name", default=result_name,
                        help=f"results file stem (default {result_name}); a variant's table needs its own")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="recipe overrides, e.g. epochs=100")
    args = parser.parse_args()

    records = []
    for seed in args.seeds:
        load_before = os.getloadavg()
        started = time.perf_counter()
        with tempfile.TemporaryDirectory() as output:
            overrides = [*args.overrides, f"seed={seed}"]
            results = run_recipe(recipe, overrides=overrides, data_root=args.data_root, output=output,
                                 device=args.device)
            if measure is not None:
                measure(Path(output), results["runs"])
        wall = round(time.perf_counter() - started, 1)
        records.append({
            "seed": seed, "runs": results["runs"], "wall_seconds": wall, "targets": targets(results["runs"], wall),
            "load_average_before": [round(x, 2) for x in load_before],
            "load_average_after": [round(x, 2) for x in os.getloadavg()],
        })
    config, versions = results["config"], results["provenance"]["versions"]
    table = "\n".join([
        f"### {title}",
        "",
        f"{describe(config)}; {torch.get_num_threads()} torch threads, {os.cpu_count()} cores.",
        "",
        # A seed reproduces its row only with the same versions and thread count.
        "Ran with " + ", ".join(f"{name} {version}" for name, version in versions.items()) + ".",
        "",
        *_metric_rows(records, columns),
        "",
        f"Mean ± std (numpy's, ddof 0) over seeds {', '.join(str(record['seed']) for record in records)}:",
        "",
        *_summary_rows(records, columns),
        "",
        *_verdict_rows(records),
    ])
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{args.name}.md").write_text(table + "\n")
    summary = {"config": config, "provenance": results["provenance"], "seeds": records}
    (RESULTS / f"{args.name}.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(table)


def _metric_rows(records: list[dict[str, Any]], columns: tuple[tuple[str, str], ...]) -> list[str]:
    lines = ["| seed | run | " + " | ".join(title for _, title in columns) + " |", "|---|---|" + "---:|" * len(columns)]
    for record in records:
        for name, metrics in record["runs"].items():
            cells = " | ".join(f"{metrics[key]:.4f}" if key in metrics else "-" for key, _ in columns)
            lines.append(f"| {record['seed']} | {name} | {cells} |")
    return lines


def _summary_rows(records: list[dict[str, Any]], columns: tuple[tuple[str, str], ...]) -> list[str]:
    lines = ["| run | " + " | ".join(title for _, title in columns) + " |", "|---|" + "---:|" * len(columns)]
    for name in dict.fromkeys(name for record in records for name in record["runs"]):
        cells = []
        for key, _ in columns:
            values = [record["runs"][name][key] for record in records if key in record["runs"].get(name, {})]
            cells.append(f"{np.mean(values):.3f} ± {np.std(values):.3f}" if values else "-")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def _verdict_rows(records: list[dict[str, Any]]) -> list[str]:
    lines = ["| seed | wall time | load before / after | targets met |", "|---|---:|---|---|"]
    for record in records:
        missed = [key for key, ok in record["targets"].items() if not ok]
        total = len(record["targets"])
        verdict = "all" if not missed else "missed: " + ", ".join(missed)
        lines.append(
            f"| {record['seed']} | {record['wall_seconds']} s | {record['load_average_before'][0]} / "
            f"{record['load_average_after'][0]} | {verdict} ({total - len(missed)}/{total}) |"
        )
    return lines
