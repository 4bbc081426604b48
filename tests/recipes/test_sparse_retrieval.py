"""The sparse-retrieval recipe on its tiny preset: a small BERT and a few STS pairs written here.

Every run trains for two steps; the checks are that each method is wired as documented, that
the metrics of one run equal an independent numpy / scipy computation from its saved model,
and that bad settings fail before any work.
"""

import json

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr
from sentence_transformers import SentenceTransformer, SparseEncoder

from ncl_ext.recipes import run_recipe
from ncl_ext.recipes.sparse_retrieval import RUN_NAMES
from tests._tiny_models import save_tiny_sentence_transformer
from tests.fake_data import sts_rows, write_sts

BUDGETS = (2, 4)
METRICS = ("stsb_spearman", "mrr@10", "ndcg@10", "recall@10", "query_ms", "index_kib")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("stsbenchmark")
    write_sts(root / "sts-train.csv", sts_rows(24, seed=0))
    dev_rows = sts_rows(20, seed=1)
    write_sts(root / "sts-dev.csv", dev_rows)
    model = save_tiny_sentence_transformer(tmp_path_factory.mktemp("tiny-bert"))
    output = tmp_path_factory.mktemp("sparse-retrieval")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        results = run_recipe(
            "sparse-retrieval", preset="tiny", overrides=[f"model={model}", "lr=1e-2"], data_root=str(root),
            output=output, device="cpu",
        )
    finally:
        torch.set_num_threads(threads)
    return results, output, dev_rows


def test_every_run_reports_every_metric_at_every_budget(tiny_run):
    results, output, dev_rows = tiny_run
    runs = results["runs"]
    assert list(runs) == list(RUN_NAMES)
    texts = list(dict.fromkeys(text for _, first, second in dev_rows for text in (first, second)))
    for name, metrics in runs.items():
        for k in BUDGETS:
            values = {metric: metrics[f"{metric}_k{k}"] for metric in METRICS}
            assert -1 <= values["stsb_spearman"] <= 1
            assert all(0 <= values[metric] <= 1 for metric in ("mrr@10", "ndcg@10", "recall@10"))
            assert values["query_ms"] > 0
            if name in ("base", "matryoshka", "ncl_ea"):  # k dense float32 columns
                assert values["index_kib"] == pytest.approx(4 * len(texts) * k / 1024)
            else:  # at most k non-zeros per row, 8 bytes each, plus 8 bytes per row
                assert values["index_kib"] <= 8 * (len(texts) * k + len(texts)) / 1024
    for name in ("ncl_topk", "csr", "csr_cosine"):  # an exact engine in local mode finds the exact top-10
        assert runs[name]["qdrant_recall_vs_exact_k4"] == 1.0
        assert 0 <= runs[name]["seismic_recall_vs_exact_k4"] <= 1
    assert runs["ncl_ea"]["train_s"] == runs["ncl_topk"]["train_s"]  # one NCL model, two read-outs
    assert runs["csr"]["train_s"] == runs["csr_cosine"]["train_s"]  # the same CSR models, scored two ways
    assert runs["base"]["stsb_spearman_k4"] != runs["matryoshka"]["stsb_spearman_k4"]  # training changed it
    saved = json.loads((output / "results.json").read_text())
    assert saved["recipe"] == "sparse-retrieval" and saved["runs"] == runs


def test_saved_models_reload_as_plain_sentence_transformers_models(tiny_run):
    _, output, _ = tiny_run
    ncl = SparseEncoder(str(output / "ncl_model" / "model"), device="cpu")
    assert ncl.get_embedding_dimension() == 16 and ncl.similarity_fn_name == "cosine"
    for k in BUDGETS:  # one CSR model per budget, trained at that k
        csr = SparseEncoder(str(output / "csr" / f"k{k}" / "model"), device="cpu")
        rows = csr.encode(["a man plays guitar", "the dog runs"]).to_dense()
        assert csr.max_active_dims == k and ((rows != 0).sum(1) <= k).all() and (rows >= 0).all()
    assert SentenceTransformer(str(output / "matryoshka" / "model"), device="cpu").get_embedding_dimension() == 32


def test_ncl_topk_metrics_equal_an_independent_computation(tiny_run):
    results, output, dev_rows = tiny_run
    texts = list(dict.fromkeys(text for _, first, second in dev_rows for text in (first, second)))
    encoder = SparseEncoder(str(output / "ncl_model" / "model"), device="cpu")
    full = encoder.encode(texts, convert_to_sparse_tensor=False).numpy()
    k = 2
    kept = np.zeros_like(full)
    for row, values in enumerate(full):
        top = np.argsort(-values, kind="stable")[:k]
        kept[row, top] = values[top]
    unit = kept / np.maximum(np.linalg.norm(kept, axis=1, keepdims=True), 1e-12)
    row_of = {text: row for row, text in enumerate(texts)}
    cosines = [unit[row_of[a]] @ unit[row_of[b]] for _, a, b in dev_rows]
    metrics = results["runs"]["ncl_topk"]
    assert metrics[f"stsb_spearman_k{k}"] == pytest.approx(spearmanr(cosines, [s for s, _, _ in dev_rows])[0], abs=1e-6)

    partners = {}
    for score, a, b in dev_rows:
        if score >= 4.0 and a != b:
            partners.setdefault(row_of[a], set()).add(row_of[b])
            partners.setdefault(row_of[b], set()).add(row_of[a])
    reciprocal_ranks = []
    for query, relevant in partners.items():
        similarity = unit @ unit[query]
        ranked = sorted(range(len(texts)), key=lambda item: (-similarity[item], str(item)))
        order = [item for item in ranked if item != query]
        ranks = [rank for rank, item in enumerate(order[:10], start=1) if item in relevant]
        reciprocal_ranks.append(1 / ranks[0] if ranks else 0.0)
    assert metrics[f"mrr@10_k{k}"] == pytest.approx(np.mean(reciprocal_ranks), abs=1e-6)


def test_csr_is_scored_by_dot_product_as_trained_and_by_cosine(tiny_run):
    results, output, dev_rows = tiny_run
    texts = list(dict.fromkeys(text for _, first, second in dev_rows for text in (first, second)))
    row_of = {text: row for row, text in enumerate(texts)}
    gold = [score for score, _, _ in dev_rows]
    for k in BUDGETS:
        csr = SparseEncoder(str(output / "csr" / f"k{k}" / "model"), device="cpu")
        rows = csr.encode(texts, convert_to_sparse_tensor=False, max_active_dims=k).numpy()
        unit = rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)
        dots = [rows[row_of[a]] @ rows[row_of[b]] for _, a, b in dev_rows]
        cosines = [unit[row_of[a]] @ unit[row_of[b]] for _, a, b in dev_rows]
        assert results["runs"]["csr"][f"stsb_spearman_k{k}"] == pytest.approx(spearmanr(dots, gold)[0], abs=1e-6)
        expected = spearmanr(cosines, gold)[0]
        assert results["runs"]["csr_cosine"][f"stsb_spearman_k{k}"] == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("budgets=4,2", "budgets=4,2; expected distinct values in increasing order"),
        ("backend_k=3", "backend_k=3; expected one of the budgets"),
        ("head_dim=8", r"budgets needs head_dim >= 4 x 4 \(CSR trains with 4k active latents\); head_dim=8"),
        ("backends=elastic", "backends=elastic; expected one of"),
        ("top_k=0", "top_k=0; expected a number >= 1"),
    ],
)
def test_bad_settings_fail_before_any_work(tmp_path, override, message):
    with pytest.raises(ValueError, match=message):
        run_recipe(
            "sparse-retrieval", preset="tiny", overrides=[override], data_root=str(tmp_path), output=tmp_path / "out"
        )
    assert not (tmp_path / "out").exists()


def test_missing_data_says_where_to_point_data_root(tmp_path):
    with pytest.raises(FileNotFoundError, match="lacks sts-train.csv, sts-dev.csv"):
        run_recipe("sparse-retrieval", preset="tiny", data_root=str(tmp_path), output=tmp_path / "out")
