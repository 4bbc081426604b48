"""``ncl-ext run sparse-retrieval`` over several seeds: Matryoshka vs NCL vs CSR at 16..256 active dimensions.

Usage::

    python benchmarks/sparse_retrieval.py --data-root ../shared/data/stsbenchmark        # seeds 0 1 2
    python benchmarks/sparse_retrieval.py --data-root DIR --seeds 0 csr_k=256

What is measured. For each seed, one call of the ``sparse-retrieval`` recipe with its default preset
into a fresh output folder: from the packaged all-MiniLM-L6-v2, on the STS-B train pairs scored >= 4,
for the same steps (top 2 layers + head, 2 epochs), Matryoshka (first k dims), one NCL model read two
ways (the k dims of largest expected activation; each row's k largest values) and CSR (one model per
k), plus the untouched base model cut to its first k dims. At each k: STS-B dev Spearman; duplicate
retrieval among all dev sentences (MRR@10, NDCG@10, recall@10); exact search time per query and
index size; at k=64 the sparse read-outs also go to Qdrant (local mode) and Seismic. The tables give
the mean and standard deviation over seeds; the figure plots quality against active dimensions.

Results go to ``benchmarks/results/sparse_retrieval.md``, ``.json`` and ``.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
from pathlib import Path
from typing import Any

import torch

from ncl_ext.recipes import run_recipe

RESULTS = Path(__file__).resolve().parent / "results"
METHODS = {
    "base": "base (first k, untrained)",
    "matryoshka": "Matryoshka (first k)",
    "ncl_ea": "NCL, EA top-k dims",
    "ncl_topk": "NCL, max_active_dims=k",
    "csr": "CSR (trained at k), dot",
    "csr_cosine": "CSR (trained at k), cosine",
}
TRAINED = ("matryoshka", "ncl_topk", "csr")
COLUMNS = (
    ("stsb_spearman", "STS-B Spearman", 4), ("ndcg@10", "NDCG@10", 4), ("mrr@10", "MRR@10", 4),
    ("recall@10", "recall@10", 4), ("query_ms", "ms / query", 3), ("index_kib", "index KiB", 0),
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--data-root", required=True, help="folder with STS-B's sts-train.csv and sts-dev.csv")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: torch's); on a CPU others load, 1 avoids oversubscription")
    parser.add_argument("--keep", default=None,
                        help="keep the run folders under this folder; running again reuses its finished models")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="recipe overrides, e.g. epochs=1")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    records = []
    for seed in args.seeds:
        load_before = os.getloadavg()
        with tempfile.TemporaryDirectory() as scratch:
            output = Path(args.keep) / f"seed{seed}" if args.keep else Path(scratch)
            results = run_recipe("sparse-retrieval", overrides=[*args.overrides, f"seed={seed}"],
                                 data_root=args.data_root, output=output, device=args.device,
                                 fresh=args.keep is None)  # a kept folder resumes: finished runs are reused
        records.append({
            "seed": seed, "runs": results["runs"],
            # this pass: training (or reloading a kept model) and evaluation of every run
            "wall_seconds": round(sum(results["wall_seconds"].values()), 1),
            # the distinct trainings (both NCL read-outs share one model, both CSR read-outs theirs)
            "train_seconds": round(sum(results["runs"][run].get("train_s", 0) for run in TRAINED), 1),
            "load_average_before": [round(x, 2) for x in load_before],
            "load_average_after": [round(x, 2) for x in os.getloadavg()],
        })
    config = results["config"]
    report = "\n".join(_report(records, config)) + "\n"
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "sparse_retrieval.md").write_text(report)
    (RESULTS / "sparse_retrieval.json").write_text(json.dumps({"config": config, "seeds": records}, indent=2) + "\n")
    _plot(records, config, RESULTS / "sparse_retrieval.png")
    print(report)


def _values(records: list[dict], run: str, metric: str) -> list[float]:
    return [record["runs"][run][metric] for record in records if metric in record["runs"].get(run, {})]


def _spread(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


def _cell(values: list[float], digits: int) -> str:
    return f"{statistics.mean(values):.{digits}f} ± {_spread(values):.{digits}f}" if values else "-"


def _report(records: list[dict], config: dict[str, Any]) -> list[str]:
    budgets, runs = config["budgets"], [run for run in METHODS if run in records[0]["runs"]]
    lines = [
        "### `ncl-ext run sparse-retrieval` (STS-B): quality at equal budgets of active dimensions",
        "",
        f"{config['model'] or 'all-MiniLM-L6-v2'}, top {config['trainable_layers']} layers + head, "
        f"{config['epochs']} epochs, batch {config['batch_size']}, lr {config['lr']} / head {config['head_lr']}; "
        f"NCL head {config['head_dim']} wide ({config['nonneg']}, scale {config['scale']}), "
        f"CSR {config['head_dim']} latents; STS-B train pairs scored >= {config['min_score']}; STS-B dev. "
        f"Mean ± std over seeds {[r['seed'] for r in records]}; {torch.get_num_threads()} torch threads, "
        f"{os.cpu_count()} cores, exact search timed best of "
        f"{config['timing_repeats']} after a warm-up search.",
        "",
        "| method | k | " + " | ".join(title for _, title, _ in COLUMNS) + " |",
        "|---|---:|" + "---:|" * len(COLUMNS),
    ]
    for run in runs:
        for k in budgets:
            cells = [_cell(_values(records, run, f"{metric}_k{k}"), digits) for metric, _, digits in COLUMNS]
            lines.append(f"| {METHODS[run]} | {k} | " + " | ".join(cells) + " |")
    lines += ["", "Best method per budget (by mean; `~` marks a lead smaller than the larger of the two stds):", ""]
    lines += ["| k | STS-B Spearman | NDCG@10 |", "|---:|---|---|"]
    for k in budgets:
        lines.append(f"| {k} | " + " | ".join(_winner(records, runs, f"{m}_k{k}") for m in ("stsb_spearman", "ndcg@10"))
                     + " |")
    k = config["backend_k"]
    lines += ["", f"Search engines at k={k} on {config['backend_queries']} queries (recall of the exact top-10):", ""]
    lines += ["| method | exact SparseIndex ms | " + " | ".join(
        f"{engine} recall | {engine} ms" for engine in config["backends"]) + " |",
        "|---|---:|" + "---:|---:|" * len(config["backends"])]
    for run in ("ncl_topk", "csr", "csr_cosine"):
        if run in runs:
            cells = [_cell(_values(records, run, f"query_ms_k{k}"), 3)]
            for engine in config["backends"]:
                cells += [_cell(_values(records, run, f"{engine}_recall_vs_exact_k{k}"), 3),
                          _cell(_values(records, run, f"{engine}_query_ms_k{k}"), 3)]
            lines.append(f"| {METHODS[run]} | " + " | ".join(cells) + " |")
    lines += ["", "| method | training s (all its models) | NCL active dims before the cut |", "|---|---:|---:|"]
    for run in runs:
        lines.append(f"| {METHODS[run]} | {_cell(_values(records, run, 'train_s'), 0)} | "
                     f"{_cell(_values(records, run, 'active_dims_full'), 1)} |")
    lines += ["", "| seed | training, all methods | wall time of this pass | load average before / after |",
              "|---|---:|---:|---|"]
    for record in records:
        lines.append(f"| {record['seed']} | {record['train_seconds']} s | {record['wall_seconds']} s | "
                     f"{record['load_average_before'][0]} / {record['load_average_after'][0]} |")
    return lines


def _winner(records: list[dict], runs: list[str], metric: str) -> str:
    ranked = sorted((statistics.mean(values), run) for run in runs if (values := _values(records, run, metric)))
    (best, first), (second, runner_up) = ranked[-1], ranked[-2]
    spreads = [_spread(_values(records, run, metric)) for run in (first, runner_up)]
    close = "~ " if best - second < max(spreads) else ""
    return f"{close}{METHODS[first]} ({best:.4f}; next {METHODS[runner_up]} {second:.4f})"


def _plot(records: list[dict], config: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    budgets = config["budgets"]
    panels = (("stsb_spearman", "STS-B dev Spearman"), ("ndcg@10", "duplicate retrieval NDCG@10"))
    figure, axes = plt.subplots(1, len(panels), figsize=(11, 4.2))
    for axis, (metric, title) in zip(axes, panels):
        for run, label in METHODS.items():
            series = [_values(records, run, f"{metric}_k{k}") for k in budgets]
            if not all(series):
                continue
            means = [statistics.mean(values) for values in series]
            spreads = [_spread(values) for values in series]
            axis.errorbar(budgets, means, yerr=spreads, marker="o", capsize=3, label=label,
                          linestyle="--" if run == "base" else "-")
        axis.set_xscale("log", base=2)
        axis.set_xticks(budgets, [str(k) for k in budgets])
        axis.set_xlabel("active dimensions per embedding (k)")
        axis.set_title(title)
        axis.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    model = config["model"] or "all-MiniLM-L6-v2"
    figure.suptitle(f"{model} fine-tuned on STS-B train pairs, STS-B dev, mean ± std over {len(records)} seeds")
    figure.tight_layout()
    figure.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
