"""SEPIN@k: the vectorised estimate against a loop that drops each dimension, and its required properties."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.special import logsumexp

from ncl_ext.analysis import latent_factor_grid, sepin_at_k, sepin_noise_std, sepin_scores

# Many small tensor operations: one thread is faster than two fighting on a shared CPU.
pytestmark = pytest.mark.usefixtures("seed_and_one_thread")

# The expectation over t ~ N(0, 1) of the KL, on a fine grid (kinks are 1/d wide, d <= ~40 here).
GRID = np.linspace(-10.0, 10.0, 6001)
GRID_WEIGHTS = np.exp(-GRID * GRID / 2) / math.sqrt(2 * math.pi) * (GRID[1] - GRID[0])


def kl_gaussian_to_mixtures(offsets: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Row by row, KL(N(0, 1) || sum_k w_k N(d_k, 1)) = E_t[-log sum_k w_k exp(-d_k t - d_k^2 / 2)]."""
    with np.errstate(divide="ignore"):
        log_w = np.log(weights)[:, :, None]
    d = offsets[:, :, None]
    return -(logsumexp(log_w - d * GRID - d * d / 2, axis=1) * GRID_WEIGHTS).sum(1)


def documented_noise(shape: tuple[int, int], seed: int) -> np.ndarray:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64).numpy()


def reference_sepin(z: torch.Tensor, sigma: float, seed: int = 0) -> np.ndarray:
    """Do & Tran's I(x; z~_i | z~_-i) for x uniform over the rows, z~ = z + sigma * noise, dim i deleted for real."""
    z = z.double().numpy()
    noisy = z + sigma * documented_noise(z.shape, seed)
    scores = np.zeros(z.shape[1])
    for i in range(z.shape[1]):
        rest, noisy_rest = np.delete(z, i, 1), np.delete(noisy, i, 1)
        # Row m: the posterior over the samples k given the other dimensions of z~_m.
        log_w = -((noisy_rest[:, None, :] - rest[None, :, :]) ** 2).sum(2) / (2 * sigma * sigma)
        weights = np.exp(log_w - log_w.max(1, keepdims=True))
        offsets = (z[:, i][:, None] - z[:, i][None, :]) / sigma
        scores[i] = kl_gaussian_to_mixtures(offsets, weights / weights.sum(1, keepdims=True)).mean()
    return scores


def reference_information(z: torch.Tensor, sigma: float, seed: int = 0) -> float:
    """I(x; z~) = log n - mean_m H(posterior over the rows given z~_m)."""
    z = z.double().numpy()
    noisy = z + sigma * documented_noise(z.shape, seed)
    entropies = []
    for m in range(len(z)):
        log_w = -((noisy[m] - z) ** 2).sum(1) / (2 * sigma * sigma)
        log_p = log_w - logsumexp(log_w)
        entropies.append(-(np.exp(log_p) * log_p).sum())
    return math.log(len(z)) - float(np.mean(entropies))


def make(kind: str, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    z = torch.randn(30, 5, generator=generator)
    if kind == "sparse":
        z = torch.relu(z - 0.7)
        z[0] = 0.0  # an all-zero sample
    elif kind == "one-hot":
        z = torch.eye(5)[torch.arange(30) % 5] * (1 + torch.rand(30, 1, generator=generator))
    return z


@pytest.mark.parametrize("kind", ["sparse", "signed", "one-hot"])
@pytest.mark.parametrize("fraction", [0.5, 0.9])
def test_sepin_matches_dropping_each_dimension(kind: str, fraction: float) -> None:
    z = make(kind, seed=0)
    sigma = sepin_noise_std(z, information_fraction=fraction)
    expected = reference_sepin(z, sigma)
    # 16-node Gauss-Hermite quadrature against a fine grid.
    assert sepin_scores(z, information_fraction=fraction).numpy() == pytest.approx(expected, rel=1e-3, abs=1e-5)


def test_sepin_with_a_fixed_noise_level_and_small_sigma() -> None:
    z = make("one-hot", seed=1)
    # sigma = 0.004: the exponents are too wide to factorise (the per-term branch); dropping
    # dim c leaves its samples at the origin, told apart by nothing: about log(6) nats each.
    for sigma in (0.004, 0.3):
        expected = reference_sepin(z, sigma)
        assert sepin_scores(z, noise_std=sigma).numpy() == pytest.approx(expected, rel=1e-3, abs=1e-5)
    assert float(reference_sepin(z, 0.004).min()) > 0.2


@pytest.mark.parametrize("fraction", [0.5, 0.9])
def test_noise_is_calibrated_to_the_asked_share_of_information(fraction: float) -> None:
    z = make("signed", seed=2)
    sigma = sepin_noise_std(z, information_fraction=fraction)
    assert reference_information(z, sigma) == pytest.approx(fraction * math.log(len(z)), abs=1e-6)


def test_scores_are_non_negative_and_zero_for_a_constant_dimension() -> None:
    generator = torch.Generator().manual_seed(3)
    z = torch.relu(torch.randn(200, 12, generator=generator) - 0.5)
    z[10:20] = 0.0  # samples with nothing but the constant below
    z[:, 4] = 2.5  # constant
    z[:, 5] = z[:, 6]  # duplicated
    z[:, 7] = 0.0  # dead
    for seed in range(3):
        scores = sepin_scores(z, num_samples=100, seed=seed)
        assert bool((scores >= 0).all())
        assert float(scores[4]) < 1e-12 and float(scores[7]) == 0.0
        assert float(scores[5]) > 0  # two noisy copies tell more than one
    signed = torch.cat([torch.randn(100, 6, generator=generator), torch.full((100, 1), -1.0)], dim=1)
    assert float(sepin_scores(signed)[6]) < 1e-12 and bool((sepin_scores(signed) >= 0).all())


def test_sepin_does_not_saturate_on_dense_features() -> None:
    """A sharp InfoNCE critic scores every dimension 0 here; the calibrated channel does not."""
    generator = torch.Generator().manual_seed(4)
    gaussian = sepin_scores(torch.randn(1000, 64, generator=generator), num_samples=256)
    assert float(gaussian.min()) > 1e-3 and float(gaussian.max()) < math.log(256)
    dense = sepin_at_k(torch.randn(1000, 512, generator=generator), num_samples=128)
    assert dense["sepin@1"] > 1e-3 and dense["sepin@all"] > 1e-4


def test_axis_aligned_factors_score_at_least_five_times_a_rotated_copy() -> None:
    """Two independent 16-level factors (the full grid, as dSprites), one per dimension, in 32 dimensions."""
    codes, _ = latent_factor_grid(num_factors=2, levels=16, dim=32)
    rotation = torch.linalg.qr(torch.randn(32, 32, generator=torch.Generator().manual_seed(5)))[0]
    aligned = sepin_at_k(codes, ks=(1, 2, None))
    rotated = sepin_at_k(codes @ rotation, ks=(1, 2, None))
    assert aligned["sepin@1"] >= 5 * rotated["sepin@1"]
    assert aligned["sepin@2"] >= 5 * rotated["sepin@2"]  # both factor dimensions
    # The other 30 aligned dimensions are always zero: the two factors are all there is.
    assert aligned["sepin@all"] == pytest.approx(aligned["sepin@2"] * 2 / 32)


def test_scores_do_not_depend_on_the_feature_scale() -> None:
    z = make("sparse", seed=6)
    assert sepin_scores(1000.0 * z).numpy() == pytest.approx(sepin_scores(z).numpy(), rel=1e-6, abs=1e-12)
    assert sepin_noise_std(1000.0 * z) == pytest.approx(1000.0 * sepin_noise_std(z), rel=1e-8)


def test_sepin_at_k_averages_the_top_scores() -> None:
    z = make("signed", seed=7)
    scores = np.sort(sepin_scores(z).numpy())[::-1]
    result = sepin_at_k(z, ks=(1, 3, 100, None))
    assert list(result) == ["sepin@1", "sepin@3", "sepin@100", "sepin@all"]
    assert result["sepin@1"] == pytest.approx(scores[0], abs=1e-12)
    assert result["sepin@3"] == pytest.approx(scores[:3].mean(), abs=1e-12)
    assert result["sepin@100"] == pytest.approx(scores.mean(), abs=1e-12)  # k > D averages all D
    assert result["sepin@all"] == pytest.approx(scores.mean(), abs=1e-12)


def test_sepin_uses_a_seeded_subset_of_num_samples() -> None:
    z = torch.relu(torch.randn(50, 4, generator=torch.Generator().manual_seed(8)))
    rows = torch.randperm(50, generator=torch.Generator().manual_seed(7))[:12].sort().values
    sigma = sepin_noise_std(z, num_samples=12, seed=7)
    expected = reference_sepin(z[rows], sigma, seed=7)
    assert sepin_scores(z, num_samples=12, seed=7).numpy() == pytest.approx(expected, rel=1e-3, abs=1e-5)
    assert torch.equal(sepin_scores(z, num_samples=12, seed=7), sepin_scores(z, num_samples=12, seed=7))


def test_identical_rows_carry_no_information() -> None:
    assert sepin_scores(torch.ones(10, 3)).tolist() == [0.0, 0.0, 0.0]
    assert sepin_noise_std(torch.ones(10, 3)) == 0.0


def test_sepin_bad_inputs() -> None:
    z = torch.rand(10, 3)
    with pytest.raises(ValueError, match="information_fraction"):
        sepin_scores(z, information_fraction=1.0)
    with pytest.raises(ValueError, match="noise_std"):
        sepin_scores(z, noise_std=0.0)
    with pytest.raises(ValueError, match="num_samples"):
        sepin_scores(z, num_samples=1)
    with pytest.raises(ValueError, match="at least 2 samples"):
        sepin_scores(torch.rand(1, 3))
    with pytest.raises(ValueError, match="ks entry"):
        sepin_at_k(z, ks=(0,))
    with pytest.raises(ValueError, match="NaN"):
        sepin_scores(torch.tensor([[0.0, float("nan")], [1.0, 2.0]]))
