"""Process-group helpers and an all-gather that carries gradients, for losses over all GPUs.

Contrastive losses get better with more negatives, so under data parallelism each rank
scores its *local* rows against the features gathered from *every* rank. All functions
here are no-ops in a single process (torch.distributed not initialised, or one rank), so
the same training script runs on one device and on many.

Gradient-scale convention. :func:`gather_with_grad`'s backward *sums* the gradients that
every rank sends to a slice (a reduce-scatter), which is the derivative of the gather.
Each loss in :mod:`ncl_ext.losses` averages over its local rows only, so the full-batch
loss is the mean of the per-rank losses. DistributedDataParallel then *averages* the
parameter gradients over ranks, and the two conventions compose to exactly the
single-process full-batch gradient::

    L_full = (1/W) sum_r L_r
    grad on rank r  = sum_r' dL_r'/dz_r                   (gather backward sums)
                    = W * dL_full/dz_r
    DDP average     = (1/W) sum_r W * dL_full/dz_r dz_r/dθ = dL_full/dθ

So no extra rescaling is needed (and none must be added). The tests check this identity
with two gloo processes. All ranks must pass tensors of the same shape.

Examples:
    >>> import torch
    >>> from ncl_ext import distributed
    >>> distributed.get_world_size(), distributed.get_rank()
    (1, 0)
    >>> z = torch.randn(4, 8)
    >>> distributed.gather_with_grad(z) is z      # single process: nothing to gather
    True
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.distributed as dist

__all__ = ["gather", "gather_with_grad", "get_rank", "get_world_size", "is_distributed"]


def is_distributed() -> bool:
    """Whether torch.distributed is available and a default process group is initialised."""
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    """This process's rank in the default group, 0 when not distributed."""
    return dist.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    """The number of processes in the default group, 1 when not distributed."""
    return dist.get_world_size() if is_distributed() else 1


def gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate ``tensor`` from every rank along dim 0, differentiably.

    Rank ``r``'s rows sit at ``[r * n, (r + 1) * n)``. The backward pass sums, over all
    ranks, the gradient that lands on this rank's slice (see the module docstring for why
    this is the right scale under DDP). Returns ``tensor`` itself when not distributed.
    """
    if get_world_size() == 1:
        return tensor
    return _autograd_all_gather()(tensor.contiguous())


def gather(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate ``tensor`` from every rank along dim 0 without gradient (a constant copy)."""
    if get_world_size() == 1:
        return tensor.detach()
    parts = [torch.empty_like(tensor) for _ in range(get_world_size())]
    with torch.no_grad():
        dist.all_gather(parts, tensor.detach().contiguous())
    return torch.cat(parts, dim=0)


def _autograd_all_gather() -> Callable[[torch.Tensor], torch.Tensor]:
    """The best differentiable all-gather this torch provides.

    torch >= 2.14 names it ``all_gather_single_autograd`` (``all_gather_tensor_autograd``
    is deprecated there); earlier 2.x releases have ``all_gather_tensor_autograd``; the
    oldest fallback is ``torch.distributed.nn.all_gather`` (deprecated in 2.14).
    """
    from torch.distributed import _functional_collectives as functional

    group = dist.group.WORLD
    for name in ("all_gather_single_autograd", "all_gather_tensor_autograd"):
        if hasattr(functional, name):
            gather_fn = getattr(functional, name)
            return lambda tensor: gather_fn(tensor, 0, group)
    import torch.distributed.nn

    return lambda tensor: torch.cat(torch.distributed.nn.all_gather(tensor), dim=0)
