"""Feature metrics against a numpy transcription of the official NCL code and closed-form cases."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
import torch

from ncl_ext.analysis import (
    activation_frequency,
    active_dims,
    batch_statistics,
    correlation_matrix,
    dead_dims,
    effective_rank,
    effective_rank_entropy,
    feature_correlation,
    is_non_negative,
    semantic_consistency,
    sparsity,
)
from tests import _reference as ref

EPS = 1e-5


def random_features(seed: int, kind: str, shape: tuple[int, int] = (60, 12)) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    z = torch.randn(shape, generator=generator)
    if kind == "sparse":  # ~95% zeros: the sparse (scipy) Gram path
        z = torch.relu(z - 1.7)
    elif kind == "nonneg":  # ~70% zeros: the dense Gram path
        z = torch.relu(z - 0.5)
    z[:, 3] = 0.0  # a dead dimension
    z[5] = 0.0  # an all-zero sample
    if kind == "signed":
        z[:, 7] = -z[:, 7].abs() - 0.1  # a dimension that is always negative
    return z


KINDS = ["sparse", "nonneg", "signed"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("seed", [0, 1])
def test_metrics_match_the_official_code(kind: str, seed: int) -> None:
    z = random_features(seed, kind) * 3.0  # scale must not matter: rows are normalised
    labels = torch.randint(0, 4, (z.shape[0],), generator=torch.Generator().manual_seed(seed))
    array, codes = z.double().numpy(), labels.numpy()

    assert sparsity(z) == pytest.approx(ref.official_sparsity(array), abs=1e-4)
    assert semantic_consistency(z, labels) == pytest.approx(ref.official_semantic_consistency(array, codes), abs=1e-4)
    assert feature_correlation(z).mean == pytest.approx(ref.official_orthogonality(array), abs=1e-4)
    assert effective_rank_entropy(z) == pytest.approx(ref.official_erank_entropy(array), abs=1e-4)
    assert effective_rank(z) == pytest.approx(math.exp(ref.official_erank_entropy(array)), rel=1e-4)
    assert len(active_dims(z)) == ref.active_dim_count(array)
    assert len(active_dims(z, eps=0.0)) == ref.active_dim_count(array, eps=0.0)  # the official act_dim
    assert 3 in dead_dims(z).tolist() and 7 not in dead_dims(z).tolist()
    assert is_non_negative(z) == bool((array >= 0).all())


@pytest.mark.parametrize("kind", KINDS)
def test_per_dimension_counts_and_medians_match_loops(kind: str) -> None:
    z = random_features(2, kind)
    unit = ref.unit_rows(z.double().numpy())
    frequency = [sum(abs(unit[n, d]) > EPS for n in range(len(unit))) / len(unit) for d in range(unit.shape[1])]
    assert activation_frequency(z).tolist() == pytest.approx(frequency, abs=1e-7)
    assert sparsity(z) == pytest.approx(1 - np.mean(frequency), abs=1e-12)
    assert dead_dims(z).tolist() == [d for d, f in enumerate(frequency) if f == 0]
    # The median of |C - I| runs over the same d^2 entries as the official mean.
    kept = [d for d in range(unit.shape[1]) if np.abs(unit[:, d]).sum() > 0]
    columns = [unit[:, d] / np.linalg.norm(unit[:, d]) for d in kept]
    errors = [abs(float(a @ b) - (i == j)) for i, a in enumerate(columns) for j, b in enumerate(columns)]
    assert feature_correlation(z).median == pytest.approx(float(np.median(errors)), abs=1e-9)


def test_signed_class_structured_features_have_consistency_near_one_over_classes() -> None:
    """Every dimension of dense signed features is non-zero on (almost) every sample: the top class share."""
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(500) % 10
    z = torch.randn(500, 64, generator=generator) + torch.randn(10, 64, generator=generator)[labels]
    official = ref.official_semantic_consistency(z.double().numpy(), labels.numpy())
    assert semantic_consistency(z, labels) == pytest.approx(official, abs=1e-4)
    assert semantic_consistency(z, labels) == pytest.approx(0.1, abs=1e-4)
    assert dead_dims(z).tolist() == [] and sparsity(z) < 1e-4


def test_one_hot_features_have_consistency_one_and_correlation_zero() -> None:
    labels = torch.arange(40) % 5
    z = torch.eye(5)[labels] * torch.linspace(0.5, 2.0, 40)[:, None]
    assert semantic_consistency(z, labels) == 1.0
    assert tuple(feature_correlation(z)) == (0.0, 0.0)
    assert sparsity(z) == pytest.approx(1 - 1 / 5)
    # Normalised rows are the 5 one-hot vectors, 8 of each: singular values all sqrt(8).
    assert effective_rank_entropy(z) == pytest.approx(-math.log(1 / 5 + 1e-6), abs=1e-12)


def test_duplicated_columns_have_correlation_one_off_the_diagonal() -> None:
    column = torch.rand(30, 1) + 0.1
    z = torch.cat([column, 3.0 * column, torch.zeros(30, 2)], dim=1)  # same direction, two dead dims
    assert tuple(feature_correlation(z)) == pytest.approx((0.5, 0.5))  # 2 of 4 entries are 1
    assert dead_dims(z).tolist() == [2, 3]
    assert effective_rank(z) == pytest.approx(1 / (1 + 1e-6))


def test_effective_rank_closed_forms() -> None:
    assert effective_rank(torch.eye(7)) == pytest.approx(1 / (1 / 7 + 1e-6), rel=1e-12)
    assert effective_rank(torch.outer(torch.arange(1.0, 6.0), torch.ones(4))) == pytest.approx(1 / (1 + 1e-6))
    assert effective_rank(torch.zeros(3, 4)) == 0.0 and effective_rank_entropy(torch.zeros(3, 4)) == 0.0
    # Unnormalised rows (3, 0) and (0, 1): singular values 3 and 1, p = (3/4, 1/4).
    p = np.array([0.75, 0.25])
    entropy = -(p * np.log(p + 1e-6)).sum()
    assert effective_rank_entropy(torch.diag(torch.tensor([3.0, 1.0])), normalize_rows=False) == pytest.approx(entropy)
    assert effective_rank_entropy(torch.diag(torch.tensor([3.0, 1.0]))) == pytest.approx(-math.log(0.5 + 1e-6))


def test_wide_and_narrow_matrices_give_the_same_effective_rank() -> None:
    """N < D takes the Gram matrix of the rows: the non-zero spectrum is that of the columns."""
    z = random_features(3, "signed", shape=(20, 50))
    official = ref.official_erank_entropy(z.double().numpy())
    assert effective_rank_entropy(z) == pytest.approx(official, abs=1e-9)
    assert effective_rank_entropy(z.T.contiguous()) == pytest.approx(ref.official_erank_entropy(z.T.double().numpy()))


def test_unnormalised_variants_use_the_features_as_given() -> None:
    z = torch.tensor([[1e-6, 0.5, -1e-6], [0.0, 2e-5, 3.0]])
    # Normalised rows: (2e-6, 1, -2e-6) and (0, 6.7e-6, 1): three entries above 1e-5 of six.
    assert sparsity(z) == pytest.approx(4 / 6)
    assert sparsity(z, normalize_rows=False) == pytest.approx(3 / 6)  # 2e-5 > 1e-5 as given
    assert sparsity(z, eps=0.0) == pytest.approx(1 / 6)
    assert activation_frequency(z, normalize_rows=False).tolist() == pytest.approx([0.0, 1.0, 0.5])
    assert dead_dims(z).tolist() == [0]


def test_correlation_matrix_of_selected_dims() -> None:
    z = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0], [0.0, 0.0, 0.0]])
    matrix = correlation_matrix(z, dims=[0, 2, 1])
    expected = [[1, 1 / math.sqrt(2), 0], [1 / math.sqrt(2), 1, 1 / math.sqrt(2)], [0, 1 / math.sqrt(2), 1]]
    assert matrix.tolist() == [pytest.approx(row) for row in expected]
    assert correlation_matrix(torch.cat([z, torch.zeros(3, 1)], 1))[3].tolist() == [0.0] * 4  # dead dim
    with pytest.raises(ValueError, match="dims"):
        correlation_matrix(z, dims=[5])


@pytest.mark.parametrize("kind", KINDS)
def test_batch_statistics_match_the_official_definitions(kind: str) -> None:
    z = random_features(4, kind, shape=(48, 80))  # wider than tall, like 512 x 2048 batches
    array = z.double().numpy()
    stats = batch_statistics(z)
    assert stats["sparsity"] == pytest.approx(ref.official_sparsity(array), abs=1e-4)
    assert stats["active_dims"] == ref.active_dim_count(array)
    assert stats["effective_rank_entropy"] == pytest.approx(ref.official_erank_entropy(array), abs=1e-4)
    assert stats["effective_rank"] == pytest.approx(math.exp(ref.official_erank_entropy(array)), rel=1e-4)
    assert all(isinstance(value, float) for value in stats.values())
    assert batch_statistics(z.view(48, 8, 10)) == pytest.approx(stats)  # (B, ...) is flattened


def test_batch_statistics_bad_inputs() -> None:
    with pytest.raises(ValueError, match="NaN or Inf"):
        batch_statistics(torch.tensor([[1.0, float("nan")], [0.0, 1.0]]))
    with pytest.raises(ValueError, match="floating-point"):
        batch_statistics(torch.ones(2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="a sample and a dimension"):
        batch_statistics(torch.ones(0, 3))
    assert batch_statistics(torch.zeros(4, 3)) == {
        "sparsity": 1.0,
        "active_dims": 0.0,
        "effective_rank": 0.0,
        "effective_rank_entropy": 0.0,
    }


def test_metrics_accept_numpy_float64_and_labels_of_any_type() -> None:
    z = random_features(3, "nonneg")
    labels = np.array(["cat", "dog", "eel"])[np.arange(z.shape[0]) % 3]
    codes = np.arange(z.shape[0]) % 3
    assert semantic_consistency(z.double().numpy(), labels) == pytest.approx(semantic_consistency(z, codes), abs=1e-12)
    assert sparsity(z.numpy()) == pytest.approx(sparsity(z), abs=1e-12)
    firing = [Counter(codes[(z[:, d] != 0).numpy()]) for d in range(z.shape[1])]
    shares = [max(c.values()) / sum(c.values()) for c in firing if c]
    assert semantic_consistency(z, codes) == pytest.approx(np.mean(shares))  # non-negative: z > 0 is |z| > 0


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
    with pytest.raises(ValueError, match="no entry with"):
        semantic_consistency(torch.zeros(4, 2), [0, 1, 0, 1])
    with pytest.raises(ValueError, match="every entry is zero"):
        feature_correlation(torch.zeros(3, 2))
    with pytest.raises(ValueError, match="numeric"):
        sparsity(np.array([["a", "b"]]))
