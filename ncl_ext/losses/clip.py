"""CLIP and SigLIP losses with open_clip's call contract, optionally on non-negative embeddings.

Drop-in replacements for ``open_clip.loss.ClipLoss`` (Radford et al., "Learning Transferable
Visual Models From Natural Language Supervision", ICML 2021, arXiv:2103.00020) and
``open_clip.loss.SigLipLoss`` (Zhai et al., "Sigmoid Loss for Language Image
Pre-Training", ICCV 2023, arXiv:2303.15343): same arguments, same value. ``nonneg=mode``
makes both embeddings non-negative and re-normalises them before the loss, the
non-negative contrastive learning of Wang, Zhang, Guo, Wang (ICLR 2024, arXiv:2403.12459)
applied to image-text pairs.

Both losses share two behaviours:

- Dead rows. With ``nonneg=mode``, an embedding whose norm after the map is below ``1e-6``
  (every unit dead after ReLU) becomes the zero vector: its logits are all ``logit_bias``
  and it receives **no gradient**, even with ``rep_relu``
  (see :mod:`ncl_ext.losses._normalize`). Live rows get open_clip's values and gradients.
  With ``nonneg=None`` the features are used as given. If every image embedding or every
  text embedding is dead (norm below ``1e-6``), the features get no gradient at all and the
  loss raises a ValueError.
- Precision. Float16 / bfloat16 features (and a 16-bit ``logit_scale`` / ``logit_bias``), and
  inputs met inside ``torch.autocast``, are computed in float32 with autocast disabled: the
  loss is float32 and every gradient arrives in its input's dtype. Float64 stays float64.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ncl_ext import distributed
from ncl_ext._checks import (
    check_chunk_size,
    check_nonneg_mode,
    check_pair,
    check_scalar_tensor,
)
from ncl_ext.losses._logsumexp import masked_logsumexp
from ncl_ext.losses._normalize import check_not_all_dead, nonneg_normalize
from ncl_ext.losses._precision import autocast_disabled, to_compute_dtype

Scalar = torch.Tensor | float


class ClipLoss(nn.Module):
    """Symmetric InfoNCE between image and text embeddings, as ``open_clip.loss.ClipLoss``.

    ``loss = (CE(logits_per_image, labels) + CE(logits_per_text, labels)) / 2`` with
    ``logits_per_image = logit_scale * image_features @ text_features.T (+ logit_bias)``; the
    bias shifts a whole row of logits, so it cancels in the softmax (as in open_clip).

    Args:
        nonneg: ``None`` uses the features as given (open_clip expects them L2-normalised);
            a mode of :func:`ncl_ext.nonneg` maps both embeddings through it, then L2-normalises.
        local_loss: in distributed training, score only the local rows against all gathered
            columns (the option that scales); otherwise every rank computes the full loss.
        gather_with_grad: gather the other ranks' features with gradients
            (:func:`ncl_ext.distributed.gather_with_grad`); otherwise they are constants.
            With ``local_loss=True, gather_with_grad=True`` DDP's averaged gradients equal the
            single-process full-batch gradients.
        cache_labels: accepted for drop-in compatibility with open_clip; this implementation
            builds no label tensor (positives are row-wise dot products), so there is nothing to cache.
        rank, world_size: taken from the default process group when ``None``.
        chunk_size: ``None`` builds each ``N x N`` logit matrix at once; an int processes
            ``chunk_size`` rows at a time and recomputes them in backward (same values and
            gradients, memory ``O(chunk_size * N)``).
        check_finite: raise a ValueError on NaN / Inf inputs and when every image or every
            text embedding is dead (one value read back by the host each); ``False`` skips both.

    Examples:
        >>> import torch, torch.nn.functional as F
        >>> loss_fn = ClipLoss(nonneg="relu")
        >>> image, text = F.normalize(torch.randn(4, 8), dim=1), F.normalize(torch.randn(4, 8), dim=1)
        >>> loss_fn(image, text, logit_scale=torch.tensor(10.0), output_dict=True).keys()
        dict_keys(['contrastive_loss'])
    """

    def __init__(
        self,
        nonneg: str | None = None,
        local_loss: bool = False,
        gather_with_grad: bool = False,
        cache_labels: bool = True,
        rank: int | None = None,
        world_size: int | None = None,
        chunk_size: int | None = None,
        check_finite: bool = True,
    ) -> None:
        super().__init__()
        self.nonneg = check_nonneg_mode(nonneg)
        self.local_loss = local_loss
        self.gather_with_grad = gather_with_grad
        self.cache_labels = cache_labels
        self.rank = rank
        self.world_size = world_size
        self.chunk_size = check_chunk_size(chunk_size)
        self.check_finite = check_finite

    def forward(
        self,
        image_features: torch.Tensor,
        text_features: torch.Tensor,
        logit_scale: Scalar,
        logit_bias: Scalar | None = None,
        output_dict: bool = False,
    ) -> torch.Tensor | dict[str, torch.Tensor]:
        """Return the loss (or ``{"contrastive_loss": loss}``) of the pairs ``(image[i], text[i])``."""
        _check_inputs(image_features, text_features, logit_scale, logit_bias, self.check_finite)
        rank, world_size = _rank_and_world_size(self.rank, self.world_size)
        with autocast_disabled(image_features.device.type):
            loss = self._loss(image_features, text_features, logit_scale, logit_bias, rank, world_size)
        return {"contrastive_loss": loss} if output_dict else loss

    def _loss(self, image_features, text_features, logit_scale, logit_bias, rank, world_size):
        images, texts, logit_scale, logit_bias = _prepare(
            image_features, text_features, logit_scale, logit_bias, self.nonneg
        )
        if world_size > 1:
            all_images = self._gather(images, rank)
            all_texts = self._gather(texts, rank)
            if self.local_loss:  # local rows against all columns; row i's positive is column offset + i
                image_rows, text_rows, offset = images, texts, rank * images.shape[0]
            else:
                image_rows, text_rows, offset = all_images, all_texts, 0
        else:
            all_images, all_texts, image_rows, text_rows, offset = images, texts, images, texts, 0
        if self.check_finite:
            check_not_all_dead(all_images, "image_features", self.nonneg)
            check_not_all_dead(all_texts, "text_features", self.nonneg)
        image_loss = _softmax_cross_entropy(image_rows, all_texts, offset, logit_scale, logit_bias, self.chunk_size)
        text_loss = _softmax_cross_entropy(text_rows, all_images, offset, logit_scale, logit_bias, self.chunk_size)
        return (image_loss + text_loss) / 2

    def _gather(self, features: torch.Tensor, rank: int) -> torch.Tensor:
        if self.gather_with_grad:
            return distributed.gather_with_grad(features)
        gathered = distributed.gather(features)
        if self.local_loss:
            return gathered
        # open_clip's convention: without gathered gradients, the local slice keeps its gradient.
        parts = list(gathered.split(features.shape[0]))
        parts[rank] = features
        return torch.cat(parts)

    def extra_repr(self) -> str:
        return (
            f"nonneg={self.nonneg!r}, local_loss={self.local_loss}, gather_with_grad={self.gather_with_grad}, "
            f"chunk_size={self.chunk_size}"
        )


class SigLipLoss(nn.Module):
    """Pairwise sigmoid loss between image and text embeddings, as ``open_clip.loss.SigLipLoss``.

    ``loss = -sum_ij log sigmoid(y_ij * (logit_scale * image_i . text_j + logit_bias)) / N`` with
    ``y_ij = +1`` for the matching pair and ``-1`` otherwise (a sum over pairs divided by the
    number of images, as open_clip).

    In distributed training (``world_size > 1``) the texts of every rank are gathered with
    gradients and each rank scores its local images against all of them: the per-rank value
    and gradients of open_clip's distributed SigLipLoss (whose ``dist_impl`` options all compute
    this sum). The per-rank loss divides by the local batch size, so DDP's averaged gradients
    equal the single-process full-batch gradients.

    Args:
        nonneg: ``None`` uses the features as given; a mode of :func:`ncl_ext.nonneg` maps both
            embeddings through it, then L2-normalises them.
        rank, world_size: taken from the default process group when ``None``.
        check_finite: raise a ValueError on NaN / Inf inputs and when every (local) image or
            every (gathered) text embedding is dead; ``False`` skips both.

    Examples:
        >>> import torch, torch.nn.functional as F
        >>> loss_fn = SigLipLoss(nonneg="relu")
        >>> image, text = F.normalize(torch.randn(4, 8), dim=1), F.normalize(torch.randn(4, 8), dim=1)
        >>> loss_fn(image, text, torch.tensor(10.0), torch.tensor(-10.0)).shape
        torch.Size([])
    """

    def __init__(
        self,
        nonneg: str | None = None,
        rank: int | None = None,
        world_size: int | None = None,
        check_finite: bool = True,
    ) -> None:
        super().__init__()
        self.nonneg = check_nonneg_mode(nonneg)
        self.rank = rank
        self.world_size = world_size
        self.check_finite = check_finite

    def forward(
        self,
        image_features: torch.Tensor,
        text_features: torch.Tensor,
        logit_scale: Scalar,
        logit_bias: Scalar | None,
        output_dict: bool = False,
    ) -> torch.Tensor | dict[str, torch.Tensor]:
        """Return the loss (or ``{"contrastive_loss": loss}``) of the pairs ``(image[i], text[i])``."""
        _check_inputs(image_features, text_features, logit_scale, logit_bias, self.check_finite)
        rank, world_size = _rank_and_world_size(self.rank, self.world_size)
        with autocast_disabled(image_features.device.type):
            loss = self._loss(image_features, text_features, logit_scale, logit_bias, rank, world_size)
        return {"contrastive_loss": loss} if output_dict else loss

    def _loss(self, image_features, text_features, logit_scale, logit_bias, rank, world_size):
        images, texts, logit_scale, logit_bias = _prepare(
            image_features, text_features, logit_scale, logit_bias, self.nonneg
        )
        batch_size = images.shape[0]
        all_texts = distributed.gather_with_grad(texts) if world_size > 1 else texts
        if self.check_finite:
            check_not_all_dead(images, "image_features", self.nonneg)
            check_not_all_dead(all_texts, "text_features", self.nonneg)
        offset = rank * batch_size if world_size > 1 else 0
        bias = 0.0 if logit_bias is None else logit_bias
        logits = logit_scale * images @ all_texts.T + bias
        positives = logit_scale * (images * all_texts[offset : offset + batch_size]).sum(dim=1) + bias
        # Every pair as a negative, then the positives corrected: log s(x) - log s(-x) = x.
        return -(F.logsigmoid(-logits).sum() + positives.sum()) / batch_size

    def extra_repr(self) -> str:
        return f"nonneg={self.nonneg!r}"


def _check_inputs(image_features, text_features, logit_scale, logit_bias, check_finite):
    check_pair(image_features, text_features, ("image_features", "text_features"), check_finite)
    check_scalar_tensor(logit_scale, "logit_scale", check_finite)
    if logit_bias is not None:
        check_scalar_tensor(logit_bias, "logit_bias", check_finite)


def _prepare(image_features, text_features, logit_scale, logit_bias, mode):
    """Everything in the compute dtype (float32 for 16-bit inputs); features mapped and normalised."""
    images, texts = to_compute_dtype(image_features), to_compute_dtype(text_features)
    if isinstance(logit_scale, torch.Tensor):
        logit_scale = to_compute_dtype(logit_scale)
    if isinstance(logit_bias, torch.Tensor):
        logit_bias = to_compute_dtype(logit_bias)
    if mode is not None:
        images, texts = nonneg_normalize(images, mode), nonneg_normalize(texts, mode)
    return images, texts, logit_scale, logit_bias


def _rank_and_world_size(rank: int | None, world_size: int | None) -> tuple[int, int]:
    rank = distributed.get_rank() if rank is None else rank
    world_size = distributed.get_world_size() if world_size is None else world_size
    if world_size > 1 and not distributed.is_distributed():
        raise ValueError(f"world_size={world_size} needs an initialised torch.distributed process group")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank}")
    return rank, world_size


def _softmax_cross_entropy(rows, columns, offset, logit_scale, logit_bias, chunk_size):
    """Mean over ``rows`` of the cross-entropy of ``logit_scale * rows @ columns.T + logit_bias``,
    the positive of row ``i`` being column ``offset + i``."""
    log_denominators = masked_logsumexp(rows * logit_scale, columns, chunk_size=chunk_size)
    positives = logit_scale * (rows * columns[offset : offset + rows.shape[0]]).sum(dim=1)
    if logit_bias is not None:  # added to every logit as in open_clip; it cancels in the softmax
        log_denominators = log_denominators + logit_bias
        positives = positives + logit_bias
    return (log_denominators - positives).mean()
