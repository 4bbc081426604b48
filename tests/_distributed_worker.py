"""What each spawned gloo process of ``test_distributed.py`` runs, and the single-process reference.

A tiny real model is trained for one step on a full batch split over ``WORLD_SIZE`` ranks
(DistributedDataParallel averages the gradients); the same model on the whole batch in one
process gives the reference gradients.
"""

from __future__ import annotations

import datetime
import warnings
from pathlib import Path

import open_clip.loss
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ncl_ext import distributed
from ncl_ext.losses import ClipLoss, InfoNCELoss, SigLipLoss, SpectralContrastiveLoss

WORLD_SIZE = 2
BATCH_PER_RANK = 3
IN_DIM, OUT_DIM = 6, 4


class PairEncoder(nn.Module):
    """One linear encoder for both views (SimCLR-style losses)."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(IN_DIM, OUT_DIM)

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z1, z2 = self.linear(torch.cat([x1, x2])).chunk(2)
        return z1, z2


class ImageTextEncoder(nn.Module):
    """Two linear towers with normalised outputs and a learnable logit scale (and bias), like CLIP."""

    def __init__(self, with_bias: bool) -> None:
        super().__init__()
        self.image = nn.Linear(IN_DIM, OUT_DIM)
        self.text = nn.Linear(IN_DIM, OUT_DIM)
        self.log_scale = nn.Parameter(torch.tensor(2.0))
        self.bias = nn.Parameter(torch.tensor(-1.0)) if with_bias else None

    def forward(self, images: torch.Tensor, texts: torch.Tensor) -> tuple[torch.Tensor, ...]:
        outputs = (F.normalize(self.image(images), dim=1), F.normalize(self.text(texts), dim=1), self.log_scale.exp())
        return outputs if self.bias is None else (*outputs, self.bias)


class InLowPrecision(nn.Module):
    """Casts the features to a 16-bit dtype before ``loss``, as a mixed-precision model would emit them."""

    def __init__(self, loss: nn.Module, dtype: torch.dtype) -> None:
        super().__init__()
        self.loss, self.dtype = loss, dtype

    def forward(self, *features: torch.Tensor) -> torch.Tensor:
        return self.loss(*(f.to(self.dtype) for f in features))


def loss_functions(gather: bool) -> dict[str, tuple[nn.Module, nn.Module]]:
    """Each case: (model, loss); ``gather`` switches the cross-rank gathering on."""
    return {
        "infonce": (PairEncoder(), InfoNCELoss(0.5, nonneg="relu", gather_distributed=gather)),
        "infonce_tiled": (PairEncoder(), InfoNCELoss(0.5, nonneg="relu", gather_distributed=gather, chunk_size=2)),
        "spectral": (PairEncoder(), SpectralContrastiveLoss(nonneg="relu", gather_distributed=gather)),
        # 16-bit features: upcast to float32 before the gather, so every rank gathers float32 rows
        "infonce_bf16": (
            PairEncoder(),
            InLowPrecision(InfoNCELoss(0.5, nonneg="rep_relu", gather_distributed=gather), torch.bfloat16),
        ),
        "spectral_fp16": (
            PairEncoder(),
            InLowPrecision(SpectralContrastiveLoss(nonneg="relu", gather_distributed=gather), torch.float16),
        ),
        "clip": (ImageTextEncoder(False), ClipLoss(nonneg="relu", local_loss=True, gather_with_grad=True)),
        "clip_tiled": (ImageTextEncoder(False), ClipLoss(local_loss=True, gather_with_grad=True, chunk_size=2)),
        "siglip": (ImageTextEncoder(True), SigLipLoss(nonneg="relu")),
    }


CASES = list(loss_functions(False))
#: Cases computed in float32, not float64: their losses agree to float32 precision only.
FLOAT32_CASES = {"infonce_bf16", "spectral_fp16"}


def full_batch() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    x1 = torch.randn(WORLD_SIZE * BATCH_PER_RANK, IN_DIM, generator=generator, dtype=torch.float64)
    return x1, x1 + 0.3 * torch.randn(x1.shape, generator=generator, dtype=torch.float64)


def train_step(case: str, rows: slice) -> tuple[float, dict[str, torch.Tensor]]:
    """One backward pass of ``case`` on ``rows`` of the full batch; returns the loss and parameter grads."""
    torch.manual_seed(0)  # identical initial weights on every rank and in the reference
    model, loss_fn = loss_functions(gather=distributed.is_distributed())[case]
    model = model.double()
    wrapped = DistributedDataParallel(model) if distributed.is_distributed() else model
    x1, x2 = (x[rows] for x in full_batch())
    loss = loss_fn(*wrapped(x1, x2))
    loss.backward()  # DDP averages the parameter gradients over ranks here
    return loss.item(), {name: p.grad.clone() for name, p in model.named_parameters()}


def open_clip_comparison(rank: int) -> dict[str, tuple[torch.Tensor, ...]]:
    """Per-rank loss and local feature gradients of ours and open_clip's losses: ClipLoss with
    every gathering option, and SigLipLoss (open_clip's all-gather exchange)."""
    generator = torch.Generator().manual_seed(1)
    image, text = (
        F.normalize(torch.randn(WORLD_SIZE * BATCH_PER_RANK, OUT_DIM, generator=generator, dtype=torch.float64), dim=1)
        for _ in range(2)
    )
    local = slice(rank * BATCH_PER_RANK, (rank + 1) * BATCH_PER_RANK)
    scale_and_bias = (torch.tensor(7.0, dtype=torch.float64), torch.tensor(-2.0, dtype=torch.float64))
    cases = {"siglip": (SigLipLoss(), open_clip.loss.SigLipLoss(rank=rank, world_size=WORLD_SIZE, dist_impl="gather"))}
    for local_loss in (False, True):
        for gather_with_grad in (False, True):
            options = {"local_loss": local_loss, "gather_with_grad": gather_with_grad}
            cases[f"clip-local_loss={local_loss}-gather_with_grad={gather_with_grad}"] = (
                ClipLoss(**options),
                open_clip.loss.ClipLoss(**options, rank=rank, world_size=WORLD_SIZE),
            )
    results = {}
    for case, loss_fns in cases.items():
        for name, loss_fn in zip(("ours", "open_clip"), loss_fns, strict=True):
            leaves = [image[local].clone().requires_grad_(), text[local].clone().requires_grad_()]
            loss = loss_fn(*leaves, *scale_and_bias)
            results[f"{name}-{case}"] = (loss.detach(), *torch.autograd.grad(loss, leaves))
    return results


def gather_check(rank: int) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Gather rows filled with rank + 1; the gradient of sum(row_index * value) lands summed over ranks.
    Also returns the deprecation warnings raised on the way (``torch.distributed.nn.all_gather`` warns)."""
    local = torch.full((2, 3), float(rank + 1), dtype=torch.float64, requires_grad=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        gathered = distributed.gather_with_grad(local)
        weights = torch.arange(gathered.shape[0], dtype=torch.float64)[:, None]
        (weights * gathered).sum().backward()
    deprecations = [str(w.message) for w in caught if issubclass(w.category, (DeprecationWarning, FutureWarning))]
    return gathered.detach().clone(), local.grad, deprecations


def worker(rank: int, init_file: str, output_dir: str) -> None:
    dist.init_process_group(
        "gloo",
        init_method=f"file://{init_file}",
        rank=rank,
        world_size=WORLD_SIZE,
        timeout=datetime.timedelta(seconds=60),
    )
    try:
        local = slice(rank * BATCH_PER_RANK, (rank + 1) * BATCH_PER_RANK)
        results = {
            "rank": distributed.get_rank(),
            "world_size": distributed.get_world_size(),
            "train_step": {case: train_step(case, local) for case in CASES},
            "open_clip": open_clip_comparison(rank),
            "gather": gather_check(rank),
        }
        torch.save(results, Path(output_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()
