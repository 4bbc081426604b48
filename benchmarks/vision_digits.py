"""The main job, ``ncl-ext run vision-ssl``, over several seeds: CL vs NCL on the digits, and its run time.

Usage::

    python benchmarks/vision_digits.py                  # seeds 0 1 2, the default settings
    python benchmarks/vision_digits.py epochs=120 --seeds 0

What is measured. For each seed, one call of the ``vision-ssl`` recipe with the default
``digits`` preset into a fresh output folder (nothing resumed): exactly what
``ncl-ext run vision-ssl seed=S`` runs. The table gives, per seed and run, the linear
probe and kNN accuracy of the backbone features, and the sparsity, semantic consistency
and retrieval precision@10 (all dims, the top 25% of dims by expected activation, a
random 25%) of the projector outputs, then checks the main job's targets per seed:

- NCL sparsity >= 0.8 while CL's < 0.1;
- NCL semantic consistency >= 3x CL's;
- NCL linear-probe accuracy no more than 1 point below CL's;
- NCL precision@10 with the EA top 25% of dims within 1 point of all dims, and random 25% below EA 25%;
- the whole recipe (both trainings, both evaluations) under 5 minutes of wall-clock time.

The load average before and after each seed is recorded: on a CPU shared with other
processes the wall-clock time is pessimistic.

Results go to ``benchmarks/results/vision_digits.md`` and ``.json``.
"""

from __future__ import annotations

from typing import Any

from _seeds import seed_benchmark

COLUMNS = (
    ("linear_probe_acc", "linear probe"), ("knn_acc", "kNN"), ("sparsity", "sparsity"),
    ("semantic_consistency", "consistency"), ("precision@10", "P@10"), ("precision@10_ea25", "P@10 EA 25%"),
    ("precision@10_random25", "P@10 random 25%"),
)


def targets(runs: dict, wall: float) -> dict[str, bool]:
    cl, ncl = runs["cl"], runs["ncl"]
    return {
        "ncl_sparsity>=0.8_and_cl<0.1": ncl["sparsity"] >= 0.8 and cl["sparsity"] < 0.1,
        "consistency>=3x": ncl["semantic_consistency"] >= 3 * cl["semantic_consistency"],
        "probe_within_1pt": ncl["linear_probe_acc"] >= cl["linear_probe_acc"] - 0.01,
        "ea25_within_1pt": ncl["precision@10_ea25"] >= ncl["precision@10"] - 0.01,
        "random25_below_ea25": ncl["precision@10_random25"] < ncl["precision@10_ea25"],
        "under_5_minutes": wall < 300,
    }


def describe(config: dict[str, Any]) -> str:
    projector = "→".join(map(str, config["projector"]))
    return (
        f"{config['backbone']}, projector {projector}, {config['epochs']} epochs, batch {config['batch_size']}, "
        f"{config['optimizer']}"
    )


if __name__ == "__main__":
    seed_benchmark(
        recipe="vision-ssl",
        result_name="vision_digits",
        title="Main job: `ncl-ext run vision-ssl` (digits), CL vs NCL per seed",
        columns=COLUMNS,
        targets=targets,
        describe=describe,
        description=__doc__.split("\n")[0],
    )
