"""Expected-activation feature selection against a per-sample loop."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ncl_ext.analysis import (
    expected_activation,
    expected_activation_order,
    random_dims,
    select_top_dims,
)


def reference_expected_activation(z: np.ndarray) -> np.ndarray:
    total = np.zeros(z.shape[1])
    for row in z:
        norm = np.sqrt(sum(v * v for v in row))
        if norm > 0:
            total += np.abs(row) / norm
    return total / len(z)


@pytest.mark.parametrize("signed", [False, True])
def test_expected_activation_matches_a_loop(signed: bool) -> None:
    z = torch.randn(40, 9, generator=torch.Generator().manual_seed(0))
    z = z if signed else torch.relu(z)
    z[5] = 0.0  # an all-zero sample contributes 0
    expected = reference_expected_activation(z.double().numpy())
    assert expected_activation(z).numpy() == pytest.approx(expected, abs=1e-6)
    order = expected_activation_order(z)
    assert order.dtype == torch.long
    assert order.tolist() == sorted(range(9), key=lambda d: (-expected[d], d))


def test_order_puts_the_most_active_first_and_breaks_ties_by_index() -> None:
    z = torch.tensor([[0.0, 1.0, 0.0, 1.0], [0.0, 1.0, 0.0, 1.0], [1.0, 0.0, 0.0, 0.0]])
    assert expected_activation_order(z).tolist() == [1, 3, 0, 2]
    assert select_top_dims(z, 2).tolist() == [1, 3]
    assert select_top_dims(z, 0.75).tolist() == [1, 3, 0]


def test_random_dims_are_distinct_sorted_and_seeded() -> None:
    dims = random_dims(100, 25, seed=3)
    assert len(set(dims.tolist())) == 25 and dims.tolist() == sorted(dims.tolist())
    assert torch.equal(dims, random_dims(100, 0.25, seed=3))
    assert not torch.equal(dims, random_dims(100, 25, seed=4))


def test_selection_bad_inputs() -> None:
    z = torch.rand(5, 4)
    with pytest.raises(ValueError, match="num_dims"):
        select_top_dims(z, 5)
    with pytest.raises(ValueError, match="fraction"):
        select_top_dims(z, 1.5)
    with pytest.raises(ValueError, match="num_dims"):
        random_dims(4, 0)
