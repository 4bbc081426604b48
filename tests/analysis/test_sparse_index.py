"""SparseIndex returns exactly the dense top-k, on random inputs with 80-99% zeros; ties go to the lower index."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch
import torch.nn.functional as F

from ncl_ext.analysis import SparseIndex


def sparse_rows(num: int, dim: int, zero_fraction: float, seed: int, signed: bool = False) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    values = torch.randn(num, dim, generator=generator) if signed else torch.rand(num, dim, generator=generator)
    mask = torch.rand(num, dim, generator=generator) >= zero_fraction
    return F.normalize(values * mask, dim=1)


def assert_exact_top_k(queries, database, scores, indices, k: int, exclude_self: bool = False) -> None:
    """Same scores as the float64 dense top-k; same items except among exactly tied scores."""
    exact = queries.double() @ database.double().T
    if exclude_self:
        exact.fill_diagonal_(-np.inf)
    expected_scores = exact.topk(k, dim=1).values
    assert scores.double().numpy() == pytest.approx(expected_scores.numpy(), abs=1e-6)
    for row in range(len(queries)):
        returned = indices[row].tolist()
        assert len(set(returned)) == k
        assert exact[row, returned].numpy() == pytest.approx(expected_scores[row].numpy(), abs=1e-12)
        kth = float(expected_scores[row, -1])
        must_have = torch.nonzero(exact[row] > kth + 1e-12).flatten().tolist()
        assert set(must_have) <= set(returned)


@pytest.mark.parametrize("zero_fraction", [0.8, 0.9, 0.95, 0.99])
@pytest.mark.parametrize("k", [1, 10])
def test_search_equals_dense_top_k(zero_fraction: float, k: int) -> None:
    database = sparse_rows(2000, 256, zero_fraction, seed=0)
    queries = sparse_rows(300, 256, zero_fraction, seed=1)
    index = SparseIndex(database, backend="inverted")
    assert index.backend == "inverted"
    scores, indices = index.search(queries, k)
    assert scores.dtype == torch.float32 and indices.dtype == torch.long and scores.shape == (300, k)
    assert_exact_top_k(queries, database, scores, indices, k)


@pytest.mark.parametrize("zero_fraction", [0.8, 0.95, 0.99])
@pytest.mark.parametrize("signed", [False, True])
def test_search_self_equals_dense_top_k_without_the_diagonal(zero_fraction: float, signed: bool) -> None:
    database = sparse_rows(800, 128, zero_fraction, seed=2, signed=signed)
    database[:3] = 0.0  # items with no non-zero: only zero-score neighbours
    scores, indices = SparseIndex(database, backend="inverted").search_self(5)
    assert not bool((indices == torch.arange(800)[:, None]).any())
    assert_exact_top_k(database, database, scores, indices, 5, exclude_self=True)
    if not signed:  # zero-score neighbours are the lowest-index others, as for search()
        assert indices[0].tolist() == [1, 2, 3, 4, 5] and scores[0].tolist() == [0.0] * 5


def test_search_self_ties_and_zero_fill_match_search() -> None:
    database = sparse_rows(300, 64, 0.97, seed=8)
    database[10] = database[20]  # an exact tie
    index = SparseIndex(database, backend="inverted")
    self_scores, self_indices = index.search_self(4)
    scores, indices = index.search(database, 5)
    for row in range(300):  # drop the item itself from the plain search, keep the first 4
        keep = [j for j, item in enumerate(indices[row].tolist()) if item != row][:4]
        assert self_indices[row].tolist() == indices[row, keep].tolist()
        assert self_scores[row].tolist() == scores[row, keep].tolist()


def test_ties_break_towards_the_lower_index_and_empty_queries_get_zero_scores() -> None:
    database = torch.zeros(10, 4)
    database[[2, 5, 7], 0] = 1.0  # three identical items
    database[9, 1] = 2.0
    queries = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0]])
    scores, indices = SparseIndex(database, backend="inverted").search(queries, 4)
    assert indices.tolist() == [[2, 5, 7, 0], [0, 1, 2, 3], [0, 1, 2, 3]]
    assert scores.tolist() == [[1.0, 1.0, 1.0, 0.0], [0.0] * 4, [0.0] * 4]


def lowest_index_top_k(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Reference: per row, sort by decreasing score, then increasing index (numpy lexsort)."""
    order = np.stack([np.lexsort((np.arange(row.size), -row))[:k] for row in scores])
    return np.take_along_axis(scores, order, axis=1), order


@pytest.mark.parametrize("k", [1, 5, 40])
def test_equal_scores_give_the_same_lowest_indices_in_both_backends(k: int) -> None:
    # Small integer values: every score is an exact integer in float32 and float64, so the
    # many equal scores are exact ties for both backends.
    generator = torch.Generator().manual_seed(11)
    database = torch.randint(0, 3, (300, 32), generator=generator).float()
    database *= torch.rand(300, 32, generator=generator) < 0.15
    database[100:150] = database[:50]  # duplicated items
    queries = torch.randint(0, 3, (60, 32), generator=generator).float()
    queries *= torch.rand(60, 32, generator=generator) < 0.2
    queries[0] = 0.0  # every item ties at 0
    expected_scores, expected_indices = lowest_index_top_k(queries.double().numpy() @ database.double().numpy().T, k)
    self_scores = database.double().numpy() @ database.double().numpy().T
    np.fill_diagonal(self_scores, -np.inf)
    expected_self_scores, expected_self = lowest_index_top_k(self_scores, k)
    for backend in ("inverted", "dense"):
        index = SparseIndex(database, backend=backend)
        scores, indices = index.search(queries, k)
        assert indices.tolist() == expected_indices.tolist(), backend
        assert scores.tolist() == expected_scores.tolist(), backend
        scores, indices = index.search_self(k)
        assert indices.tolist() == expected_self.tolist(), backend
        assert scores.tolist() == expected_self_scores.tolist(), backend


@pytest.mark.parametrize("zero_fraction", [0.95, 0.99])
def test_same_top_10_as_the_dense_float32_search(zero_fraction: float) -> None:
    # The benchmark's setting, smaller: uniform-sparse non-negative L2-normalised rows.
    database = sparse_rows(20_000, 512, zero_fraction, seed=12)
    queries = sparse_rows(200, 512, zero_fraction, seed=13)
    _, indices = SparseIndex(database, backend="inverted").search(queries, 10)
    dense = (queries @ database.T).topk(10, dim=1)
    exact = queries.double() @ database.double().T
    for row, (found, expected) in enumerate(zip(indices.tolist(), dense.indices.tolist(), strict=True)):
        if set(found) != set(expected):  # only float32 rounding of near-ties may differ
            kth = float(exact[row].topk(10).values[-1])
            assert all(abs(float(exact[row, item]) - kth) < 1e-6 for item in set(found) ^ set(expected))


def test_results_do_not_depend_on_the_number_of_threads() -> None:
    database, queries = sparse_rows(3000, 128, 0.9, seed=14), sparse_rows(97, 128, 0.9, seed=15)
    index = SparseIndex(database, backend="inverted")
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = index.search(queries, 7), index.search_self(7)
        torch.set_num_threads(2)
        two = index.search(queries, 7), index.search_self(7)
    finally:
        torch.set_num_threads(threads)
    for (scores_one, indices_one), (scores_two, indices_two) in zip(one, two, strict=True):
        assert torch.equal(indices_one, indices_two) and torch.equal(scores_one, scores_two)


def test_dense_database_uses_the_dense_backend_with_the_same_answer() -> None:
    database, queries = sparse_rows(500, 64, 0.5, seed=3), sparse_rows(40, 64, 0.5, seed=4)
    index = SparseIndex(database)
    assert index.backend == "dense" and index.nbytes == index.dense_nbytes
    scores, indices = index.search(queries, 7)
    assert_exact_top_k(queries, database, scores, indices, 7)


def test_auto_backend_follows_the_work_of_the_posting_scans_not_the_share_of_zeros() -> None:
    # 75% zeros, but a quarter of the dims fire on nearly every item (as in a lightly trained
    # NCL head): every query scans those long posting lists, so the dense product is cheaper.
    generator = torch.Generator().manual_seed(9)
    active = torch.zeros(2000, 256, dtype=torch.bool)
    active[:, :60] = torch.rand(2000, 60, generator=generator) < 0.97
    active[:, 60:] = torch.rand(2000, 196, generator=generator) < 0.02
    database = F.normalize(torch.rand(2000, 256, generator=generator) * active, dim=1)
    assert 0.7 < float((database == 0).float().mean()) < 0.8
    auto = SparseIndex(database)
    assert auto.backend == "dense"
    assert SparseIndex(sparse_rows(2000, 256, 0.99, seed=10)).backend == "inverted"
    queries = database[:50]
    scores, indices = auto.search(queries, 5)
    inverted_scores, inverted_indices = SparseIndex(database, backend="inverted").search(queries, 5)
    assert_exact_top_k(queries, database, scores, indices, 5)
    assert_exact_top_k(queries, database, inverted_scores, inverted_indices, 5)
    with pytest.raises(ValueError, match="backend='fast'; expected one of"):
        SparseIndex(database, backend="fast")


@pytest.mark.parametrize(("factor", "pays_off"), [(0.5, True), (0.95, True), (1.05, False), (3.0, False)])
def test_inverted_index_pays_off_in_the_closed_form_uniform_case(factor: float, pays_off: bool) -> None:
    # Every dim used by a share s of N items, N queries: the scans cost D (s N)^2 SPARSE_OP_COST
    # + N^2 SCAN_COST, the product N^2 D, so posting lists pay off exactly when
    # s < sqrt((1 - SCAN_COST / D) / SPARSE_OP_COST).
    from ncl_ext.analysis.sparse_index import SCAN_COST, SPARSE_OP_COST, inverted_index_pays_off

    dim = 64
    share = factor * ((1 - SCAN_COST / dim) / SPARSE_OP_COST) ** 0.5
    used = np.zeros((1000, dim), dtype=np.float32)
    used[: round(share * 1000)] = 1.0  # every dim: the same number of items
    matrix = sp.csr_matrix(used)
    assert inverted_index_pays_off(matrix, matrix) is pays_off


def test_scipy_sparse_inputs_and_memory_size() -> None:
    database = sparse_rows(3000, 512, 0.95, seed=5)
    matrix = sp.csr_matrix(database.numpy())
    index = SparseIndex(matrix)
    nnz = matrix.nnz
    assert index.nbytes == nnz * (4 + 4) + (512 + 1) * 8  # float32 values, uint32 items, int64 offsets
    assert index.dense_nbytes == 3000 * 512 * 4
    assert index.dense_nbytes / index.nbytes > 9.5  # 95% zeros: about 10x smaller
    queries = sparse_rows(50, 512, 0.95, seed=6)
    scores, indices = index.search(sp.csr_matrix(queries.numpy()), 3)
    expected_scores, expected_indices = SparseIndex(database).search(queries, 3)
    assert torch.equal(indices, expected_indices) and torch.equal(scores, expected_scores)
    assert "backend='inverted'" in repr(index)


def test_search_bad_inputs() -> None:
    index = SparseIndex(sparse_rows(20, 8, 0.8, seed=7), backend="inverted")
    with pytest.raises(ValueError, match="queries have 9 dims"):
        index.search(torch.rand(2, 9), 1)
    with pytest.raises(ValueError, match="k=21 exceeds the 20"):
        index.search(torch.rand(2, 8), 21)
    with pytest.raises(ValueError, match="k=20 exceeds the 19"):
        index.search_self(20)
    with pytest.raises(ValueError, match="k must be an int"):
        index.search(torch.rand(2, 8), 0)
    with pytest.raises(ValueError, match="database contains NaN"):
        SparseIndex(torch.tensor([[float("nan"), 1.0]]))
    with pytest.raises(ValueError, match="database must be 2-D"):
        SparseIndex(torch.ones(3))


def test_to_csr_and_row_normalisation_match_scipy_and_torch() -> None:
    from ncl_ext.analysis._sparse import l2_normalize_rows, to_csr

    dense = torch.relu(torch.randn(50, 33, generator=torch.Generator().manual_seed(3)) - 1.0)
    dense[7] = 0.0  # an all-zero row
    dense[8, 2] = -0.0  # negative zero is a zero
    expected = sp.csr_matrix(dense.numpy())
    csr = to_csr(dense)
    assert (csr != expected).nnz == 0
    assert csr.nnz == expected.nnz and csr.has_sorted_indices
    normalised = l2_normalize_rows(csr).toarray()
    np.testing.assert_allclose(normalised, F.normalize(dense, dim=1).numpy(), rtol=1e-6, atol=1e-7)
