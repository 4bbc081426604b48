"""``ncl-ext run sentence-embedding`` over several seeds: base vs CL vs NCL all-MiniLM-L6-v2 on STS-B.

Usage::

    python benchmarks/sentence_stsb.py --data-root ../shared/data/stsbenchmark          # seeds 0 1 2
    python benchmarks/sentence_stsb.py --data-root DIR --seeds 0 scale=18

What is measured. For each seed, one call of the ``sentence-embedding`` recipe with the
offline default (the packaged all-MiniLM-L6-v2; CL and NCL fine-tune its top layers and a
new head on the STS-B train pairs scored >= 4) into a fresh output folder: STS-B dev
Spearman of cosine similarity on all dimensions, on the 25% of dimensions with the largest
expected activation and on the first 25%, the share of zero entries, and the time of exact
top-10 search over the encoded dev sentences with ``SparseIndex`` versus a dense product.
Targets per seed: NCL Spearman within 1 point of CL's, NCL sparsity >= 0.7, NCL's EA-25%
Spearman above its first-25% Spearman, and the whole recipe under 10 minutes.

Results go to ``benchmarks/results/sentence_stsb.md`` and ``.json``.
"""

from __future__ import annotations

from typing import Any

from _seeds import seed_benchmark

COLUMNS = (
    ("stsb_spearman", "Spearman"), ("sparsity", "sparsity"), ("stsb_spearman_ea25", "EA 25%"),
    ("stsb_spearman_trunc25", "first 25%"), ("search_speedup", "sparse search speed-up"),
)


def targets(runs: dict, wall: float) -> dict[str, bool]:
    cl, ncl = runs["cl"], runs["ncl"]
    return {
        "ncl_spearman_within_1pt": ncl["stsb_spearman"] >= cl["stsb_spearman"] - 0.01,
        "ncl_sparsity>=0.7": ncl["sparsity"] >= 0.7,
        "ncl_ea25>first25": ncl["stsb_spearman_ea25"] > ncl["stsb_spearman_trunc25"],
        "under_10_minutes": wall < 600,
    }


def describe(config: dict[str, Any]) -> str:
    layers = "all" if config["trainable_layers"] == -1 else f"top {config['trainable_layers']}"
    return (
        f"all-MiniLM-L6-v2, {layers} layers + a {config['head_dim']}-wide head, {config['epochs']} epochs, "
        f"batch {config['batch_size']}, scale {config['scale']}, lr {config['lr']} / head {config['head_lr']}, "
        f"nonneg={config['nonneg']}; STS-B train pairs scored >= {config['min_score']}, evaluated on STS-B dev"
    )


if __name__ == "__main__":
    seed_benchmark(
        recipe="sentence-embedding",
        result_name="sentence_stsb",
        title="`ncl-ext run sentence-embedding` (STS-B), base vs CL vs NCL per seed",
        columns=COLUMNS,
        targets=targets,
        describe=describe,
        description=__doc__.split("\n")[0],
    )
