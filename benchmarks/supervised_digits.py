"""``ncl-ext run supervised-nce`` over several seeds: CE vs NCE (with and without an MLP projector) on the digits.

Usage::

    python benchmarks/supervised_digits.py              # seeds 0 1 2, the default settings
    python benchmarks/supervised_digits.py epochs=60 --seeds 0

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

from typing import Any

from _seeds import seed_benchmark

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


def describe(config: dict[str, Any]) -> str:
    projector = "→".join(map(str, config["projector"]))
    return (
        f"{config['backbone']}, projector {projector} for the _mlp rows, {config['epochs']} epochs, batch "
        f"{config['batch_size']}, {config['optimizer']}, nonneg_weights={config['nonneg_weights']}"
    )


if __name__ == "__main__":
    seed_benchmark(
        recipe="supervised-nce",
        result_name="supervised_digits",
        title="`ncl-ext run supervised-nce` (digits), CE vs NCE per seed",
        columns=COLUMNS,
        targets=targets,
        describe=describe,
        description=__doc__.split("\n")[0],
    )
