"""Exact dense top-k by inner product, a block of queries at a time (bounded memory)."""

from __future__ import annotations

import torch

# Scores held at once: block_rows x num_items floats (2**25 floats = 128 MiB).
_MAX_BLOCK_SCORES = 2**25


def dense_top_k(
    queries: torch.Tensor, database: torch.Tensor, k: int, exclude_self: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-``k`` inner products ``queries @ database.T`` per query: ``(scores, indices)``, best first.

    Computed ``max(1, 2**25 // num_items)`` queries at a time on the queries' device, so a
    100,000 x 2,048 database never needs a 100,000 x 100,000 score matrix.
    ``exclude_self`` drops item ``i`` from the results of query ``i`` (queries are the
    database rows).
    """
    num_items = database.shape[0]
    block_rows = max(1, _MAX_BLOCK_SCORES // num_items)
    database_t = database.T
    all_scores, all_indices = [], []
    for start in range(0, queries.shape[0], block_rows):
        scores = queries[start : start + block_rows] @ database_t
        if exclude_self:
            rows = torch.arange(scores.shape[0], device=scores.device)
            scores[rows, rows + start] = -torch.inf
        top = scores.topk(k, dim=1)
        all_scores.append(top.values)
        all_indices.append(top.indices)
    return torch.cat(all_scores), torch.cat(all_indices)
