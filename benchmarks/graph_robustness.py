"""Does NCL-GRACE keep its units alive, and CL's accuracy, with hyper-parameters it was not tuned with?

Usage::

    python benchmarks/graph_robustness.py                                # the whole grid, seed 0
    python benchmarks/graph_robustness.py --seeds 1 2 --variants cl ncl-rep_relu   # confirm on more seeds
    python benchmarks/graph_robustness.py --table-only                   # tabulate what has finished

What is measured. Each *graph* below is trained with each *variant* by the
``graph-contrastive`` recipe (``run_recipe``, one run per call, into a folder of its own
under ``--work``, so an interrupted sweep resumes and finished runs are reused):

- ``cora@PRESET``: Cora, with the hyper-parameters of the recipe's preset PRESET (lr, hidden
  sizes, encoder activation, drop rates, temperature, weight decay: GRACE's published
  settings for Cora / CiteSeer / PubMed, GCA's for the Amazon and Coauthor graphs), the
  epochs capped at ``--epochs`` to keep the sweep affordable on a CPU;
- ``synthetic...``: generated graphs with planted communities (the recipe's default preset,
  and other sizes, class counts and feature noise), with the default preset's hyper-parameters.

Variants: ``cl`` (GRACE) and ``ncl-MAP`` (GRACE with the non-negative map MAP on the
projector output), each with the gradient norm clipped at 1.0 (``+clip``) or not, the
rest of the recipe's settings as they are. The clipping applies to CL and NCL alike.

Per graph and variant the table reports the node-classification accuracy of GRACE's
protocol on the test nodes (mean ± std over every random split of every seed), its
validation-node accuracy (the accuracy of the chosen ``C`` on the nodes that chose it), the
accuracy of the same probe on the head features, and the head features' sparsity and
active dimensions (computed now, with the tree's :func:`ncl_ext.analysis.feature_report`,
from the features each run saved). A dimension is active when it is non-zero on some node.

Selection protocol. The NCL default is the NCL variant with the highest validation
accuracy averaged over the graphs, among the variants run on every graph whose runs all
finished and whose head keeps at least ``--min-active`` of its dimensions active on every
graph (default 0.1, the training loop's own collapse warning threshold,
``TrainConfig.min_active_fraction``); test accuracies are reported, never used to choose.

Results go to ``benchmarks/results/graph_robustness.md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ncl_ext.training import TrainConfig

RESULTS = Path(__file__).resolve().parent / "results"
REPOSITORY = Path(__file__).resolve().parents[1]
DEFAULT_DATA_ROOT = REPOSITORY.parent / "shared" / "data" / "planetoid"
RECIPE = "graph-contrastive"
PRESETS = ("cora", "citeseer", "pubmed", "amazon-computers", "amazon-photo", "coauthor-cs")
#: Generated graphs: name -> overrides of the recipe's default (synthetic) preset.
SYNTHETIC_GRAPHS: dict[str, tuple[str, ...]] = {
    "synthetic": (),
    "synthetic-3x1500": ("num_nodes=1500", "num_classes=3", "num_features=150"),
    "synthetic-10-noisy": ("num_nodes=1500", "num_classes=10", "num_features=400", "noise_rate=0.06"),
}
GRAPHS = (*(f"cora@{preset}" for preset in PRESETS), *SYNTHETIC_GRAPHS)


@dataclass(frozen=True)
class Variant:
    """One way to train: which run of the recipe, with which map and gradient clipping."""

    run: str
    nonneg: str | None
    clip: float | None
    temperature_scale: float = 1.0
    width_scale: int = 1

    @property
    def name(self) -> str:
        name = "cl" if self.run == "cl" else f"ncl-{self.nonneg}"
        name += f"+t{self.temperature_scale:g}" if self.temperature_scale != 1.0 else ""
        name += f"+w{self.width_scale}" if self.width_scale != 1 else ""
        return name + ("+clip" if self.clip else "")

    def overrides(self) -> list[str]:
        settings = [f"runs={self.run}", f"max_grad_norm={self.clip if self.clip else 'none'}"]
        if self.run == "ncl":
            settings += [
                f"nonneg={self.nonneg}", f"ncl_temperature_scale={self.temperature_scale}",
                f"ncl_projection_scale={self.width_scale}",
            ]
        return settings


VARIANTS = {
    variant.name: variant
    for nonneg in (None, "relu", "rep_relu")
    for scale in ((1.0,) if nonneg is None else (1.0, 0.5))
    for width in ((1,) if nonneg is None else (1, 2))
    for clip in (None, 1.0)
    for variant in [Variant("cl" if nonneg is None else "ncl", nonneg, clip, scale, width)]
}


def graph_settings(graph: str, epochs: int) -> tuple[str, list[str]]:
    """``(preset, overrides)`` that train ``graph``.

    ``GRAPH@PRESET`` is the graph GRAPH (``cora`` or a generated graph) trained with the
    hyper-parameters of the recipe's preset PRESET, epochs capped at ``epochs``; a bare
    generated graph's name trains it with the default (synthetic) preset.
    """
    from ncl_ext.recipes.presets import read_preset

    name, _, preset = graph.partition("@")
    data = ["dataset=cora"] if name == "cora" else ["dataset=synthetic", *SYNTHETIC_GRAPHS[name]]
    if not preset:
        return "synthetic", data[1:]
    settings, _ = read_preset(RECIPE, preset)
    return preset, [*data, f"epochs={min(epochs, int(settings['epochs']))}", "chunk_size=none"]


def run_folder(work: Path, graph: str, variant: Variant, seed: int) -> Path:
    return work / graph / variant.name / f"seed{seed}"


def work_folder(root: Path, epochs: int) -> Path:
    """Runs with another epoch cap are other runs: one folder per cap."""
    return root / f"epochs{epochs}"


def train_one(job: dict[str, Any]) -> dict[str, Any]:
    """One run of the recipe (in a worker process): its metrics, wall time and the training warnings it logged."""
    import torch

    from ncl_ext.log import logger
    from ncl_ext.recipes import run_recipe

    torch.set_num_threads(job["threads"])
    logger.setLevel(logging.WARNING)  # no progress bars; keep the collapse warnings of the training loop
    warnings: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            warnings.append(record.getMessage())

    handler = Keep(level=logging.WARNING)
    logger.addHandler(handler)
    started = time.perf_counter()
    try:
        results = run_recipe(
            RECIPE, preset=job["preset"], overrides=job["overrides"], data_root=job["data_root"],
            output=job["folder"], device="cpu",
        )
        error = None
    except ValueError as raised:  # e.g. the loss refusing a batch whose rows are all dead: a collapse
        results, error = None, str(raised)
    finally:
        logger.removeHandler(handler)
    record = {"wall_seconds": round(time.perf_counter() - started, 1), "warnings": warnings, "error": error}
    folder = Path(job["folder"])
    if results is not None or not (folder / "results.json").is_file():  # never overwrite a finished run's record
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "benchmark.json").write_text(json.dumps(record, indent=2) + "\n")
    return {"job": job, "metrics": results["runs"][job["run"]] if results else None, **record}


def sweep(args: argparse.Namespace) -> None:
    """Train every (graph, variant, seed) not finished yet, ``--jobs`` at a time."""
    jobs = []
    for seed in args.seeds:
        for graph in args.graphs:  # graph by graph, in the order given: a sweep stopped early has whole graphs
            preset, overrides = graph_settings(graph, args.epochs)
            for name in args.variants:
                variant = VARIANTS[name]
                folder = run_folder(args.work, graph, variant, seed)
                if (folder / variant.run / "run.json").is_file() and (folder / "results.json").is_file():
                    continue
                if _read_json(folder / "benchmark.json").get("error"):
                    continue  # failed before: a collapse is a result, not something to retry
                jobs.append({
                    "preset": preset, "overrides": [*overrides, *variant.overrides(), f"seed={seed}"],
                    "data_root": args.data_root, "folder": str(folder), "run": variant.run, "threads": args.threads,
                    "label": f"{graph} {name} seed {seed}",
                })
    print(f"{len(jobs)} runs to train, {args.jobs} at a time", flush=True)
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        futures = [pool.submit(train_one, job) for job in jobs]
        for future in as_completed(futures):
            done = future.result()
            metrics = done["metrics"]
            if metrics is None:
                print(f"{done['job']['label']}: FAILED: {done['error']}", flush=True)
                continue
            print(
                f"{done['job']['label']}: acc {metrics['node_acc_mean']:.4f} val {metrics['node_val_acc_mean']:.4f} "
                f"active {metrics['active_dims']} sparsity {metrics['sparsity']:.3f} ({done['wall_seconds']} s, "
                f"load {os.getloadavg()[0]:.1f}){' WARNED' if done['warnings'] else ''}",
                flush=True,
            )


def collect(work: Path, graph: str, variant: Variant) -> dict[str, Any] | None:
    """Every finished seed of ``(graph, variant)``: probe accuracies from results.json, feature metrics recomputed."""
    import torch

    from ncl_ext.analysis import feature_report
    from ncl_ext.analysis.loading import load_run_features
    from ncl_ext.training import read_history

    seeds, failures = [], []
    for folder in sorted((work / graph / variant.name).glob("seed*")):
        results = _read_json(folder / "results.json")
        record = _read_json(folder / "benchmark.json")
        if variant.run not in results.get("runs", {}):
            if record.get("error"):
                failures.append({"seed": int(folder.name.removeprefix("seed")), "error": record["error"]})
            continue
        metrics = results["runs"][variant.run]
        saved = load_run_features(folder / variant.run)
        report = feature_report(saved["features"], saved["labels"], sepin_samples=None)
        history = read_history(folder / variant.run)
        seeds.append({
            "seed": results["config"]["seed"], "epochs": results["config"]["epochs"],
            "warned": _collapse_warning(history),
            "first_step_active_dims": history[0]["active_dims"] if history else None,
            "node_accs": metrics["node_accs"], "node_acc_mean": metrics["node_acc_mean"],
            "node_val_acc_mean": metrics["node_val_acc_mean"], "head_acc_mean": metrics["head_acc_mean"],
            "sparsity": report["sparsity"], "active_dims": report["active_dims"], "num_dims": report["num_dims"],
            "semantic_consistency": report["semantic_consistency"],
            "wall_seconds": record.get("wall_seconds"),
            "features_finite": bool(torch.isfinite(saved["features"]).all()),
        })
    if not seeds:
        return {"seeds": [], "failures": failures} if failures else None
    accs = [acc for seed in seeds for acc in seed["node_accs"]]
    return {
        "seeds": seeds, "failures": failures,
        "node_acc_mean": float(np.mean(accs)), "node_acc_std": float(np.std(accs)),
        **{key: float(np.mean([seed[key] for seed in seeds]))
           for key in ("node_val_acc_mean", "head_acc_mean", "sparsity", "active_dims")},
        "num_dims": seeds[0]["num_dims"], "epochs": seeds[0]["epochs"],
        "min_active_fraction": min(seed["active_dims"] / seed["num_dims"] for seed in seeds),
        "collapse_warnings": sum(seed["warned"] for seed in seeds),
    }


def _collapse_warning(history: list[dict[str, float]]) -> bool:
    """Whether a logged training batch crossed the training loop's warning thresholds (few active dims, dead rows)."""
    defaults = TrainConfig()
    return any(
        record["active_dims"] < defaults.min_active_fraction * record["num_dims"]
        or record["dead_rows"] > defaults.max_dead_row_fraction
        for record in history
    )


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}


def delta_vs_cl(cell: dict[str, Any], cl: dict[str, Any]) -> float:
    """NCL minus CL mean test accuracy over the seeds both ran (all of each when they share none)."""
    def accs(runs: dict[str, Any], seeds: set[int]) -> list[float]:
        return [acc for seed in runs["seeds"] if not seeds or seed["seed"] in seeds for acc in seed["node_accs"]]

    shared = {seed["seed"] for seed in cell["seeds"]} & {seed["seed"] for seed in cl["seeds"]}
    return float(np.mean(accs(cell, shared)) - np.mean(accs(cl, shared)))


def choose_default(cells: dict[str, dict[str, dict]], min_active: float) -> dict[str, Any]:
    """The NCL variant with the best mean validation accuracy over the graphs, among those whose units stay alive."""
    summary = {}
    for name, variant in VARIANTS.items():
        rows = [cells[graph].get(name) for graph in cells]
        if variant.run != "ncl" or any(row is None for row in rows) or not rows:
            continue
        if any(row["failures"] or not row["seeds"] for row in rows):
            summary[name] = {"failed": sum(len(row["failures"]) for row in rows), "min_active_fraction": 0.0}
            continue
        deltas = []
        for graph in cells:
            cl = cells[graph].get("cl" + ("+clip" if variant.clip else ""))
            if cl and cl["seeds"]:
                deltas.append(delta_vs_cl(cells[graph][name], cl))
        summary[name] = {
            "worst_delta_vs_cl": min(deltas) if deltas else None,
            "graphs_within_1_point": sum(delta >= -0.01 for delta in deltas), "graphs_compared": len(deltas),
            "min_sparsity": min(row["sparsity"] for row in rows),
            "mean_val_acc": float(np.mean([row["node_val_acc_mean"] for row in rows])),
            "mean_test_acc": float(np.mean([row["node_acc_mean"] for row in rows])),
            "min_active_fraction": min(row["min_active_fraction"] for row in rows),
            "mean_sparsity": float(np.mean([row["sparsity"] for row in rows])),
        }
    alive = {name: row for name, row in summary.items() if row["min_active_fraction"] >= min_active}
    chosen = max(alive, key=lambda name: alive[name]["mean_val_acc"]) if alive else None
    return {"summary": summary, "chosen": chosen, "min_active": min_active}


def format_tables(cells: dict[str, dict[str, dict]], choice: dict[str, Any], epochs: int) -> str:
    lines = [
        "### NCL-GRACE robustness: every graph preset's hyper-parameters on Cora, and generated graphs",
        "",
        (
            f"`cora@P`: Cora trained with preset P's hyper-parameters, epochs capped at {epochs}; `synthetic*`: "
            "planted partitions (default preset's hyper-parameters). Node accuracy: test nodes, mean ± std over "
            "every split "
            "of every seed; val: the probe's accuracy on the validation nodes that chose its C; head: the same probe "
            "on the head features; sparsity and active dims of the head features (L2-normalised rows, |z| > 1e-5). "
            "Δ: NCL − CL test accuracy at the same clipping, on the seeds both ran."
        ),
        "",
        "| graph | variant | seeds | epochs | node acc (test) | Δ vs CL | val acc | head acc | sparsity "
        "| active dims |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for graph, row_cells in cells.items():
        for name, cell in row_cells.items():
            variant = VARIANTS[name]
            for failure in cell["failures"]:
                reason = failure["error"].split(":")[0]
                lines.append(f"| {graph} | {name} | seed {failure['seed']} | - | training stopped: {reason} "
                             "| - | - | - | - | - |")
            if not cell["seeds"]:
                continue
            cl = row_cells.get("cl" + ("+clip" if variant.clip else ""))
            compared = variant.run == "ncl" and cl and cl["seeds"]
            delta = f"{100 * delta_vs_cl(cell, cl):+.1f}" if compared else "-"
            warned = " ⚠" if cell["collapse_warnings"] else ""
            lines.append(
                f"| {graph} | {name} | {len(cell['seeds'])} | {cell['epochs']} | {cell['node_acc_mean']:.4f} ± "
                f"{cell['node_acc_std']:.4f} | {delta} | {cell['node_val_acc_mean']:.4f} | {cell['head_acc_mean']:.4f} "
                f"| {cell['sparsity']:.4f} | {cell['active_dims']:.0f} / {cell['num_dims']}{warned} |"
            )
    lines += [
        "",
        "⚠: a logged training batch crossed the training loop's warning thresholds (fewer than 10% of the head's "
    "dimensions active, or more than 10% of the nodes with no active dimension).",
        "",
        f"Choice of the NCL default (validation nodes only; alive = at least {choice['min_active']:.0%} of the head's "
        "dimensions active on every graph):",
        "",
        "| NCL variant | mean val acc | mean test acc | worst Δ vs CL | graphs within 1 point of CL "
        "| min active fraction | min sparsity | chosen |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for name, row in choice["summary"].items():
        if "failed" in row:
            lines.append(f"| {name} | - | - | - | - | 0 ({row['failed']} runs stopped) | - | |")
            continue
        worst = f"{100 * row['worst_delta_vs_cl']:+.1f}" if row["worst_delta_vs_cl"] is not None else "-"
        lines.append(
            f"| {name} | {row['mean_val_acc']:.4f} | {row['mean_test_acc']:.4f} | {worst} "
            f"| {row['graphs_within_1_point']} / {row['graphs_compared']} | {row['min_active_fraction']:.3f} "
            f"| {row['min_sparsity']:.4f} | {'**yes**' if name == choice['chosen'] else ''} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-root", default=str(DEFAULT_DATA_ROOT), help="folder holding Cora/raw/ind.cora.*")
    parser.add_argument("--work", type=Path, default=REPOSITORY / "runs" / "graph-robustness",
                        help="one folder per run (resumed and reused)")
    parser.add_argument("--graphs", nargs="+", default=list(GRAPHS), choices=GRAPHS)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--epochs", type=int, default=200, help="cap on the epochs of the cora@PRESET graphs")
    parser.add_argument("--jobs", type=int, default=2, help="runs trained at once (one process each)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")
    parser.add_argument("--min-active", type=float, default=TrainConfig.min_active_fraction,
                        help="share of head dims the default must keep active on every graph (default: the training "
                        "loop's collapse warning threshold)")
    parser.add_argument("--table-only", action="store_true", help="tabulate the finished runs; train nothing")
    args = parser.parse_args()
    args.work = work_folder(args.work, args.epochs)
    if not args.table_only:
        sweep(args)

    cells: dict[str, dict[str, dict]] = {}
    for graph in GRAPHS:
        for name, variant in VARIANTS.items():
            cell = collect(args.work, graph, variant)
            if cell is not None:
                cells.setdefault(graph, {})[name] = cell
    choice = choose_default(cells, args.min_active)
    table = format_tables(cells, choice, args.epochs)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "graph_robustness.md").write_text(table + "\n")
    record = {"epochs_cap": args.epochs, "cells": cells, "choice": choice, "variants": list(VARIANTS),
              "synthetic_graphs": SYNTHETIC_GRAPHS}
    (RESULTS / "graph_robustness.json").write_text(json.dumps(record, indent=2) + "\n")
    print(table)


if __name__ == "__main__":
    main()
