"""SEPIN@k: how much information about the input each feature dimension carries on its own.

Do & Tran, "Theory and Evaluation Metrics for Learning Disentangled Representations",
ICLR 2020, define the separated information of dimension ``i`` as the conditional mutual
information ``I(x; z_i | z_-i) = I(x; z) - I(x; z_-i)`` (``z_-i``: ``z`` without dimension
``i``), and SEPIN@k as the mean of the ``k`` largest. Wang, Zhang, Guo, Wang,
"Non-negative Contrastive Learning", ICLR 2024 (arXiv:2403.12459) report it for CL and NCL
features (ImageNet-100, SEPIN@1: CL 0.88, NCL 7.43).

**Estimator.** Do & Tran compute these terms for an encoder with a factorised Gaussian output
``q(z|x) = N(mu(x), diag(s(x)^2))``: sample ``z ~ q(z|x)`` and average ``log q(z|x) - log
(1/N) sum_n q(z|x_n)`` over the data points ``x_n``. A deterministic encoder has infinite
``I(x; z)``, so here each feature vector is read as the mean of such a Gaussian with one
shared standard deviation ``sigma``: ``z~ = z(x) + sigma * noise``, with ``x`` uniform over
``n`` samples of the data. Because the noise is independent across dimensions,
``I(x; z~_i | z~_-i)`` is an expected Kullback-Leibler divergence::

    SEPIN_i = (1/n) sum_m KL( N(z_mi, sigma^2) || sum_k w_mk N(z_ki, sigma^2) )
    w_mk   proportional to exp(-||z~_m,-i - z_k,-i||^2 / (2 sigma^2))   (posterior over samples)

with one noise draw ``z~_m = z_m + sigma * noise_m`` per sample. The KL is the expectation
over ``t ~ N(0, 1)`` of ``-log sum_k w_mk exp(-d_k t - d_k^2 / 2)``, ``d_k = (z_mi - z_ki) /
sigma``, taken with 16-node Gauss-Hermite quadrature (relative error about 1e-4 against fine
numerical integration). That quadrature underestimates ``E[exp(-d t)] = exp(d^2 / 2)`` (its error term is a
positive even derivative), so the sum inside the log averages to at most 1 over the nodes,
and by Jensen's inequality every per-sample score is ``>= 0``: **SEPIN is non-negative by
construction** (up to float rounding, clamped), and 0 for a dimension that is constant over
the samples.

**Noise level.** ``sigma`` is chosen so that the noisy features keep a fixed share
(``information_fraction``, default 0.9) of what the features tell about which sample is
which: ``I(x; z~) = fraction * I(x; z)``, with ``I(x; z) = log n`` for distinct rows (found by
bisection on ``log sigma``, with the same noise draw). With too little noise every sample is
singled out by the other dimensions alone and every score is 0 (the saturation of a sharp
InfoNCE critic); with too much nothing is, and the channel behaves like a Gaussian one, for
which rotating the features changes nothing. 0.9 keeps most of the information while leaving
each dimension's share measurable. The calibration makes the scores independent of the
feature scale; pass ``noise_std`` to fix ``sigma`` instead (in feature units).

**Assumptions and known limits.** Features are used as given (not L2-normalised: the norm of
a one-hot-like NCL vector is what tells its samples apart). Scores are in nats, at most
``log n``; they grow with ``n`` and depend on ``information_fraction``, so compare
representations at the same settings. ``I(x; .)`` is taken over the ``n`` samples, not the
data distribution, and the noise average is one draw per sample: small ``n`` gives a noisy
estimate (about +-20% for SEPIN@1 across seeds at ``n = 256``). The isotropic noise favours
dimensions with a large spread (a dimension scaled down carries less information), and counts
redundancy as shared: a duplicated dimension scores low but above 0 (two noisy copies tell
more than one). A rotation of independent Gaussian factors is, for this channel, as
disentangled as the factors themselves (the mutual informations are rotation invariant); the
gap between an axis-aligned and a rotated representation appears when the factors are not
Gaussian (sparse, discrete) and spread over more dimensions than there are factors. The NCL
paper does not state its estimator in the text consulted here; its figures come from many
more samples and need not match these in absolute value.

**Cost.** ``O(n^2 D)`` float64 element-wise operations for dense features, plus a batched
matrix product with the ``Q = 16`` quadrature nodes. The samples with ``z_ki = 0`` enter every
``(m, i)`` as one aggregated "zero" component (all of them from one ``n x n x D`` matrix
product), so for sparse features the element-wise work is ``O(n * non-zeros)``. Blocks of
about ``2**22`` values; the sampled rows are divided by their largest magnitude first.

Examples:
    >>> import torch
    >>> from ncl_ext.analysis.synthetic import latent_factor_grid
    >>> codes, factors = latent_factor_grid(num_factors=2, levels=8, dim=16)  # one factor per dim
    >>> rotation = torch.linalg.qr(torch.randn(16, 16, generator=torch.Generator().manual_seed(0)))[0]
    >>> aligned, rotated = sepin_at_k(codes, ks=(1,)), sepin_at_k(codes @ rotation, ks=(1,))
    >>> aligned["sepin@1"] > 5 * rotated["sepin@1"]
    True
    >>> constant = torch.cat([torch.randn(100, 4), torch.ones(100, 1)], dim=1)
    >>> float(sepin_scores(constant)[4]) < 1e-12
    True
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from ncl_ext._checks import as_features, check_int, check_positive

__all__ = [
    "DEFAULT_INFORMATION_FRACTION",
    "DEFAULT_SEPIN_KS",
    "DEFAULT_SEPIN_SAMPLES",
    "sepin_at_k",
    "sepin_noise_std",
    "sepin_scores",
]

#: The k of SEPIN@k reported by default; ``None`` stands for all dimensions.
DEFAULT_SEPIN_KS: tuple[int | None, ...] = (1, 10, 100, None)
#: Default number of samples ``n`` (scores are at most ``log n`` nats).
DEFAULT_SEPIN_SAMPLES = 256
#: Default share of ``I(x; z)`` the noisy features keep.
DEFAULT_INFORMATION_FRACTION = 0.9
_QUADRATURE_NODES = 16
_BLOCK_VALUES = 2**22
_BISECTION_STEPS = 60
# exp(+-600) is well inside the float64 range (e^709).
_MAX_EXPONENT = 600.0


def _subset(features: Any, num_samples: int, seed: int) -> tuple[torch.Tensor, float]:
    """The ``n`` sampled rows in float64, divided by their largest magnitude (returned too): values in [-1, 1]."""
    z = as_features(features)
    if len(z) < 2:
        raise ValueError("SEPIN needs at least 2 samples")
    if len(z) > num_samples:
        rows = torch.randperm(len(z), generator=torch.Generator().manual_seed(seed))[:num_samples].sort().values
        z = z[rows.to(z.device)]
    z = z.detach().to("cpu", torch.float64)
    scale = float(z.abs().max()) or 1.0
    return z / scale, scale


def _noise(shape: torch.Size, seed: int) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64)


def _check_fraction(fraction: float) -> float:
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction < 1:
        raise ValueError(f"information_fraction must be a number in (0, 1), got {fraction!r}")
    return float(fraction)


class _NoisyChannel:
    """``z~ = z + sigma * noise`` for ``n`` samples ``z`` and one noise draw per sample."""

    def __init__(self, z: torch.Tensor, noise: torch.Tensor) -> None:
        gram = z @ z.T
        squares = gram.diagonal()
        self.sq_dist = (squares[:, None] + squares[None, :] - 2 * gram).clamp_min_(0).fill_diagonal_(0)
        cross = noise @ z.T  # cross[m, k] = noise_m . z_k
        self.noise_dot_diff = cross.diagonal()[:, None] - cross  # noise_m . (z_m - z_k)

    def log_likelihood(self, sigma: float) -> torch.Tensor:
        """``L[m, k] = log q(z~_m | x_k) - log q(z~_m | x_m)``; ``L[m, m] = 0``."""
        return -(self.sq_dist + 2 * sigma * self.noise_dot_diff) / (2 * sigma * sigma)

    def information(self, sigma: float) -> float:
        """``I(x; z~) = log n - mean_m H(posterior over the samples given z~_m)``, in nats."""
        log_posterior = torch.log_softmax(self.log_likelihood(sigma), dim=1)
        entropy = -(log_posterior.exp() * log_posterior).sum(1)
        return math.log(len(self.sq_dist)) - float(entropy.mean())

    def calibrate(self, fraction: float) -> float | None:
        """``sigma`` with ``I(x; z~) = fraction * I(x; z)``; ``None`` when ``I(x; z) = 0`` (all rows equal)."""
        same = self.sq_dist == 0
        target = fraction * (math.log(len(same)) - float(same.sum(1).double().log().mean()))
        if target <= 0:
            return None
        distances = self.sq_dist[~same].sqrt()
        low, high = math.log(float(distances.min()) * 1e-3), math.log(float(distances.max()) * 1e3)
        for _ in range(_BISECTION_STEPS):
            middle = (low + high) / 2
            low, high = (middle, high) if self.information(math.exp(middle)) > target else (low, middle)
        return math.exp((low + high) / 2)


def sepin_noise_std(
    features: Any,
    num_samples: int = DEFAULT_SEPIN_SAMPLES,
    information_fraction: float = DEFAULT_INFORMATION_FRACTION,
    seed: int = 0,
) -> float:
    """The calibrated ``sigma`` :func:`sepin_scores` uses, in feature units (0.0 when all sampled rows are equal)."""
    num_samples = check_int(num_samples, "num_samples", minimum=2)
    fraction = _check_fraction(information_fraction)
    z, scale = _subset(features, num_samples, seed)
    sigma = _NoisyChannel(z, _noise(z.shape, seed)).calibrate(fraction)
    return 0.0 if sigma is None else sigma * scale


@functools.cache
def _quadrature() -> tuple[torch.Tensor, torch.Tensor]:
    """Gauss-Hermite nodes and weights for ``E[f(t)]``, ``t ~ N(0, 1)``."""
    nodes, weights = np.polynomial.hermite_e.hermegauss(_QUADRATURE_NODES)
    return torch.from_numpy(nodes), torch.from_numpy(weights / weights.sum())


def _column_blocks(counts: torch.Tensor, n: int) -> Iterator[tuple[torch.Tensor, int]]:
    """Columns in blocks of similar active counts (``(columns, largest count)``), about ``2**22 / n`` entries each."""
    order = torch.argsort(counts)
    sorted_counts = counts[order].tolist()
    start = sorted_counts.count(0)  # all-zero columns score 0: skipped
    while start < len(order):
        stop = start + 1
        while stop < len(order) and (stop + 1 - start) * sorted_counts[stop] * n <= _BLOCK_VALUES:
            stop += 1
        yield order[start:stop], sorted_counts[stop - 1]
        start = stop


def _block_kl(
    z: torch.Tensor,
    noise: torch.Tensor,
    log_lik: torch.Tensor,
    log_zero: torch.Tensor,
    cols: torch.Tensor,
    width: int,
    sigma: float,
) -> torch.Tensor:
    """``(c, n)`` KL terms of the columns ``cols`` (each with at most ``width`` non-zero samples).

    Tensors are laid out ``(column, non-zero sample k, sample m)``.
    """
    nodes, weights = _quadrature()
    n = len(z)
    column, column_noise = z[:, cols].T, noise[:, cols].T  # (c, n)
    noise_mi = column_noise[:, None, :]
    active = column != 0
    if width == n:  # no zero entry in these columns: no padding, no gather
        rows, real = None, None
        values = column
        log_lik_km = log_lik.T[None]  # [., k, m] = log_lik[m, k]
    else:
        rows = torch.argsort((~active).to(torch.int8), dim=1, stable=True)[:, :width]  # non-zero first
        real = active.gather(1, rows)[:, :, None]  # padding is False
        values = column.gather(1, rows)
        log_lik_km = log_lik.T[rows]
    # Sample k's log weight for (m, i), its log likelihood without dimension i, with
    # d_k = (z_mi - z_ki) / sigma and z~_mi - z_ki = sigma (noise_mi + d_k), is
    #     log_lik[m, k] + (noise_mi + d_k)^2 / 2 = base_k + d_k^2 / 2 + noise_mi^2 / 2,
    #     base_k = log_lik[m, k] + noise_mi d_k = log(w_k exp(-d_k^2 / 2)) + const(m, i).
    # The constant noise_mi^2 / 2 is left out of every component's log weight.
    offsets = (column / sigma)[:, None, :] - (values / sigma)[:, :, None]
    base = torch.addcmul(log_lik_km, noise_mi, offsets)
    log_w = torch.addcmul(base, offsets, offsets, value=0.5)
    if real is not None:
        log_w.masked_fill_(~real, -math.inf)
        base.masked_fill_(~real, -math.inf)
    zero_w = (log_zero[:, cols].T - column_noise.square() / 2)[:, None, :]  # (c, 1, n)
    top = torch.maximum(log_w.amax(1, keepdim=True), zero_w)
    log_norm = torch.log(log_w.sub_(top).exp_().sum(1, keepdim=True) + torch.exp(zero_w - top)).add_(top)
    u = base.sub_(log_norm).exp_()  # w_k exp(-d_k^2 / 2) with normalised weights w, (c, a, n)
    low, high = column.amin(1, keepdim=True), column.amax(1, keepdim=True)
    centre = (low + high) / 2
    scaled_nodes = (nodes / sigma)[None, :, None]  # (1, Q, 1)
    if float((high - low).max()) / 2 / sigma * float(nodes.max()) < _MAX_EXPONENT:
        # exp(-d_k t) = exp(-(z_mi - c) t / sigma) exp((z_ki - c) t / sigma): a matrix product.
        v = torch.exp((values - centre)[:, None, :] * scaled_nodes)  # (c, Q, a)
        sums = torch.bmm(v, u)  # (c, Q, n)
        sums.mul_(torch.exp(-(column - centre)[:, None, :] * scaled_nodes))
    else:  # exponents too wide for that: one exponential per term (each exponent <= t^2 / 2)
        sums = torch.exp(u.log()[:, None, :, :] - offsets[:, None, :, :] * nodes[None, :, None, None]).sum(2)
    d0 = (column / sigma)[:, None, :]  # the zero component's offset
    sums += torch.exp((zero_w - log_norm) - d0 * d0 / 2 - d0 * nodes[None, :, None])
    return -torch.einsum("j,cjn->cn", weights, sums.log())


def _log_zero_component(log_lik: torch.Tensor, zero: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """``(n, D)``: log of the summed weight, for ``(m, i)``, of the samples ``k`` with ``z_ki = 0``.

    Dropping dimension ``i`` adds the same ``shift[m, i] = z~_mi^2 / (2 sigma^2)`` to all their
    log likelihoods, so the sum is one matrix product. Where it underflows (the shift of a
    sample far from 0 in dimension ``i`` can pass the float range) it is recomputed term by
    term. ``-inf`` where column ``i`` has no zero.
    """
    row_max = log_lik.amax(1, keepdim=True)
    zero_mass = torch.exp(log_lik - row_max) @ zero.double()
    log_zero = zero_mass.log().add_(row_max).add_(shift)
    rows, dims = torch.nonzero((zero_mass < 1e-290) & zero.any(0), as_tuple=True)
    step = max(1, _BLOCK_VALUES // len(log_lik))
    for start in range(0, len(rows), step):
        m, i = rows[start : start + step], dims[start : start + step]
        terms = log_lik[m].masked_fill_(~zero.T[i], -math.inf)
        log_zero[m, i] = torch.logsumexp(terms, dim=1) + shift[m, i]
    return log_zero


def _separated_information(z: torch.Tensor, noise: torch.Tensor, channel: _NoisyChannel, sigma: float) -> torch.Tensor:
    """``(n, D)`` per-sample KL terms of ``I(x; z~_i | z~_-i)`` (see the module docstring)."""
    n, dim = z.shape
    log_lik = channel.log_likelihood(sigma)
    noisy = z + sigma * noise
    log_zero = _log_zero_component(log_lik, z == 0, noisy.square() / (2 * sigma * sigma))
    result = torch.zeros(n, dim, dtype=torch.float64)
    for cols, width in _column_blocks((z != 0).sum(0), n):
        result[:, cols] = _block_kl(z, noise, log_lik, log_zero, cols, width, sigma).T
    return result.clamp_min_(0.0)  # >= 0 up to rounding (see the module docstring)


def sepin_scores(
    features: Any,
    num_samples: int = DEFAULT_SEPIN_SAMPLES,
    information_fraction: float = DEFAULT_INFORMATION_FRACTION,
    noise_std: float | None = None,
    seed: int = 0,
) -> torch.Tensor:
    """Per-dimension separated information ``I(x; z_i | z_-i)`` in nats: a float64 ``(D,)`` tensor, all ``>= 0``.

    Args:
        features: ``(N, D)`` features.
        num_samples: ``n``, the samples ``x`` ranges over: a random subset of this many
            rows (``torch.randperm(N)`` seeded with ``seed``, first ``n``, sorted). Scores are
            at most ``log n``; cost grows as ``n^2``.
        information_fraction: share of ``I(x; z)`` the noisy features keep; sets ``sigma``.
        noise_std: a fixed ``sigma`` (feature units) instead of the calibrated one.
        seed: seeds the subset and the noise (``torch.randn((n, D), dtype=float64)`` from a
            generator seeded with ``seed + 1``).

    See the module docstring for the estimator, its assumptions and limits.
    """
    num_samples = check_int(num_samples, "num_samples", minimum=2)
    fraction = _check_fraction(information_fraction)
    if noise_std is not None:
        noise_std = check_positive(noise_std, "noise_std")
    z, scale = _subset(features, num_samples, seed)  # the scores do not depend on the scale
    noise = _noise(z.shape, seed)
    channel = _NoisyChannel(z, noise)
    sigma = noise_std / scale if noise_std is not None else channel.calibrate(fraction)
    if sigma is None:  # all rows equal: nothing tells the samples apart
        return torch.zeros(z.shape[1], dtype=torch.float64)
    return _separated_information(z, noise, channel, sigma).mean(0)


def sepin_at_k(
    features: Any,
    ks: tuple[int | None, ...] = DEFAULT_SEPIN_KS,
    num_samples: int = DEFAULT_SEPIN_SAMPLES,
    information_fraction: float = DEFAULT_INFORMATION_FRACTION,
    noise_std: float | None = None,
    seed: int = 0,
) -> dict[str, float]:
    """SEPIN@k: the mean of the ``k`` largest per-dimension scores (:func:`sepin_scores`).

    Returns ``{"sepin@1": ..., "sepin@10": ..., "sepin@100": ..., "sepin@all": ...}`` for
    the default ``ks`` (``None`` means all dimensions; a ``k`` above ``D`` averages all
    ``D``). Values are in nats, ``>= 0`` and at most ``log(num_samples)``.
    """
    ks = tuple(ks)
    for k in ks:
        if k is not None:
            check_int(k, "ks entry")
    scores = sepin_scores(features, num_samples, information_fraction, noise_std, seed)
    scores = torch.sort(scores, descending=True).values
    return {
        "sepin@all" if k is None else f"sepin@{k}": float(scores[: len(scores) if k is None else k].mean()) for k in ks
    }
