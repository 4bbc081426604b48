"""Scoring and searching sentence embeddings computed once, with sentence-transformers' own code.

Encoding is the expensive part of an evaluation; the classes here score any number of views of
one encoding (the first ``k`` dimensions, the top-``k`` of each row, another model's) and search
them with the engines sentence-transformers wraps:

- :class:`PrecomputedSimilarityEvaluator` / :class:`PrecomputedRetrievalEvaluator`:
  ``EmbeddingSimilarityEvaluator``'s Spearman and ``InformationRetrievalEvaluator``'s metrics
  (MRR@k, NDCG@k, recall@k, ...) on embeddings and rankings computed elsewhere;
- :class:`STSRetrievalScorer`: both on an STS split, with exact search timed as it would be
  served (a dense product, or :class:`ncl_ext.analysis.SparseIndex` for sparse rows);
- :class:`QdrantSparseIndex` (Qdrant, local mode or a server) and :class:`SeismicSparseIndex`
  (Seismic, approximate), built and searched by sentence-transformers' ``search_engines``, with
  the contract of :class:`ncl_ext.analysis.SparseIndex`: ``search(queries, k) -> (scores, indices)``.

The non-negative head, the NCL losses and the sparse encoder that make such embeddings are in
:mod:`ncl_ext.adapters.text`.
"""

from __future__ import annotations

import math
import timeit
import uuid
from typing import Any

import numpy as np
import torch

try:  # the module layout of sentence-transformers 6
    from sentence_transformers.sentence_transformer.evaluation import (
        EmbeddingSimilarityEvaluator,
        InformationRetrievalEvaluator,
    )
    from sentence_transformers.sparse_encoder import search_engines
except ImportError as error:
    from sentence_transformers import __version__ as _found

    raise ImportError(
        f"ncl_ext.adapters.text_search needs sentence-transformers >= 6.0, found {_found}: "
        "pip install -U 'sentence-transformers>=6.0'"
    ) from error
from torch import Tensor

from ncl_ext._checks import check_int
from ncl_ext.analysis import SparseIndex

__all__ = [
    "PrecomputedRetrievalEvaluator",
    "PrecomputedSimilarityEvaluator",
    "QdrantSparseIndex",
    "STSRetrievalScorer",
    "SeismicSparseIndex",
]


class PrecomputedSimilarityEvaluator(EmbeddingSimilarityEvaluator):
    """``EmbeddingSimilarityEvaluator`` (Spearman of similarity vs gold score) on embeddings computed beforehand.

    Encoding is the expensive part; this scores any number of variants of one encoding (the
    first ``k`` dimensions, the top-``k`` of each row, ...) with the evaluator's own code.

    Args:
        sentences1, sentences2, scores: the pairs and their gold scores.
        similarity_fn_name: ``"cosine"`` or ``"dot"``.
        name: prefix of the metric names.

    Examples:
        >>> evaluator = PrecomputedSimilarityEvaluator(["a", "b", "c"], ["x", "y", "z"], [1.0, 2.0, 3.0])
        >>> texts = ["a", "b", "c", "x", "y", "z"]
        >>> embeddings = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [1.0, 0.0]])
        >>> round(evaluator.spearman(texts, embeddings), 6)
        1.0
    """

    def __init__(
        self, sentences1: list[str], sentences2: list[str], scores: list[float],
        similarity_fn_name: str = "cosine", name: str = "sts-dev",
    ) -> None:
        super().__init__(
            sentences1, sentences2, scores, similarity_fn_names=[similarity_fn_name], name=name, write_csv=False
        )
        self.similarity_fn_name = similarity_fn_name
        self._rows: dict[str, int] = {}
        self._embeddings: Tensor | None = None

    def spearman(self, texts: list[str], embeddings: Tensor, model: Any = None) -> float:
        """The Spearman correlation, reading each sentence's embedding from row ``texts.index(sentence)``.

        ``model``, when given, records the metric in its model card, as the evaluator does.
        """
        self._rows = {text: row for row, text in enumerate(texts)}
        self._embeddings = embeddings.to_dense() if embeddings.is_sparse else embeddings
        value = float(self(model)[f"{self.name}_spearman_{self.similarity_fn_name}"])
        if math.isnan(value):
            raise ValueError(
                "the Spearman correlation is undefined: every pair got the same similarity "
                "(the embeddings are identical, or all zero, on these dimensions)"
            )
        return value

    def embed_inputs(self, model: Any, sentences: Any, **kwargs: Any) -> np.ndarray:
        return self._embeddings[[self._rows[text] for text in sentences]].float().cpu().numpy()

    def store_metrics_in_model_card_data(self, model: Any, *args: Any, **kwargs: Any) -> None:
        if model is not None:
            super().store_metrics_in_model_card_data(model, *args, **kwargs)


class PrecomputedRetrievalEvaluator(InformationRetrievalEvaluator):
    """``InformationRetrievalEvaluator``'s metrics (MRR@k, NDCG@k, recall@k, ...) of a search run elsewhere.

    Any index (:class:`ncl_ext.analysis.SparseIndex`, :class:`QdrantSparseIndex`,
    :class:`SeismicSparseIndex`, a dense product) returns ``(scores, indices)``; this scores
    those rankings with sentence-transformers' own metric code.

    Args:
        queries, corpus, relevant_docs: as for ``InformationRetrievalEvaluator`` (e.g. from
            :func:`ncl_ext.data.text_pairs.duplicate_retrieval`); row ``i`` of the searched
            matrix is the ``i``-th corpus entry.
        k: the cut-off of every metric.

    Examples:
        >>> evaluator = PrecomputedRetrievalEvaluator({"0": "a cat"}, {"0": "a cat", "1": "the cat", "2": "a car"},
        ...                                           {"0": {"1"}}, k=2)
        >>> metrics = evaluator.score(torch.tensor([[1.0, 0.9, 0.4]]), torch.tensor([[0, 2, 1]]))  # itself first
        >>> metrics["mrr@2"], metrics["recall@2"]
        (0.5, 1.0)
    """

    def __init__(
        self, queries: dict[str, str], corpus: dict[str, str], relevant_docs: dict[str, set[str]], k: int = 10
    ) -> None:
        at_k = [k]
        super().__init__(
            queries, corpus, relevant_docs, mrr_at_k=at_k, ndcg_at_k=at_k, accuracy_at_k=at_k,
            precision_recall_at_k=at_k, map_at_k=at_k, write_csv=False,
        )
        self.k = k

    def score(self, scores: Tensor, indices: Tensor) -> dict[str, float]:
        """Metrics of the rankings: row ``i`` holds corpus rows for the ``i``-th query, best first.

        A hit on the query's own id (the query itself, when queries are part of the corpus) is
        dropped, as BEIR does, so search ``k + 1`` deep in that case. Returns e.g.
        ``{"mrr@10": ..., "ndcg@10": ..., "recall@10": ..., "precision@10": ..., "accuracy@10": ..., "map@10": ...}``.
        """
        if len(scores) != len(self.queries_ids):
            raise ValueError(f"scores has {len(scores)} rows; expected one per query ({len(self.queries_ids)})")
        hits = []
        for query_id, row_scores, row_indices in zip(self.queries_ids, scores.tolist(), indices.tolist()):
            ranked = [
                {"corpus_id": self.corpus_ids[item], "score": score}
                for score, item in zip(row_scores, row_indices)
                if item >= 0 and self.corpus_ids[item] != query_id
            ]
            hits.append(ranked[: self.k])
        metrics = self.compute_metrics(hits)
        return {name.replace("@k", f"@{self.k}"): float(values[self.k]) for name, values in metrics.items()}


class STSRetrievalScorer:
    """Scores embeddings of an STS split computed once: Spearman, duplicate retrieval, search time, index size.

    Encoding is the expensive part; this scores any number of views of one encoding (the first
    ``k`` dimensions, the top-``k`` of each row, another model's) with sentence-transformers'
    evaluator code, and times exact search on them the way it would be served: a dense matrix
    product, or :class:`ncl_ext.analysis.SparseIndex` for sparse embeddings.

    Args:
        sts: ``(sentence1, sentence2, score)`` pairs, e.g. ``read_sts_csv("sts-dev.csv")``.
        min_score: pairs scored at least this are duplicates
            (:func:`ncl_ext.data.text_pairs.duplicate_retrieval`).
        top_k: cut-off of the retrieval metrics.
        timing_repeats: searches timed per measurement; the shortest counts (others' load only slows one).

    Attributes:
        texts: the distinct sentences of the split; row ``i`` of the embeddings to score is ``texts[i]``.

    Examples:
        >>> from datasets import Dataset
        >>> sts = Dataset.from_dict({"sentence1": ["a cat", "a car"], "sentence2": ["the cat", "a bus"],
        ...                          "score": [4.5, 1.0]})
        >>> scorer = STSRetrievalScorer(sts, top_k=1, timing_repeats=1)
        >>> scorer.texts
        ['a cat', 'the cat', 'a car', 'a bus']
        >>> embeddings = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.1, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
        >>> metrics = scorer.score(embeddings, sparse=True)
        >>> metrics["mrr@1"], metrics["recall@1"], metrics["index_kib"] * 1024  # 5 non-zeros, 4 rows
        (1.0, 1.0, 72.0)
    """

    def __init__(self, sts: Any, min_score: float = 4.0, top_k: int = 10, timing_repeats: int = 3) -> None:
        from ncl_ext.data.text_pairs import duplicate_retrieval

        top_k, timing_repeats = check_int(top_k, "top_k"), check_int(timing_repeats, "timing_repeats")
        queries, corpus, relevant = duplicate_retrieval(sts, min_score)
        self.texts = list(corpus.values())
        self.retrieval = PrecomputedRetrievalEvaluator(queries, corpus, relevant, top_k)
        self.query_rows = [int(query_id) for query_id in self.retrieval.queries_ids]  # corpus ids are row numbers
        pairs = list(sts["sentence1"]), list(sts["sentence2"]), list(sts["score"])
        self.sts = {name: PrecomputedSimilarityEvaluator(*pairs, similarity_fn_name=name) for name in ("cosine", "dot")}
        self.top_k, self.timing_repeats = top_k, timing_repeats

    def score(self, embeddings: Tensor, sparse: bool, similarity: str = "cosine") -> dict[str, float]:
        """``spearman``, ``mrr@k``, ``ndcg@k``, ``recall@k``, ``query_ms`` (exact search) and ``index_kib``.

        ``index_kib`` counts 4 bytes per stored value when dense; 8 per non-zero (value and
        dimension) and 8 per row (offset) when sparse.
        """
        embeddings = self._prepared(embeddings, similarity)
        queries = embeddings[self.query_rows]
        if sparse:
            search, size = SparseIndex(embeddings).search, 8 * (int((embeddings != 0).sum()) + len(embeddings))
        else:
            search, size = (lambda rows, k: torch.topk(rows @ embeddings.T, k, dim=1)), 4 * embeddings.numel()
        seconds, (scores, indices) = _best_time(lambda: search(queries, self.top_k + 1), self.timing_repeats)
        found = self.retrieval.score(scores, indices)  # drops each query's hit on itself: hence top_k + 1
        at = f"@{self.top_k}"
        return {
            "spearman": self.sts[similarity].spearman(self.texts, embeddings),
            **{name + at: found[name + at] for name in ("mrr", "ndcg", "recall")},
            "query_ms": 1000 * seconds / len(queries),
            "index_kib": size / 1024,
        }

    def compare_engine(
        self, engine: Any, embeddings: Tensor, queries: int = 100, similarity: str = "cosine"
    ) -> dict[str, float]:
        """``recall_vs_exact`` (share of the exact top-k an engine returns) and ``query_ms`` of a search engine.

        Args:
            engine: a class like :class:`QdrantSparseIndex`, built on ``embeddings``.
            embeddings: the corpus (also the queries).
            queries: how many of the duplicate-retrieval queries to send.
        """
        embeddings = self._prepared(embeddings, similarity)
        rows = embeddings[self.query_rows[:queries]]
        exact = SparseIndex(embeddings).search(rows, self.top_k)[1]
        index = engine(embeddings)
        seconds, (_, found) = _best_time(lambda: index.search(rows, self.top_k), self.timing_repeats)
        overlap = [len(set(a.tolist()) & set(b.tolist())) / self.top_k for a, b in zip(found, exact)]
        return {"recall_vs_exact": sum(overlap) / len(overlap), "query_ms": 1000 * seconds / len(rows)}

    def _prepared(self, embeddings: Tensor, similarity: str) -> Tensor:
        if similarity not in self.sts:
            raise ValueError(f"similarity={similarity!r}; expected 'cosine' or 'dot'")
        if embeddings.shape[0] != len(self.texts):
            raise ValueError(f"embeddings has {embeddings.shape[0]} rows; expected one per text ({len(self.texts)})")
        embeddings = embeddings.to_dense() if embeddings.is_sparse else embeddings
        embeddings = embeddings.float()
        return torch.nn.functional.normalize(embeddings, dim=1) if similarity == "cosine" else embeddings


def _best_time(function: Any, repeats: int) -> tuple[float, Any]:
    """The shortest of ``repeats`` wall times of ``function()`` (after one untimed warm-up call), and its result."""
    result = function()
    return min(timeit.repeat(function, number=1, repeat=repeats)), result


# --- search backends: the same (scores, indices) contract as ncl_ext.analysis.SparseIndex --


def _to_sparse_rows(embeddings: Tensor, name: str) -> Tensor:
    if not isinstance(embeddings, Tensor) or embeddings.dim() != 2:
        raise ValueError(f"{name} must be a 2-D torch tensor (dense or sparse COO), got {type(embeddings).__name__}")
    sparse = (embeddings if embeddings.is_sparse else embeddings.to_sparse()).coalesce().cpu()
    if not bool(torch.isfinite(sparse.values()).all()):
        raise ValueError(f"{name} contains NaN or Inf values")
    return sparse


def _hits_to_tensors(hits: list[list[dict[str, Any]]], k: int) -> tuple[Tensor, Tensor]:
    """Hits ``[[{"corpus_id", "score"}, ...], ...]`` as ``(scores, indices)`` tensors, padded with -inf / -1."""
    scores = torch.full((len(hits), k), float("-inf"))
    indices = torch.full((len(hits), k), -1, dtype=torch.long)
    for row, query_hits in enumerate(hits):
        ranked = sorted(query_hits, key=lambda hit: (-hit["score"], hit["corpus_id"]))[:k]
        scores[row, : len(ranked)] = torch.tensor([hit["score"] for hit in ranked])
        indices[row, : len(ranked)] = torch.tensor([int(hit["corpus_id"]) for hit in ranked], dtype=torch.long)
    return scores, indices


class QdrantSparseIndex:
    """Sparse embeddings in a Qdrant collection, searched by sentence-transformers' ``semantic_search_qdrant``.

    By default Qdrant runs in local mode, in this process (``QdrantClient(":memory:")``, or
    ``QdrantClient(path=...)`` on disk): no server, made for up to tens of thousands of
    points. The same code serves a cluster: pass ``client=QdrantClient(url=...)``. Qdrant
    scores sparse vectors by inner product; L2-normalise rows first for cosine similarity.

    Args:
        database: ``(N, D)`` non-negative embeddings, dense or sparse COO.
        client: a ``qdrant_client.QdrantClient``; ``None`` starts a local in-memory one.
        collection: the collection to create (default: a fresh unique name).

    Examples:
        >>> index = QdrantSparseIndex(torch.tensor([[1.0, 0.0, 2.0], [0.0, 3.0, 0.0]]))
        >>> scores, indices = index.search(torch.tensor([[0.0, 1.0, 1.0]]), k=2)
        >>> indices.tolist(), scores.tolist()
        ([[1, 0]], [[3.0, 2.0]])
    """

    vector_name = "text"  # the sparse vector name semantic_search_qdrant queries

    def __init__(self, database: Tensor, client: Any = None, collection: str | None = None) -> None:
        from qdrant_client import QdrantClient, models

        rows = _to_sparse_rows(database, "database")
        self.client = client if client is not None else QdrantClient(":memory:")
        self.collection = collection or f"ncl_{uuid.uuid4().hex}"
        self.client.create_collection(
            self.collection,
            vectors_config={},
            sparse_vectors_config={self.vector_name: models.SparseVectorParams(index=models.SparseIndexParams())},
        )
        indices, values = rows.indices().numpy(), rows.values().float().numpy()
        bounds = np.searchsorted(indices[0], np.arange(rows.shape[0] + 1))
        points = [
            models.PointStruct(
                id=item,
                vector={self.vector_name: models.SparseVector(
                    indices=indices[1, start:end].tolist(), values=values[start:end].tolist()
                )},
            )
            for item, (start, end) in enumerate(zip(bounds[:-1], bounds[1:]))
        ]
        self.client.upload_points(self.collection, points=points, wait=True)
        self.num_items = rows.shape[0]

    def search(self, queries: Tensor, k: int) -> tuple[Tensor, Tensor]:
        """Top-``k`` inner products: ``(scores, indices)``, each ``(num_queries, k)``, best first."""
        hits, _ = search_engines.semantic_search_qdrant(
            _to_sparse_rows(queries, "queries"), corpus_index=(self.client, self.collection), top_k=k
        )
        return _hits_to_tensors(hits, k)


class SeismicSparseIndex:
    """Approximate top-k over sparse embeddings with Seismic (Bruch et al., SIGIR 2024), via sentence-transformers.

    Seismic (``pip install pyseismic-lsr``) prunes posting lists and skips blocks by their
    summaries, so it trades a little recall for speed; ``search_kwargs`` (``query_cut``,
    ``heap_factor``) set that trade. Built and searched by sentence-transformers'
    ``semantic_search_seismic``; dimensions are named by their index. Inner-product scores.

    Args:
        database: ``(N, D)`` non-negative embeddings, dense or sparse COO.
        **index_kwargs: arguments of ``SeismicIndex.build_from_dataset``.

    Examples:
        >>> index = SeismicSparseIndex(corpus_rows)                 # doctest: +SKIP
        >>> scores, indices = index.search(query_rows, k=10)        # doctest: +SKIP
    """

    def __init__(self, database: Tensor, **index_kwargs: Any) -> None:
        corpus = _decoded(_to_sparse_rows(database, "database"))
        if not any(corpus):
            raise ValueError("database has no non-zero value to index")
        # The helper builds the index from a corpus as part of a search; one query is the least it takes.
        _, _, self.index = search_engines.semantic_search_seismic(
            corpus[:1], corpus, top_k=1, output_index=True, index_kwargs=index_kwargs
        )
        self.num_items = len(corpus)

    def search(self, queries: Tensor, k: int, **search_kwargs: Any) -> tuple[Tensor, Tensor]:
        """Approximate top-``k`` inner products: ``(scores, indices)``, best first, padded with -inf / -1."""
        hits, _ = search_engines.semantic_search_seismic(
            _decoded(_to_sparse_rows(queries, "queries")), corpus_index=self.index, top_k=k, search_kwargs=search_kwargs
        )
        return _hits_to_tensors(hits, k)


def _decoded(rows: Tensor) -> list[list[tuple[str, float]]]:
    """Rows as ``[(dimension name, value), ...]``, the format of ``SparseEncoder.decode`` the Seismic helper reads."""
    indices, values = rows.indices().numpy(), rows.values().float().numpy()
    bounds = np.searchsorted(indices[0], np.arange(rows.shape[0] + 1))
    return [
        [(str(dim), float(value)) for dim, value in zip(indices[1, start:end], values[start:end])]
        for start, end in zip(bounds[:-1], bounds[1:])
    ]
