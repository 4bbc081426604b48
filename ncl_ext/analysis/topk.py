"""Exact dense top-k by inner product, a block of queries at a time (bounded memory).

Ties are broken towards the lower item index, as in
:class:`~ncl_ext.analysis.sparse_index.SparseIndex`: ``torch.topk`` alone returns tied
items in an order that depends on the device and the kernel, so results could change
with the backend.
"""

from __future__ import annotations

import torch

# Scores held at once: block_rows x num_items floats (2**25 floats = 128 MiB).
_MAX_BLOCK_SCORES = 2**25


def top_k_lowest_index_ties(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``scores.topk(k, dim=1)`` with ties broken towards the lower column index.

    Returns ``(values, indices)`` sorted by decreasing value, then increasing index. Costs
    one ``topk`` plus one comparison pass over ``scores``; the rows where items tied with
    the k-th value are left out by ``topk`` are redone with one more ``topk`` on the ties.

    Examples:
        >>> scores = torch.tensor([[0.5, 0.9, 0.5, 0.5, 0.1]])
        >>> top_k_lowest_index_ties(scores, 3)[1].tolist()
        [[1, 0, 2]]
    """
    values, indices = scores.topk(k, dim=1)
    kth = values[:, -1:]
    tied_kept = (values == kth).sum(1)
    crossing = torch.nonzero((scores == kth).sum(1) > tied_kept).flatten()
    if len(crossing) > 0:
        # Among the items equal to the k-th value, keep the lowest indices: the largest
        # keys ``num_items - index`` (0 for the items that are not tied).
        num_items = scores.shape[1]
        columns = torch.arange(num_items, 0, -1, dtype=torch.int32, device=scores.device)
        keys = torch.where(scores[crossing] == kth[crossing], columns, 0)
        lowest_tied = num_items - keys.topk(k, dim=1).values
        first_tied = k - tied_kept[crossing]  # tied items fill the last slots of the row
        slots = torch.arange(k, device=scores.device)
        take = (slots - first_tied[:, None]).clamp(min=0)
        indices[crossing] = torch.where(slots >= first_tied[:, None], lowest_tied.gather(1, take), indices[crossing])
    # Within the k kept: sort by index, then stably by decreasing value.
    indices, order = indices.sort(dim=1)
    values = values.gather(1, order)
    values, order = values.sort(dim=1, descending=True, stable=True)
    return values, indices.gather(1, order)


def dense_top_k(
    queries: torch.Tensor, database: torch.Tensor, k: int, exclude_self: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-``k`` inner products ``queries @ database.T`` per query: ``(scores, indices)``, best first.

    Computed ``max(1, 2**25 // num_items)`` queries at a time on the queries' device, so a
    100,000 x 2,048 database never needs a 100,000 x 100,000 score matrix.
    ``exclude_self`` drops item ``i`` from the results of query ``i`` (queries are the
    database rows). Equal scores: the lower item index first.

    Examples:
        >>> database = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
        >>> scores, indices = dense_top_k(torch.tensor([[1.0, 0.0]]), database, k=2)
        >>> indices.tolist(), scores.tolist()
        ([[0, 2]], [[1.0, 1.0]])
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
        values, indices = top_k_lowest_index_ties(scores, k)
        all_scores.append(values)
        all_indices.append(indices)
    return torch.cat(all_scores), torch.cat(all_indices)
