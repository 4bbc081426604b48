"""How the digits default's projector width was chosen: on a validation split of the training digits.

Runs ``ncl-ext run vision-ssl`` with ``holdout=0.2`` (20% of the training digits, per class,
held out; evaluation scores them instead of the test digits) for each projector width and
seed, and picks the width with the highest NCL ``precision@10_ea25`` (retrieval with the 25%
of dimensions of highest expected activation) averaged over the seeds. The test digits are not
touched here; ``benchmarks/vision_digits.py`` reports the chosen width on them.

Usage:
    python benchmarks/vision_digits_selection.py [--widths 256 512 1024 2048] [--seeds 0 1]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from ncl_ext.recipes import run_recipe

RESULTS = Path(__file__).resolve().parent / "results"
COLUMNS = ("linear_probe_acc", "knn_acc", "sparsity", "precision@10", "precision@10_ea25", "precision@10_random25")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--widths", type=int, nargs="+", default=[256, 512, 1024, 2048])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    args = parser.parse_args()
    torch.set_num_threads(2)

    rows = []
    for width in args.widths:
        for seed in args.seeds:
            started = time.perf_counter()
            with tempfile.TemporaryDirectory() as output:
                overrides = [*args.overrides, f"projector={width},{width}", f"seed={seed}", "holdout=0.2"]
                results = run_recipe("vision-ssl", overrides=overrides, output=output, device="cpu")
            for run, metrics in results["runs"].items():
                rows.append({"width": width, "seed": seed, "run": run, **{c: metrics[c] for c in COLUMNS},
                             "seconds": round(time.perf_counter() - started, 1)})
            print(rows[-2], rows[-1], flush=True)

    def mean(width: int, run: str, column: str) -> float:
        values = [r[column] for r in rows if r["width"] == width and r["run"] == run]
        return sum(values) / len(values)

    chosen = max(args.widths, key=lambda width: mean(width, "ncl", "precision@10_ea25"))
    lines = [
        "# vision-ssl digits: choosing the projector width on a validation split",
        "",
        f"`python benchmarks/vision_digits_selection.py --widths {' '.join(map(str, args.widths))} --seeds "
        f"{' '.join(map(str, args.seeds))}`: `holdout=0.2` (validation = 20% of the training digits per class); "
        "the test digits are not used. Rule: the width with the highest NCL precision@10_ea25, mean over seeds.",
        "",
        "| width | run | " + " | ".join(COLUMNS) + " |",
        "|---:|---|" + "---:|" * len(COLUMNS),
    ]
    for width in args.widths:
        for run in ("cl", "ncl"):
            lines.append(f"| {width} | {run} | " + " | ".join(f"{mean(width, run, c):.4f}" for c in COLUMNS) + " |")
    lines += ["", f"Chosen: projector {chosen},{chosen}."]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "vision_digits_selection.md").write_text("\n".join(lines) + "\n")
    (RESULTS / "vision_digits_selection.json").write_text(json.dumps({"rows": rows, "chosen": chosen}, indent=2))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
