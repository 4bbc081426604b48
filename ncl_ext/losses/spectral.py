"""The spectral contrastive loss: on non-negative features, exactly a non-negative matrix factorisation.

HaoChen, Wei, Gaidon, Ma, "Provable Guarantees for Self-Supervised Deep Learning with
Spectral Contrastive Loss", NeurIPS 2021 (arXiv:2106.04156), show that
``-2 E[f(x)^T f(x+)] + E[(f(x)^T f(x-))^2]`` equals, up to a constant, the low-rank
factorisation ``||A_bar - F F^T||_F^2`` of the normalised augmentation graph, with the
rows of ``F`` being ``sqrt(p(x)) f(x)``. Wang, Zhang, Guo, Wang, "Non-negative Contrastive
Learning" (ICLR 2024, arXiv:2403.12459, Sec. 3) constrain ``f >= 0``, which turns it into a
symmetric non-negative matrix factorisation whose solution is unique up to permutation.
"""

from __future__ import annotations

import torch
from torch import nn

from ncl_ext._checks import check_nonneg_mode, check_pair
from ncl_ext.distributed import gather_with_grad
from ncl_ext.losses._normalize import check_not_all_dead
from ncl_ext.losses._precision import autocast_disabled, to_compute_dtype
from ncl_ext.nonneg import nonneg as apply_nonneg


class SpectralContrastiveLoss(nn.Module):
    """``-2 E[f(x)^T f(x+)] + E[(f(x)^T f(x-))^2]`` over a batch of pairs, with ``f = nonneg(z)``.

    Normalisation, exactly. Let ``u = nonneg([z1; z2])`` be the ``2N`` views. Features are
    **not** L2-normalised or rescaled: the loss is the matrix-factorisation objective of the
    paper, whose quartic term already fixes the feature scale (HaoChen et al.'s code can
    additionally project features onto a ball of radius ``sqrt(mu)``; that is not done here).

    - attraction: ``-2 * mean_i u_i . u_{N+i}`` over the ``N`` positive pairs ``(z1[i], z2[i])``;
    - repulsion: ``mean_{a, b} (u_a . u_b)^2`` over the ``2N (2N - 2)`` ordered pairs of views
      with ``b != a`` and ``b`` not ``a``'s positive, i.e. every other sample of the batch, both
      views, is a negative (HaoChen et al.'s code uses the cross-view pairs only). With ``N = 1``
      there is no negative and the repulsion is 0.

    Dead rows. A sample whose features are all zero (every unit dead after ReLU) has all dot
    products 0, so it adds nothing to the repulsion, and the loss's gradient with respect to
    it is the attraction term alone, ``-(2 / N) u_positive``, the same term a live row's
    gradient has: bounded, and pointing towards its positive. With ``relu`` it is then zeroed
    by the ReLU; with ``rep_relu`` it reaches the pre-activations and can revive the sample
    (nothing is normalised here, so there is no ``1 / eps`` blow-up). A batch whose rows all
    have norm below ``1e-6`` (over all ranks with ``gather_distributed``) has zero gradient and
    raises a ValueError.

    Precision. The squared dot products overflow float16 already for ``N = 8, D = 64``, so
    float16 / bfloat16 inputs, and inputs met inside ``torch.autocast``, are computed in
    float32 with autocast disabled: the loss is float32 and the gradients with respect to
    ``z1, z2`` arrive in their own dtype. Float64 stays float64.

    Args:
        nonneg: ``None`` for the plain spectral loss, or a mode of :func:`ncl_ext.nonneg`
            (``"relu"`` makes it the NMF objective of NCL).
        gather_distributed: score each rank's ``2N`` local views against the views of every rank
            (gathered with gradients); the per-rank loss averages over its local anchors, so DDP's
            gradient averaging gives the full-batch gradient. Every rank must use the same batch size.
        check_finite: raise a ValueError on NaN / Inf inputs and on a batch with no live row
            (one pass and one value read back by the host each); ``False`` skips both.

    Examples:
        >>> import torch
        >>> loss_fn = SpectralContrastiveLoss(nonneg="relu")
        >>> z = torch.rand(4, 3)
        >>> loss_fn(z, z).shape
        torch.Size([])
    """

    def __init__(self, nonneg: str | None = None, gather_distributed: bool = False, check_finite: bool = True) -> None:
        super().__init__()
        self.nonneg = check_nonneg_mode(nonneg)
        self.gather_distributed = gather_distributed
        self.check_finite = check_finite

    def forward(self, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
        """Return the loss of the pairs ``(z1[i], z2[i])``; both ``(N, dim)``."""
        check_pair(z1, z2, ("z1", "z2"), self.check_finite)
        with autocast_disabled(z1.device.type):
            return self._loss(to_compute_dtype(z1), to_compute_dtype(z2))

    def _loss(self, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
        batch_size, dim = z1.shape
        views = apply_nonneg(torch.cat([z1, z2]), self.nonneg)
        keys = gather_with_grad(views) if self.gather_distributed else views
        if self.check_finite:
            check_not_all_dead(keys, "z1 and z2", self.nonneg)
        positives = (views[:batch_size] * views[batch_size:]).sum(dim=1)
        attraction = -2 * positives.mean()
        if keys.shape[0] <= 2:
            return attraction
        # sum over local anchors a and all views b of (u_a . u_b)^2, by the cheaper of two identities:
        # ||U K^T||_F^2 = <U^T U, K^T K>_F, the latter needs only dim x dim matrices.
        if views.shape[0] * keys.shape[0] <= dim * dim:
            all_pairs = (views @ keys.T).square().sum()
        else:
            all_pairs = ((views.T @ views) * (keys.T @ keys)).sum()
        # Remove b == a and b == positive(a); each positive pair appears once per anchor.
        self_pairs = views.square().sum(dim=1).square().sum()
        negatives = all_pairs - self_pairs - 2 * positives.square().sum()
        repulsion = negatives / (views.shape[0] * (keys.shape[0] - 2))
        return attraction + repulsion

    def extra_repr(self) -> str:
        return f"nonneg={self.nonneg!r}, gather_distributed={self.gather_distributed}"
