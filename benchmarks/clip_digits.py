"""``ncl-ext run clip-finetune`` over several seeds: CL vs NCL CLIP on digit images and captions.

Usage::

    python benchmarks/clip_digits.py                    # seeds 0 1 2, the default settings
    python benchmarks/clip_digits.py epochs=60 --seeds 0

What is measured. For each seed, one call of the ``clip-finetune`` recipe with the
offline default (a small open_clip model from random init, trained on scikit-learn's
digits with varied captions) into a fresh output folder: zero-shot accuracy on the
held-out digits, image-to-text and text-to-image recall@1, and the sparsity and semantic
consistency of both embeddings. Targets per seed: CL zero-shot accuracy >= 0.3, NCL's
within 2 points of CL's, NCL image and text sparsity >= 0.7, and the whole recipe under
5 minutes of wall-clock time.

Results go to ``benchmarks/results/clip_digits.md`` and ``.json``.
"""

from __future__ import annotations

from typing import Any

from _seeds import seed_benchmark

COLUMNS = (
    ("zero_shot_acc", "zero-shot"), ("i2t_recall@1", "i2t R@1"), ("t2i_recall@1", "t2i R@1"),
    ("sparsity_image", "sparsity image"), ("sparsity_text", "sparsity text"),
    ("semantic_consistency_image", "consistency image"), ("semantic_consistency_text", "consistency text"),
)


def targets(runs: dict, wall: float) -> dict[str, bool]:
    cl, ncl = runs["cl"], runs["ncl"]
    return {
        "cl_zero_shot>=0.3": cl["zero_shot_acc"] >= 0.3,
        "ncl_zero_shot_within_2pt": ncl["zero_shot_acc"] >= cl["zero_shot_acc"] - 0.02,
        "ncl_sparsity>=0.7": min(ncl["sparsity_image"], ncl["sparsity_text"]) >= 0.7,
        "under_5_minutes": wall < 300,
    }


def describe(config: dict[str, Any]) -> str:
    return (
        f"open_clip model {config['model']} from random init, {config['epochs']} epochs, batch {config['batch_size']}, "
        f"lr {config['lr']}, nonneg={config['nonneg']}; held-out test fraction {config['test_fraction']}"
    )


if __name__ == "__main__":
    seed_benchmark(
        recipe="clip-finetune",
        result_name="clip_digits",
        title="`ncl-ext run clip-finetune` (digits), CL vs NCL per seed",
        columns=COLUMNS,
        targets=targets,
        describe=describe,
        description=__doc__.split("\n")[0],
    )
