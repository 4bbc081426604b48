"""Feature metrics against slow, obviously correct loops and closed-form cases."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
import torch

from ncl_ext.analysis import (
    activation_frequency,
    active_dims,
    correlation_matrix,
    dead_dims,
    effective_rank,
    feature_correlation,
    is_non_negative,
    semantic_consistency,
    sparsity,
)

EPS = 1e-5


# ---- references: plain Python / numpy loops ---------------------------------------------


def reference_sparsity(z: np.ndarray, eps: float) -> float:
    per_sample = [sum(1 for value in row if abs(value) <= eps) / len(row) for row in z]
    return sum(per_sample) / len(per_sample)


def reference_frequency(z: np.ndarray, eps: float) -> list[float]:
    return [sum(1 for n in range(z.shape[0]) if z[n, d] > eps) / z.shape[0] for d in range(z.shape[1])]


def reference_consistency(z: np.ndarray, labels: list, eps: float) -> float:
    shares = []
    for d in range(z.shape[1]):
        firing = [labels[n] for n in range(z.shape[0]) if z[n, d] > eps]
        if firing:
            shares.append(Counter(firing).most_common(1)[0][1] / len(firing))
    return sum(shares) / len(shares)


def reference_correlation(z: np.ndarray, eps: float) -> tuple[float, float]:
    active = [d for d in range(z.shape[1]) if any(z[n, d] > eps for n in range(z.shape[0]))]
    columns = [z[:, d] / np.linalg.norm(z[:, d]) for d in active]
    values = [abs(float(columns[i] @ columns[j])) for i in range(len(active)) for j in range(len(active)) if i != j]
    return float(np.mean(values)), float(np.median(values))


def reference_effective_rank(z: np.ndarray) -> float:
    singular = np.linalg.svd(z.astype(np.float64), compute_uv=False)
    p = singular / singular.sum()
    p = p[p > 0]
    return math.exp(-(p * np.log(p)).sum())


def random_features(seed: int, kind: str, shape: tuple[int, int] = (60, 12)) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    z = torch.randn(shape, generator=generator)
    if kind == "sparse":  # ~95% zeros: the sparse (scipy) Gram path
        return torch.relu(z - 1.7)
    if kind == "nonneg":  # ~70% zeros: the dense Gram path
        return torch.relu(z - 0.5)
    return z  # signed, dense


KINDS = ["sparse", "nonneg", "signed"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("seed", [0, 1])
def test_metrics_match_loops_on_random_features(kind: str, seed: int) -> None:
    z = random_features(seed, kind)
    z[:, 3] = 0.0  # a dead dimension
    labels = torch.randint(0, 4, (z.shape[0],), generator=torch.Generator().manual_seed(seed)).tolist()
    array = z.numpy().astype(np.float64)

    assert sparsity(z) == pytest.approx(reference_sparsity(array, EPS), abs=1e-12)
    assert activation_frequency(z).tolist() == pytest.approx(reference_frequency(array, EPS), abs=1e-7)
    frequency = reference_frequency(array, EPS)
    assert active_dims(z).tolist() == [d for d, f in enumerate(frequency) if f > 0]
    assert dead_dims(z).tolist() == [d for d, f in enumerate(frequency) if f == 0]
    assert 3 in dead_dims(z).tolist()
    assert semantic_consistency(z, labels) == pytest.approx(reference_consistency(array, labels, EPS), abs=1e-12)
    mean, median = feature_correlation(z)
    expected_mean, expected_median = reference_correlation(array, EPS)
    assert mean == pytest.approx(expected_mean, abs=1e-6)
    assert median == pytest.approx(expected_median, abs=1e-6)
    assert effective_rank(z) == pytest.approx(reference_effective_rank(array), rel=1e-6)
    assert is_non_negative(z) == bool((array >= 0).all())


def test_metrics_accept_numpy_float64_and_labels_of_any_type() -> None:
    z = random_features(3, "nonneg")
    labels = np.array(["cat", "dog", "eel"])[np.arange(z.shape[0]) % 3]
    codes = np.arange(z.shape[0]) % 3
    assert semantic_consistency(z.double().numpy(), labels) == pytest.approx(semantic_consistency(z, codes), abs=1e-12)
    assert sparsity(z.numpy()) == pytest.approx(sparsity(z), abs=1e-12)


def test_eps_decides_what_counts_as_zero_and_as_firing() -> None:
    z = torch.tensor([[1e-6, 0.5, -1e-6], [0.0, 2e-5, 3.0]])
    assert sparsity(z) == pytest.approx(3 / 6)  # 1e-6, -1e-6, 0.0 are zeros at eps=1e-5
    assert sparsity(z, eps=0.0) == pytest.approx(1 / 6)
    assert sparsity(z, eps=1e-4) == pytest.approx(4 / 6)
    assert activation_frequency(z).tolist() == pytest.approx([0.0, 1.0, 0.5])
    assert dead_dims(z).tolist() == [0]


def test_one_hot_features_have_consistency_one_and_correlation_zero() -> None:
    labels = torch.arange(40) % 5
    z = torch.eye(5)[labels] * torch.linspace(0.5, 2.0, 40)[:, None]
    assert semantic_consistency(z, labels) == 1.0
    assert tuple(feature_correlation(z)) == (0.0, 0.0)
    assert sparsity(z) == pytest.approx(1 - 1 / 5)
    assert effective_rank(z) == pytest.approx(reference_effective_rank(z.numpy()), rel=1e-9)


def test_duplicated_columns_have_correlation_one() -> None:
    column = torch.rand(30, 1) + 0.1
    z = torch.cat([column, 3.0 * column, torch.zeros(30, 2)], dim=1)  # same direction, two dead dims
    assert tuple(feature_correlation(z)) == pytest.approx((1.0, 1.0))
    assert dead_dims(z).tolist() == [2, 3]
    assert effective_rank(z) == pytest.approx(1.0)


def test_dimensions_firing_for_every_class_have_consistency_one_over_classes() -> None:
    labels = torch.arange(100) % 4
    z = torch.ones(100, 6)  # every dim fires on every sample
    assert semantic_consistency(z, labels) == pytest.approx(0.25)


def test_effective_rank_closed_forms() -> None:
    assert effective_rank(torch.eye(7)) == pytest.approx(7.0)
    assert effective_rank(torch.outer(torch.arange(1.0, 6.0), torch.ones(4))) == pytest.approx(1.0)
    assert effective_rank(torch.zeros(3, 4)) == 0.0
    # singular values 3 and 1: p = (3/4, 1/4)
    p = np.array([0.75, 0.25])
    assert effective_rank(torch.diag(torch.tensor([3.0, 1.0]))) == pytest.approx(math.exp(-(p * np.log(p)).sum()))


def test_correlation_matrix_of_selected_dims() -> None:
    z = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]])
    matrix = correlation_matrix(z, dims=[0, 2])
    assert matrix.flatten().tolist() == pytest.approx([1.0, 1 / math.sqrt(2), 1 / math.sqrt(2), 1.0])
    with pytest.raises(ValueError, match="dims"):
        correlation_matrix(z, dims=[5])


def test_bad_inputs_raise_clear_errors() -> None:
    with pytest.raises(ValueError, match="NaN"):
        sparsity(torch.tensor([[1.0, float("nan")]]))
    with pytest.raises(ValueError, match="2-D"):
        sparsity(torch.ones(4))
    with pytest.raises(ValueError, match="at least one"):
        sparsity(torch.ones(0, 3))
    with pytest.raises(ValueError, match="eps"):
        sparsity(torch.ones(2, 2), eps=-1.0)
    with pytest.raises(ValueError, match="labels has 3 entries"):
        semantic_consistency(torch.ones(4, 2), [0, 1, 0])
    with pytest.raises(ValueError, match="NaN"):
        semantic_consistency(torch.ones(2, 2), [0.0, float("nan")])
    with pytest.raises(ValueError, match="no active dimension"):
        semantic_consistency(torch.zeros(4, 2), [0, 1, 0, 1])
    with pytest.raises(ValueError, match="at least 2 active"):
        feature_correlation(torch.tensor([[1.0, 0.0], [2.0, 0.0]]))
    with pytest.raises(ValueError, match="numeric"):
        sparsity(np.array([["a", "b"]]))
