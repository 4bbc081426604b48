"""``ncl-ext run sentence-embedding`` over several seeds: base vs CL vs NCL all-MiniLM-L6-v2 on STS-B dev.

Usage::

    python benchmarks/sentence_stsb.py --data-root ../shared/data/stsbenchmark          # seeds 0 1 2
    python benchmarks/sentence_stsb.py --data-root DIR --seeds 0 scale=30

What is measured. For each seed, one call of the ``sentence-embedding`` recipe with the
offline default (the packaged all-MiniLM-L6-v2; CL and NCL fine-tune all its layers and a
new head on the STS-B train pairs scored >= 3.5; the ``stsb`` preset, whose
``max_active_dims`` is ``TOP_K``) into a fresh output folder: STS-B dev Spearman of cosine
similarity on all dimensions, on the 25% of dimensions with the largest expected
activation, on the first 25%, and (NCL) on each embedding cut to its ``TOP_K`` largest
values; the sparsity of each; and the time of exact top-10 cosine search of every dev
sentence among all of them with :class:`ncl_ext.analysis.SparseIndex` against a dense
matrix product, on the embeddings the row describes (best of 5). ``TOP_K`` and the
recipe's ``scale``, ``nonneg``, ``head_lr``, ``epochs``, ``lr``, ``trainable_layers`` and
``min_score`` were chosen on 20% of the STS-B train pairs held out from training
(``benchmarks/results/selection_sentence_embedding_*.md``), never on dev. Targets per seed:
NCL's top-``TOP_K`` Spearman within 1 point of CL's with at least 70% zeros, NCL's EA-25%
Spearman above its first-25% Spearman, and the whole recipe under 10 minutes.

Results go to ``benchmarks/results/sentence_stsb.md`` and ``.json``.
"""

from __future__ import annotations

import timeit
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from _seeds import seed_benchmark
from sentence_transformers.util import select_max_active_dims

from ncl_ext.analysis import SparseIndex
from ncl_ext.analysis.loading import load_run_features

#: Active dimensions kept per NCL embedding: the ``stsb`` preset's ``max_active_dims``, chosen on the validation split.
TOP_K = 256
COLUMNS = (
    ("stsb_spearman", "Spearman"), ("sparsity", "sparsity"), ("stsb_spearman_ea25", "EA 25%"),
    ("stsb_spearman_trunc25", "first 25%"), (f"stsb_spearman_top{TOP_K}", f"top-{TOP_K}"),
    (f"sparsity_top{TOP_K}", f"sparsity top-{TOP_K}"), ("search_ms_dense", "dense search ms"),
    ("search_ms_sparse", "SparseIndex ms"),
)


def search_times(output: Path, runs: dict[str, dict]) -> None:
    """Exact top-10 cosine search of every dev sentence, SparseIndex vs a dense product (NCL: its top-K rows)."""
    for name, metrics in runs.items():
        embeddings = load_run_features(output / name)["features"]
        if name == "ncl":
            embeddings = select_max_active_dims(embeddings, TOP_K)
        database = F.normalize(embeddings, dim=1)
        index = SparseIndex(database)
        for key, search in (("search_ms_dense", partial(_dense_search, database, 10)),
                            ("search_ms_sparse", partial(index.search, database, 10))):
            metrics[key] = 1000 * min(timeit.repeat(search, number=1, repeat=5))  # the best of 5, in ms


def _dense_search(database: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.topk(database @ database.T, k, dim=1)


def targets(runs: dict, wall: float) -> dict[str, bool]:
    if not {"cl", "ncl"} <= runs.keys():  # a variant without both runs (e.g. runs=cl) has no CL-vs-NCL target
        return {"under_10_minutes": wall < 600}
    cl, ncl = runs["cl"], runs["ncl"]
    return {
        f"ncl_top{TOP_K}_spearman_within_1pt": ncl[f"stsb_spearman_top{TOP_K}"] >= cl["stsb_spearman"] - 0.01,
        f"ncl_top{TOP_K}_sparsity>=0.7": ncl[f"sparsity_top{TOP_K}"] >= 0.7,
        "ncl_ea25>first25": ncl["stsb_spearman_ea25"] > ncl["stsb_spearman_trunc25"],
        "under_10_minutes": wall < 600,
    }


def describe(config: dict[str, Any]) -> str:
    layers = "all" if config["trainable_layers"] == -1 else f"top {config['trainable_layers']}"
    return (
        f"all-MiniLM-L6-v2, {layers} layers + a {config['head_dim']}-wide head, {config['epochs']} epochs, "
        f"batch {config['batch_size']}, scale {config['scale']}, lr {config['lr']} / head {config['head_lr']}, "
        f"nonneg={config['nonneg']}; STS-B train pairs scored >= {config['min_score']}, evaluated on STS-B dev "
        "(choices made on held-out train pairs)"
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
        measure=search_times,
    )
