"""InfoNCE / NT-Xent, the loss non-negative contrastive learning trains with.

NT-Xent (Chen et al., "A Simple Framework for Contrastive Learning of Visual
Representations", ICML 2020, arXiv:2002.05709) on L2-normalised features. Non-negative
contrastive learning (Wang, Zhang, Guo, Wang, "Non-negative Contrastive Learning",
ICLR 2024, arXiv:2403.12459) applies a non-negative map (ReLU) to the features *before*
the normalisation; the official code trains this loss at temperature 0.2.
"""

from __future__ import annotations

import torch
from torch import nn

from ncl_ext._checks import (
    check_chunk_size,
    check_nonneg_mode,
    check_pair,
    check_positive,
)
from ncl_ext.distributed import gather_with_grad, get_rank
from ncl_ext.losses._logsumexp import masked_logsumexp
from ncl_ext.losses._normalize import check_not_all_dead, nonneg_normalize
from ncl_ext.losses._precision import autocast_disabled, to_compute_dtype


class InfoNCELoss(nn.Module):
    """NT-Xent over the ``2N`` views of a batch, optionally on non-negative features (NCL).

    With ``u = normalize(nonneg([z1; z2]))`` (``2N`` rows) and ``s_ab = u_a . u_b / temperature``,
    each of the ``2N`` anchors ``a`` has one positive ``p(a)`` (the other view of the same
    sample) and the ``2N - 2`` other views as negatives::

        loss = mean_a [ -s_a,p(a) + log sum_{b != a} exp(s_ab) ]

    (the denominator has ``2N - 1`` terms: the positive and the negatives). This is the value
    and gradient of ``lightly.loss.NTXentLoss(temperature)``; ``nonneg="relu"`` gives exactly
    lightly's loss on ``relu(z1), relu(z2)``.

    Dead rows. A row whose norm after the map is below ``1e-6`` (a sample whose units are all
    dead after ReLU) becomes the zero vector: its similarities are 0 and it receives **no
    gradient**, even with ``rep_relu`` (the normalisation has no direction to follow at 0; its
    ``1 / eps`` Jacobian would blow the gradient up instead). Live rows get lightly's values
    and gradients. :func:`ncl_ext.losses._normalize.dead_row_fraction` measures the share of
    dead rows; a batch with no live row (over all ranks with ``gather_distributed``) raises a
    ValueError: its loss is a constant, with zero gradient.

    Precision. Float16 / bfloat16 inputs, and inputs met inside ``torch.autocast``, are
    computed in float32 with autocast disabled: the loss is float32 and the gradients with
    respect to ``z1, z2`` arrive in their own dtype. Float64 stays float64.

    The ``2N x 2N`` similarity matrix is built by one matrix product of the stacked views;
    the positives are row-wise dot products and the softmax normaliser is folded into the
    backward matrix products, so no extra copy of the matrix is made (see
    ``benchmarks/losses.py``).

    Args:
        temperature: softmax temperature, > 0.
        nonneg: ``None`` for plain contrastive learning, or a mode of :func:`ncl_ext.nonneg`
            (``"relu"``, ``"rep_relu"``, ...) applied to ``z1`` and ``z2`` before normalisation.
        gather_distributed: gather the features of every rank (with gradients) and score each
            rank's local anchors against all ``2N * world_size`` views. The per-rank loss is the
            mean over the local anchors, so DDP's gradient averaging yields the full-batch
            gradient (see :mod:`ncl_ext.distributed`). Every rank must use the same batch size.
        chunk_size: ``None`` builds the whole ``2N x 2N`` matrix. An int computes it
            ``chunk_size`` anchor rows at a time and recomputes the strips in backward, so memory
            is ``O(chunk_size * 2N)`` instead of ``O(4N^2)``; values and gradients are the same.
        check_finite: raise a ValueError on NaN / Inf inputs and on a batch with no live row.
            Each check is one pass over the features and one value read back by the host;
            ``False`` skips both (a NaN input then gives a NaN loss).

    Examples:
        >>> import torch
        >>> loss_fn = InfoNCELoss(temperature=0.2, nonneg="relu")     # NCL; nonneg=None is CL
        >>> z1, z2 = torch.randn(8, 32), torch.randn(8, 32)
        >>> loss = loss_fn(z1, z2)
        >>> loss.shape
        torch.Size([])
        >>> tiled = InfoNCELoss(temperature=0.2, nonneg="relu", chunk_size=4)
        >>> torch.allclose(tiled(z1, z2), loss)
        True
    """

    def __init__(
        self,
        temperature: float = 0.2,
        nonneg: str | None = None,
        gather_distributed: bool = False,
        chunk_size: int | None = None,
        check_finite: bool = True,
    ) -> None:
        super().__init__()
        self.temperature = check_positive(temperature, "temperature")
        self.nonneg = check_nonneg_mode(nonneg)
        self.gather_distributed = gather_distributed
        self.chunk_size = check_chunk_size(chunk_size)
        self.check_finite = check_finite

    def forward(self, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
        """Return the mean NT-Xent loss of the pairs ``(z1[i], z2[i])``; both ``(N, dim)``."""
        check_pair(z1, z2, ("z1", "z2"), self.check_finite)
        with autocast_disabled(z1.device.type):
            return self._loss(to_compute_dtype(z1), to_compute_dtype(z2))

    def _loss(self, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
        batch_size = z1.shape[0]
        views = nonneg_normalize(torch.cat([z1, z2]), self.nonneg)
        # Anchor a (a local row) is excluded from its own denominator at column a + offset.
        if self.gather_distributed:
            keys, offset = gather_with_grad(views), get_rank() * 2 * batch_size
        else:
            keys, offset = views, 0
        if self.check_finite:
            check_not_all_dead(keys, "z1 and z2", self.nonneg)
        log_denominators = masked_logsumexp(views, keys, 1 / self.temperature, offset, self.chunk_size, unit_rows=True)
        # Both anchors of a pair share the same positive similarity.
        first, second = views.view(2, batch_size, -1).unbind()
        positives = (first * second).sum(dim=1) / self.temperature
        return log_denominators.mean() - positives.mean()

    def extra_repr(self) -> str:
        return (
            f"temperature={self.temperature}, nonneg={self.nonneg!r}, "
            f"gather_distributed={self.gather_distributed}, chunk_size={self.chunk_size}"
        )
