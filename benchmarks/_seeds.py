"""Run a recipe's offline default once per seed, timed, into fresh folders (nothing resumed)."""

from __future__ import annotations

import os
import tempfile
import time
from typing import Any

from ncl_ext.recipes import run_recipe


def run_per_seed(recipe: str, seeds: list[int], overrides: list[str], device: str) -> list[dict[str, Any]]:
    """One record per seed: the recipe's ``runs``, its ``config``, wall time and load average."""
    records = []
    for seed in seeds:
        load_before = os.getloadavg()
        started = time.perf_counter()
        with tempfile.TemporaryDirectory() as output:
            results = run_recipe(recipe, overrides=[*overrides, f"seed={seed}"], output=output, device=device)
        records.append({
            "seed": seed, "runs": results["runs"], "config": results["config"],
            "wall_seconds": round(time.perf_counter() - started, 1),
            "load_average_before": [round(x, 2) for x in load_before],
            "load_average_after": [round(x, 2) for x in os.getloadavg()],
        })
    return records


def metric_rows(records: list[dict[str, Any]], columns: tuple[tuple[str, str], ...]) -> list[str]:
    """Markdown table ``| seed | run | <column titles> |`` of every seed's runs; ``columns``: (metric, title)."""
    lines = ["| seed | run | " + " | ".join(title for _, title in columns) + " |", "|---|---|" + "---:|" * len(columns)]
    for record in records:
        for name, metrics in record["runs"].items():
            lines.append(f"| {record['seed']} | {name} | " + " | ".join(f"{metrics[key]:.4f}" for key, _ in columns) + " |")
    return lines


def verdict_rows(records: list[dict[str, Any]]) -> list[str]:
    """Markdown rows ``| seed | wall time | load before / after | targets met |`` (records carry ``targets``)."""
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
