"""Retrieval precision and mAP against per-query loops (dense and inverted-index paths)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score

from ncl_ext.analysis import cosine_top_k, mean_average_precision, retrieval_precision
from ncl_ext.analysis.retrieval import _normalized_sparse_rows
from ncl_ext.analysis.sparse_index import inverted_index_pays_off
from ncl_ext.analysis.topk import dense_top_k, top_k_lowest_index_ties


def reference_rankings(z: np.ndarray) -> list[np.ndarray]:
    """For each sample, the others sorted by decreasing cosine similarity (per-query loop)."""
    rankings = []
    for n in range(len(z)):
        scores = []
        for j in range(len(z)):
            if j != n:
                norms = np.linalg.norm(z[n]) * np.linalg.norm(z[j])
                scores.append((-(z[n] @ z[j]) / norms if norms > 0 else 0.0, j))
        rankings.append(np.array([j for _, j in sorted(scores)]))
    return rankings


def reference_precision(z: np.ndarray, labels: np.ndarray, k: int) -> float:
    return float(
        np.mean([np.mean(labels[ranking[:k]] == labels[n]) for n, ranking in enumerate(reference_rankings(z))])
    )


def reference_map(z: np.ndarray, labels: np.ndarray, k: int) -> float:
    values = []
    for n, ranking in enumerate(reference_rankings(z)):
        relevant_total = int((labels == labels[n]).sum()) - 1
        if relevant_total == 0:
            continue
        hits, total = 0, 0.0
        for i, j in enumerate(ranking[:k], start=1):
            if labels[j] == labels[n]:
                hits += 1
                total += hits / i
        values.append(total / min(k, relevant_total))
    return float(np.mean(values))


def normalize_rows(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def features(kind: str, seed: int = 0, shape: tuple[int, int] = (120, 64)) -> torch.Tensor:
    z = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    return torch.relu(z - 1.65) if kind == "sparse" else z  # sparse: ~95% zeros


@pytest.mark.parametrize("kind", ["sparse", "dense"])
@pytest.mark.parametrize("k", [1, 10])
def test_precision_and_map_match_loops(kind: str, k: int) -> None:
    z = features(kind)
    labels = np.arange(len(z)) % 6
    rows = _normalized_sparse_rows(torch.as_tensor(z))
    uses_index = rows is not None and inverted_index_pays_off(rows, rows)
    assert uses_index == (kind == "sparse")  # both search paths are covered
    array = z.double().numpy()
    assert retrieval_precision(z, labels, k=k) == pytest.approx(reference_precision(array, labels, k), abs=1e-12)
    assert mean_average_precision(z, labels, k=k) == pytest.approx(reference_map(array, labels, k), abs=1e-12)


def test_uncut_map_equals_sklearn_average_precision() -> None:
    z = features("dense", seed=1, shape=(50, 8))
    labels = np.arange(50) % 4
    array = normalize_rows(z.double().numpy())
    expected = []
    for n in range(50):
        others = np.arange(50) != n
        expected.append(average_precision_score(labels[others] == labels[n], array[others] @ array[n]))
    assert mean_average_precision(z, labels) == pytest.approx(np.mean(expected), abs=1e-12)


def test_cosine_top_k_against_a_separate_database() -> None:
    queries, database = features("dense", 2, (7, 16)), features("dense", 3, (30, 16))
    scores, indices = cosine_top_k(queries, database, k=4)
    expected = normalize_rows(queries.double().numpy()) @ normalize_rows(database.double().numpy()).T
    for row in range(7):
        assert indices[row].tolist() == list(np.argsort(-expected[row])[:4])
        assert scores[row].numpy() == pytest.approx(np.sort(expected[row])[::-1][:4], abs=1e-6)


def lowest_index_order(scores: np.ndarray, k: int) -> np.ndarray:
    """Reference: per row, the k best by decreasing score, then increasing index."""
    return np.stack([np.lexsort((np.arange(row.size), -row))[:k] for row in scores])


@pytest.mark.parametrize("k", [1, 3, 17, 40])
def test_top_k_breaks_ties_towards_the_lowest_index(k: int) -> None:
    # Scores 0..3: most rows have ties across the k-th place; the last row is all equal.
    scores = torch.randint(0, 4, (30, 40), generator=torch.Generator().manual_seed(5)).float()
    scores[-1] = 1.0
    values, indices = top_k_lowest_index_ties(scores, k)
    expected = lowest_index_order(scores.numpy(), k)
    assert indices.tolist() == expected.tolist()
    assert values.tolist() == np.take_along_axis(scores.numpy(), expected, axis=1).tolist()


@pytest.mark.parametrize("kind", ["sparse", "dense"])
def test_cosine_top_k_ties_go_to_the_lowest_index_on_both_paths(kind: str) -> None:
    z = features(kind, seed=6)
    z[60:] = z[:60]  # every sample has an exact duplicate: pairs of equal similarities everywhere
    z[5] = 0.0  # an all-zero sample: similarity 0 to all, and the zero rows tie with everything at 0
    rows = _normalized_sparse_rows(z)
    assert (rows is not None and inverted_index_pays_off(rows, rows)) == (kind == "sparse")
    normalized = z.double().numpy() / np.maximum(np.linalg.norm(z.double().numpy(), axis=1, keepdims=True), 1e-12)
    similarity = normalized @ normalized.T
    np.fill_diagonal(similarity, -np.inf)
    _, indices = cosine_top_k(z, None, k=8)
    _, separate = cosine_top_k(z[:20], z, k=8)
    for found, query in ((indices, similarity), (separate, normalized[:20] @ normalized.T)):
        assert found.tolist() == lowest_index_order(query, 8).tolist()


def test_dense_top_k_excludes_self_and_breaks_ties_by_index() -> None:
    database = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    scores, indices = dense_top_k(database, database, k=2, exclude_self=True)
    assert indices.tolist() == [[1, 3], [0, 3], [0, 1], [0, 1]]
    assert scores.tolist() == [[1.0, 1.0], [1.0, 1.0], [0.0, 0.0], [1.0, 1.0]]


def test_well_separated_classes_have_perfect_precision() -> None:
    labels = torch.arange(60) % 3
    z = torch.eye(3)[labels] + 0.01 * torch.rand(60, 3)
    assert retrieval_precision(z, labels, k=19) == 1.0
    assert mean_average_precision(z, labels, k=19) == 1.0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_precision_on_cuda_equals_cpu() -> None:
    z = features("dense", 4)
    labels = np.arange(len(z)) % 5
    assert retrieval_precision(z.cuda(), labels, k=5) == pytest.approx(retrieval_precision(z, labels, k=5))


def test_retrieval_bad_inputs() -> None:
    z = torch.rand(5, 3)
    with pytest.raises(ValueError, match="k=5 exceeds"):
        retrieval_precision(z, [0, 1, 0, 1, 0], k=5)
    with pytest.raises(ValueError, match="labels has 2 entries"):
        retrieval_precision(z, [0, 1], k=1)
    with pytest.raises(ValueError, match="NaN"):
        retrieval_precision(torch.full((3, 2), float("nan")), [0, 1, 0], k=1)
    with pytest.raises(ValueError, match="at least one label shared"):
        mean_average_precision(z, [0, 1, 2, 3, 4], k=2)
    with pytest.raises(ValueError, match="dims"):
        cosine_top_k(z, torch.rand(4, 2), k=1)
