"""``ncl-ext run supervised-nce`` over several seeds: CE vs NCE (with and without an MLP projector) on the digits.

Usage::

    python benchmarks/supervised_digits.py              # seeds 0 1 2, the default settings
    python benchmarks/supervised_digits.py --seeds 0 epochs=60

What is measured. For each seed, one call of the ``supervised-nce`` recipe with the
default ``digits`` preset into a fresh output folder: the final test accuracy of the four
rows (``ce``, ``nce``, ``ce_mlp``, ``nce_mlp``) and the sparsity, semantic consistency and
active dimensions of the features that feed each classifier (test set). Targets per seed:
NCE's feature sparsity >= 0.5 with test accuracy no more than 1 point below CE's (the
``nce`` row against ``ce``, and the ``nce_mlp`` row against ``ce_mlp``), and the whole
recipe (four trainings, four evaluations) under 5 minutes of wall-clock time.

Results go to ``benchmarks/results/supervised_digits.md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch

from _seeds import metric_rows, run_per_seed, verdict_rows

RESULTS = Path(__file__).resolve().parent / "results"
COLUMNS = (
    ("test_acc", "test accuracy"), ("sparsity", "sparsity"), ("semantic_consistency", "consistency"),
    ("active_dims", "active dims"),
)


def targets(runs: dict, wall: float) -> dict[str, bool]:
    checks = {}
    for plain, nonneg in (("ce", "nce"), ("ce_mlp", "nce_mlp")):
        checks[f"{nonneg}_sparsity>=0.5"] = runs[nonneg]["sparsity"] >= 0.5
        checks[f"{nonneg}_acc_within_1pt_of_{plain}"] = runs[nonneg]["test_acc"] >= runs[plain]["test_acc"] - 0.01
    checks["under_5_minutes"] = wall < 300
    return checks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="recipe overrides, e.g. epochs=60")
    args = parser.parse_args()

    records = run_per_seed("supervised-nce", args.seeds, args.overrides, args.device)
    for record in records:
        record["targets"] = targets(record["runs"], record["wall_seconds"])
    config = records[0]["config"]
    table = "\n".join([
        "### `ncl-ext run supervised-nce` (digits), CE vs NCE per seed",
        "",
        (
            f"{config['backbone']}, projector {'→'.join(map(str, config['projector']))} for the _mlp rows, "
            f"{config['epochs']} epochs, batch {config['batch_size']}, {config['optimizer']}, "
            f"nonneg_weights={config['nonneg_weights']}; {torch.get_num_threads()} torch threads, {os.cpu_count()} cores."
        ),
        "",
        *metric_rows(records, COLUMNS),
        "",
        *verdict_rows(records),
    ])
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "supervised_digits.md").write_text(table + "\n")
    (RESULTS / "supervised_digits.json").write_text(json.dumps({"seeds": records}, indent=2) + "\n")
    print(table)


if __name__ == "__main__":
    main()
