"""Evaluators on precomputed sentence embeddings and the search backends, on tiny real models.

Expected values come from scipy's Spearman, hand-ranked retrieval cases and the exact
:class:`ncl_ext.analysis.SparseIndex`.
"""

import math

import numpy as np
import pytest
import torch
from datasets import Dataset
from scipy.stats import spearmanr

from ncl_ext.adapters.text import sparse_encoder
from ncl_ext.adapters.text_search import (
    PrecomputedRetrievalEvaluator,
    PrecomputedSimilarityEvaluator,
    QdrantSparseIndex,
    SeismicSparseIndex,
    STSRetrievalScorer,
)
from ncl_ext.analysis import SparseIndex
from tests._tiny_models import SENTENCES, WORDS


def test_precomputed_similarity_evaluator_matches_scipy_spearman(model):
    first, second, gold = SENTENCES[:4], SENTENCES[4:], [0.5, 4.0, 2.0, 3.0]
    texts = SENTENCES
    embeddings = torch.randn(len(texts), 6, generator=torch.Generator().manual_seed(1))
    unit = torch.nn.functional.normalize(embeddings, dim=1).numpy()
    cosines = [float(unit[texts.index(a)] @ unit[texts.index(b)]) for a, b in zip(first, second)]
    dots = [float(embeddings[texts.index(a)] @ embeddings[texts.index(b)]) for a, b in zip(first, second)]
    for name, values in (("cosine", cosines), ("dot", dots)):
        evaluator = PrecomputedSimilarityEvaluator(first, second, gold, similarity_fn_name=name)
        assert evaluator.spearman(texts, embeddings) == pytest.approx(spearmanr(values, gold)[0])
    evaluator.spearman(texts, embeddings, model)  # with a model: recorded in its model card, as the evaluator does
    assert model.model_card_data.eval_results_dict


def test_precomputed_retrieval_evaluator_scores_rankings_by_hand():
    corpus = {str(i): f"doc {i}" for i in range(5)}
    queries = {"0": "doc 0", "3": "doc 3"}
    relevant = {"0": {"2"}, "3": {"1", "4"}}
    evaluator = PrecomputedRetrievalEvaluator(queries, corpus, relevant, k=2)
    # query 0 finds itself (dropped), then 1, then 2; query 3 finds 4, itself (dropped), then 0
    indices = torch.tensor([[0, 1, 2], [4, 3, 0]])
    scores = torch.tensor([[1.0, 0.9, 0.8], [0.9, 0.8, 0.1]])
    metrics = evaluator.score(scores, indices)
    assert metrics["mrr@2"] == pytest.approx((1 / 2 + 1) / 2)
    assert metrics["recall@2"] == pytest.approx((1 + 1 / 2) / 2)
    ndcg_0 = (1 / math.log2(3)) / 1.0
    ndcg_3 = 1.0 / (1 + 1 / math.log2(3))
    assert metrics["ndcg@2"] == pytest.approx((ndcg_0 + ndcg_3) / 2)
    with pytest.raises(ValueError, match="one per query"):
        evaluator.score(scores[:1], indices[:1])


def test_sts_retrieval_scorer_gives_the_same_metrics_for_dense_and_sparse_search():
    sts = Dataset.from_dict({
        "sentence1": ["a cat", "a dog", "a car", "the sun"],
        "sentence2": ["the cat", "the dog", "a bus", "a star"],
        "score": [4.5, 4.0, 1.0, 0.5],
    })
    scorer = STSRetrievalScorer(sts, min_score=4.0, top_k=2, timing_repeats=1)
    assert scorer.texts == ["a cat", "the cat", "a dog", "the dog", "a car", "a bus", "the sun", "a star"]
    # cat words share dimension 0, dog words dimension 1; each row also has a dimension of its own
    embeddings = torch.zeros(8, 10)
    embeddings[[0, 1], 0] = 1.0
    embeddings[[2, 3], 1] = 1.0
    embeddings[torch.arange(8), 2 + torch.arange(8)] = 0.5
    dense = scorer.score(embeddings, sparse=False)
    sparse = scorer.score(embeddings, sparse=True)
    for name in ("spearman", "mrr@2", "ndcg@2", "recall@2"):
        assert dense[name] == pytest.approx(sparse[name])
    assert dense["mrr@2"] == 1.0 and dense["recall@2"] == 1.0  # every partner ranks first
    assert dense["index_kib"] == pytest.approx(4 * 8 * 10 / 1024)
    assert sparse["index_kib"] == pytest.approx(8 * (12 + 8) / 1024)  # 12 non-zeros, 8 rows
    assert scorer.compare_engine(QdrantSparseIndex, embeddings, queries=4)["recall_vs_exact"] == 1.0
    with pytest.raises(ValueError, match="one per text"):
        scorer.score(embeddings[:3], sparse=False)
    with pytest.raises(ValueError, match="similarity='l2'"):
        scorer.score(embeddings, sparse=False, similarity="l2")
    with pytest.raises(ValueError, match="timing_repeats must be an int >= 1, got 0"):
        STSRetrievalScorer(sts, timing_repeats=0)
    with pytest.raises(ValueError, match="top_k must be an int >= 1, got 0"):
        STSRetrievalScorer(sts, top_k=0)


def corpus_sentences(count, seed=0):
    generator = np.random.default_rng(seed)
    sentences = {" ".join(generator.choice(WORDS, size=6)) for _ in range(2 * count)}
    return sorted(sentences)[:count]


@pytest.fixture(scope="module")
def ncl_rows(tiny_path):
    """L2-normalised NCL embeddings of 80 distinct sentences, cut to 16 active dims per row."""
    torch.manual_seed(0)
    encoder = sparse_encoder(tiny_path, dim=64, device="cpu")
    rows = encoder.encode(corpus_sentences(80), max_active_dims=16).to_dense()
    return torch.nn.functional.normalize(rows, dim=1)


def test_qdrant_local_mode_top10_equals_the_exact_sparse_index(ncl_rows):
    queries = ncl_rows[:30] + 0.01 * ncl_rows[30:60]  # near-duplicates of corpus rows, not copies
    exact_scores, exact = SparseIndex(ncl_rows).search(queries, 10)
    index = QdrantSparseIndex(ncl_rows)  # QdrantClient(":memory:"): in process, no server
    scores, found = index.search(queries, 10)
    recall = np.mean([len(set(a.tolist()) & set(b.tolist())) / 10 for a, b in zip(found, exact)])
    assert recall >= 0.99
    torch.testing.assert_close(scores, exact_scores, atol=1e-5, rtol=1e-5)
    assert index.client.count(index.collection).count == len(ncl_rows)


def test_qdrant_index_rejects_bad_input():
    with pytest.raises(ValueError, match="NaN"):
        QdrantSparseIndex(torch.tensor([[1.0, float("nan")]]))
    with pytest.raises(ValueError, match="2-D"):
        QdrantSparseIndex(torch.ones(3))


def test_seismic_finds_nearly_the_exact_top10(ncl_rows):
    pytest.importorskip("seismic")
    queries = ncl_rows[:30] + 0.01 * ncl_rows[30:60]
    _, exact = SparseIndex(ncl_rows).search(queries, 10)
    scores, found = SeismicSparseIndex(ncl_rows, summary_energy=1.0).search(queries, 10, query_cut=16)
    recall = np.mean([len(set(a.tolist()) & set(b.tolist())) / 10 for a, b in zip(found, exact)])
    assert recall >= 0.95  # approximate: block summaries may skip a document
    assert (scores[:, :-1] >= scores[:, 1:]).all()


def test_the_old_import_location_still_works_with_a_deprecation_warning():
    import ncl_ext.adapters.text as text

    with pytest.warns(DeprecationWarning, match="moved to ncl_ext.adapters.text_search.QdrantSparseIndex"):
        assert text.QdrantSparseIndex is QdrantSparseIndex
    with pytest.raises(AttributeError, match="no attribute 'Nothing'"):
        text.Nothing  # noqa: B018
