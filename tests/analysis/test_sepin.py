"""SEPIN@k: the vectorised leave-one-out estimate against a loop that really drops each dimension."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ncl_ext.analysis import sepin_at_k, sepin_scores


def reference_infonce(z: np.ndarray, p: np.ndarray, temperature: float) -> float:
    """log n + mean_a [f(a, a) - log sum_b exp f(a, b)], f = cosine / temperature (zero vectors: 0)."""
    n = len(z)
    total = 0.0
    for a in range(n):
        logits = []
        for b in range(n):
            norms = np.linalg.norm(z[a]) * np.linalg.norm(p[b])
            logits.append(0.0 if norms == 0 else float(z[a] @ p[b]) / norms / temperature)
        total += logits[a] - math.log(sum(math.exp(v) for v in logits))
    return math.log(n) + total / n


def reference_sepin(z: torch.Tensor, p: torch.Tensor | None, temperature: float) -> np.ndarray:
    z = z.double().numpy()
    p = z if p is None else p.double().numpy()
    full = reference_infonce(z, p, temperature)
    return np.array(
        [full - reference_infonce(np.delete(z, i, 1), np.delete(p, i, 1), temperature) for i in range(z.shape[1])]
    )


def make(kind: str, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    z = torch.randn(14, 7, generator=generator)
    if kind == "sparse":
        z = torch.relu(z - 0.8)
        z[0] = 0.0  # an all-zero sample
        z[1, :] = 0.0
        z[1, 2], z[1, 5] = 0.6, 2e-5  # dominated by one dim, with a tiny second one
    elif kind == "nonneg":
        z = torch.relu(z)
    return z


@pytest.mark.parametrize("kind", ["sparse", "nonneg", "signed"])
@pytest.mark.parametrize("temperature", [0.2, 1.0])
def test_sepin_matches_dropping_each_dimension(kind: str, temperature: float) -> None:
    z = make(kind, seed=0)
    expected = reference_sepin(z, None, temperature)
    # 1e-8: sample 1 keeps 3e-5 of its norm without dim 2, so G_ab - z_ai p_bi cancels ~1e-9.
    assert sepin_scores(z, temperature=temperature).numpy() == pytest.approx(expected, abs=1e-8)


@pytest.mark.parametrize("kind", ["sparse", "signed"])
def test_sepin_with_a_second_view_as_positives(kind: str) -> None:
    z, p = make(kind, seed=1), make(kind, seed=2)
    expected = reference_sepin(z, p, 0.5)
    assert sepin_scores(z, positives=p, temperature=0.5).numpy() == pytest.approx(expected, abs=1e-8)


def test_duplicated_and_dead_dimensions_score_zero_and_class_dimensions_the_closed_form() -> None:
    # n samples in C equal classes; class c fires only dimension c (random magnitude).
    n, num_classes, temperature = 60, 4, 0.2
    classes = torch.arange(n) % num_classes
    z = torch.eye(num_classes)[classes] * (torch.rand(n, 1) + 0.5)
    z = torch.cat([z, z[:, :1], torch.zeros(n, 1)], dim=1)  # dim 4 duplicates dim 0, dim 5 is dead
    scores = sepin_scores(z, temperature=temperature)
    # Dropping a copy of dim 0, or the dead dim, changes no cosine: no information is lost.
    assert scores[[0, 4, 5]].abs().max() < 1e-12
    # Dropping the only dim of class c zeroes those samples: their rows go from
    # 1/t - log(m e^{1/t} + n - m) to -log n, m = n / C; the other rows do not change.
    m = n // num_classes
    closed_form = (math.log(n) + 1 / temperature - math.log(m * math.exp(1 / temperature) + n - m)) / num_classes
    assert scores[1:4].tolist() == pytest.approx([closed_form] * 3, rel=1e-9)


def test_sepin_at_k_averages_the_top_scores() -> None:
    z = make("nonneg", seed=3)
    scores = np.sort(reference_sepin(z, None, 0.2))[::-1]
    result = sepin_at_k(z, ks=(1, 3, 100, None))
    assert list(result) == ["sepin@1", "sepin@3", "sepin@100", "sepin@all"]
    assert result["sepin@1"] == pytest.approx(scores[0], abs=1e-10)
    assert result["sepin@3"] == pytest.approx(scores[:3].mean(), abs=1e-10)
    assert result["sepin@100"] == pytest.approx(scores.mean(), abs=1e-10)  # k > D averages all D
    assert result["sepin@all"] == pytest.approx(scores.mean(), abs=1e-10)


def test_sepin_uses_a_seeded_subset_of_num_samples() -> None:
    z = torch.relu(torch.randn(50, 6, generator=torch.Generator().manual_seed(4)))
    rows = torch.randperm(50, generator=torch.Generator().manual_seed(7))[:12].sort().values
    expected = reference_sepin(z[rows], None, 0.2)
    assert sepin_scores(z, num_samples=12, seed=7).numpy() == pytest.approx(expected, abs=1e-10)
    assert torch.equal(sepin_scores(z, num_samples=12, seed=7), sepin_scores(z, num_samples=12, seed=7))


def test_sepin_bad_inputs() -> None:
    z = torch.rand(10, 3)
    with pytest.raises(ValueError, match="positives must have the shape"):
        sepin_scores(z, positives=torch.rand(10, 4))
    with pytest.raises(ValueError, match="temperature"):
        sepin_scores(z, temperature=0.0)
    with pytest.raises(ValueError, match="num_samples"):
        sepin_scores(z, num_samples=1)
    with pytest.raises(ValueError, match="at least 2 samples"):
        sepin_scores(torch.rand(1, 3))
    with pytest.raises(ValueError, match="ks entry"):
        sepin_at_k(z, ks=(0,))
