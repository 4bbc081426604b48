"""Cross-modal retrieval: recall@k of image -> text and text -> image search.

Examples:
    >>> import torch
    >>> images = torch.eye(3)
    >>> texts = torch.eye(3)[[0, 2, 1]]
    >>> recall_at_k(images, texts, groups=torch.tensor([0, 1, 2]), k=1)
    0.3333333333333333
"""

from __future__ import annotations

from typing import Any

import torch

from ncl_ext.analysis.retrieval import cosine_top_k

__all__ = ["recall_at_k"]


def recall_at_k(queries: Any, gallery: Any, groups: Any, k: int) -> float:
    """Share of queries with an item of their own group among their ``k`` most cosine-similar gallery items.

    ``queries[i]`` and ``gallery[i]`` belong to ``groups[i]``: a pair's own index, or a class
    / caption id when several gallery items are equally right (interchangeable captions such
    as "a handwritten 7" under a class label).
    """
    _, nearest = cosine_top_k(queries, gallery, k=k)
    groups = torch.as_tensor(groups).cpu()
    return float((groups[nearest.cpu()] == groups[:, None]).any(dim=1).double().mean())
