"""SEPIN@k: how much information each feature dimension carries on its own.

Do & Tran, "Theory and Evaluation Metrics for Learning Disentangled Representations",
ICLR 2020, define the separated information of dimension ``i`` as
``I(x; z_i | z_-i) = I(x; z) - I(x; z_-i)`` (``z_-i``: ``z`` without dimension ``i``);
SEPIN@k averages the ``k`` largest. Wang, Zhang, Guo, Wang, "Non-negative Contrastive
Learning", ICLR 2024 (arXiv:2403.12459) report it much higher for NCL than for CL.

**Estimator.** For a deterministic encoder, ``I(x; z)`` is estimated with the InfoNCE lower
bound (van den Oord et al., 2018) on ``n`` samples, with the critic
``f(a, b) = cos(z_a, p_b) / temperature``::

    I_hat(z) = log n + (1/n) sum_a [ f(a, a) - log sum_b exp f(a, b) ]

where ``p_b`` is the positive of sample ``b``: a second view (``positives``) if given,
otherwise the sample itself (then ``I_hat`` measures how well each sample is singled out
by its own features; an all-zero feature vector scores ``-log n`` on its row, i.e. no
information). ``SEPIN_i = I_hat(z) - I_hat(z_-i)``, in nats; a dimension that duplicates
another, or is always zero, scores 0.

**All dimensions at once.** Dropping dimension ``i`` changes the Gram matrix by a rank-one
term, ``G_-i = G - z_i p_i^T``, and the norms by ``||z_a||^2 - z_ai^2``. So only the rows
``a`` with ``z_ai != 0`` (recomputed in full) and the columns ``b`` with ``p_bi != 0``
(whose change is added to each row's softmax denominator) differ from the full matrix
(for a dimension used by most samples, every row is simply recomputed). Batched over all
such (dimension, sample) pairs, the cost is ``O(n * sum_i min(n, nnz(z_i) + nnz(p_i)))``
exponentials — ``n^2 D`` for dense features, about ``2 n^2 D density`` for sparse ones —
in float64, with ``O(D n)`` memory plus blocks of ``2**22`` values; no Python loop over
dimensions.

Examples:
    >>> import torch
    >>> z = torch.eye(4)[torch.arange(64) % 4] * torch.rand(64, 1)   # one dim per group
    >>> z = torch.cat([z, z[:, :1]], dim=1)                           # dim 4 duplicates dim 0
    >>> scores = sepin_scores(z)
    >>> [abs(float(s)) < 1e-9 for s in scores[[0, 4]]], bool(scores[1] > 0.1)
    ([True, True], True)
"""

from __future__ import annotations

from typing import Any

import torch

from ncl_ext._checks import as_features, check_int, check_positive

__all__ = ["DEFAULT_SEPIN_KS", "DEFAULT_SEPIN_SAMPLES", "sepin_at_k", "sepin_scores"]

#: The k of SEPIN@k reported by default; ``None`` stands for all dimensions.
DEFAULT_SEPIN_KS: tuple[int | None, ...] = (1, 10, 100, None)
#: Default InfoNCE batch ``n`` (the estimate is at most ``log n`` nats).
DEFAULT_SEPIN_SAMPLES = 256
_BLOCK_VALUES = 2**22
# What is left of a squared norm after subtracting z_ai^2 counts as zero below this share of
# the original: that remainder is rounding error (the row was z_ai alone).
_RELATIVE_ZERO = 1e-12


def _inverse_norms(squared: torch.Tensor, original: torch.Tensor) -> torch.Tensor:
    """``1 / sqrt(squared)``, and 0 for zero vectors (whose cosine with anything is taken as 0)."""
    keep = squared > _RELATIVE_ZERO * original
    return torch.where(keep, squared.clamp_min(0).rsqrt(), torch.zeros_like(squared))


def _sample(features: Any, positives: Any, num_samples: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    z = as_features(features)
    p = z if positives is None else as_features(positives, "positives")
    if p.shape != z.shape:
        raise ValueError(f"positives must have the shape of features {tuple(z.shape)}, got {tuple(p.shape)}")
    if len(z) < 2:
        raise ValueError("SEPIN needs at least 2 samples")
    if len(z) > num_samples:
        rows = torch.randperm(len(z), generator=torch.Generator().manual_seed(seed))[:num_samples].sort().values
        z, p = z[rows.to(z.device)], p[rows.to(p.device)]
    z = z.detach().to("cpu", torch.float64)
    return z, (z if positives is None else p.detach().to("cpu", torch.float64))


def sepin_scores(
    features: Any,
    positives: Any = None,
    num_samples: int = DEFAULT_SEPIN_SAMPLES,
    temperature: float = 0.2,
    seed: int = 0,
) -> torch.Tensor:
    """Per-dimension separated information ``I_hat(z) - I_hat(z_-i)`` in nats, a float64 ``(D,)`` tensor.

    Args:
        features: ``(N, D)`` features.
        positives: optional ``(N, D)`` features of a second view of the same samples
            (the critic's positives); default: each sample is its own positive.
        num_samples: ``n``, the InfoNCE batch: a random subset of this many samples
            (``I_hat <= log n``). Cost grows as ``n^2``.
        temperature: critic temperature (0.2, the NCL training temperature).
        seed: seeds the subset.
    """
    num_samples = check_int(num_samples, "num_samples", minimum=2)
    temperature = check_positive(temperature, "temperature")
    z, p = _sample(features, positives, num_samples, seed)
    n, dim = z.shape
    m = 1.0 / temperature  # largest possible logit: the softmax stabiliser
    z_sq, p_sq = (z * z).sum(1), (p * p).sum(1)
    gram = z @ p.T
    r, c = _inverse_norms(z_sq, z_sq), _inverse_norms(p_sq, p_sq)
    exp_full = torch.exp(gram * r[:, None] * c[None, :] * m - m)
    row_sums = exp_full.sum(1)
    positive_full = gram.diagonal() * r * c * m
    loss_full = (positive_full - m - row_sums.log()).mean()

    # c_minus[i, b]: inverse norm of p_b without dimension i (D x n); r_minus likewise for z.
    z_t, p_t = z.T.contiguous(), p.T.contiguous()
    # The same subtraction as in the numerators below (G_ab - z_ai p_bi), so that in a row
    # dominated by dimension i their rounding errors cancel (the self-cosine stays 1).
    c_minus = _inverse_norms(p_sq[None, :] - p_t * p_t, p_sq[None, :])
    r_minus = c_minus if p is z else _inverse_norms(z_sq[None, :] - z_t * z_t, z_sq[None, :])

    # A dimension used by many samples is cheaper to redo row by row (n rows of n);
    # for the others, rows with z_ai == 0 only see their columns b with p_bi != 0 change.
    redo_all_rows = (z != 0).sum(0) + (p != 0).sum(0) >= n
    step = max(1, _BLOCK_VALUES // n)
    delta = torch.zeros(dim, n, dtype=torch.float64)
    scaled_gram_t = (gram * r[:, None]).T.contiguous()  # row b: G_ab / ||z_a|| over a
    exp_full_t = exp_full.T.contiguous()
    col_i, col_b = torch.nonzero(((p != 0) & ~redo_all_rows).T, as_tuple=True)  # sorted by dimension
    for start in range(0, len(col_b), step):
        b, i = col_b[start : start + step], col_i[start : start + step]
        # Rows with z_ai != 0 get meaningless (possibly huge) values here, overwritten below;
        # the clamp keeps them finite (for the other rows the cosine is <= 1 anyway).
        logits = scaled_gram_t[b].mul_((c_minus[i, b] * m)[:, None]).clamp_(max=m)
        changed = logits.sub_(m).exp_().sub_(exp_full_t[b])
        # Sum the changed columns per dimension (pairs are sorted by dimension): differences
        # of a running sum taken at the last pair of each dimension.
        running = changed.cumsum_(0)
        last = torch.nonzero(torch.diff(i, append=i.new_tensor([-1])) != 0).flatten()
        totals = running[last]
        totals[1:] -= running[last[:-1]]
        delta[i[last]] += totals
    positive_minus = gram.diagonal()[None, :] * r[None, :] * c_minus * m
    loss_rows = positive_minus - m - torch.log(row_sums[None, :] + delta)

    # Rows a with z_ai != 0 (every row for the dimensions above): recompute the whole row.
    row_a, row_i = torch.nonzero(((z != 0) | redo_all_rows).T, as_tuple=True)[::-1]
    for start in range(0, len(row_a), step):
        a, i = row_a[start : start + step], row_i[start : start + step]
        logits = p_t[i].mul_(-z[a, i][:, None]).add_(gram[a])  # G_ab - z_ai p_bi
        logits.mul_(c_minus[i]).mul_((r_minus[i, a] * m)[:, None])
        positive = logits.gather(1, a[:, None]).squeeze(1)
        loss_rows[i, a] = positive - m - logits.sub_(m).exp_().sum(1).log()
    return loss_full - loss_rows.mean(1)


def sepin_at_k(
    features: Any,
    positives: Any = None,
    ks: tuple[int | None, ...] = DEFAULT_SEPIN_KS,
    num_samples: int = DEFAULT_SEPIN_SAMPLES,
    temperature: float = 0.2,
    seed: int = 0,
) -> dict[str, float]:
    """SEPIN@k: the mean of the ``k`` largest per-dimension scores (:func:`sepin_scores`).

    Returns ``{"sepin@1": ..., "sepin@10": ..., "sepin@100": ..., "sepin@all": ...}`` for
    the default ``ks`` (``None`` means all dimensions; a ``k`` above ``D`` averages all
    ``D``). Values are in nats, at most ``log(num_samples)``.
    """
    scores = torch.sort(sepin_scores(features, positives, num_samples, temperature, seed), descending=True).values
    result = {}
    for k in ks:
        if k is None:
            result["sepin@all"] = float(scores.mean())
        else:
            k = check_int(k, "ks entry")
            result[f"sepin@{k}"] = float(scores[: min(k, len(scores))].mean())
    return result
