"""The sentence-embedding recipe on a tiny BERT and a tiny STS-B copy written here.

Expected values come from the saved models, encoded again and scored with scipy / numpy.
"""

import json

import numpy as np
import pytest
from scipy.stats import spearmanr
from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer

from ncl_ext.cli import main as cli_main
from ncl_ext.recipes import resolve_config, run_recipe
from ncl_ext.recipes.sentence_embedding import prepare
from tests._tiny_models import SENTENCES, save_tiny_sentence_transformer
from tests.fake_data import sts_rows, write_sts

SETTINGS = [
    "head_dim=64", "epochs=2", "batch_size=8", "ea_sentences=30", "save_steps=2", "trainable_layers=1",
    "encode_batch_size=16",
]
ALL_RUNS = "runs=base,cl,ncl,cl_matryoshka,ncl_matryoshka"


@pytest.fixture(scope="module")
def sts_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("stsbenchmark")
    write_sts(root / "sts-train.csv", sts_rows(48, seed=0))
    write_sts(root / "sts-dev.csv", sts_rows(40, seed=1))
    return root


@pytest.fixture(scope="module")
def recipe_run(sts_root, tmp_path_factory):
    """One uninterrupted run of every run (Matryoshka included) on the tiny STS-B copy."""
    model = save_tiny_sentence_transformer(tmp_path_factory.mktemp("tiny-bert"))
    output = tmp_path_factory.mktemp("recipe") / "out"
    overrides = [f"model={model}", *SETTINGS, ALL_RUNS, "max_active_dims=4"]
    results = run_recipe("sentence-embedding", overrides=overrides, data_root=str(sts_root), output=output,
                         device="cpu")
    return output, overrides, results


def cosine_spearman(embeddings, texts, rows):
    unit = embeddings / np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-12)
    row_of = {text: row for row, text in enumerate(texts)}
    cosines = [unit[row_of[a]] @ unit[row_of[b]] for _, a, b in rows]
    return spearmanr(cosines, [score for score, _, _ in rows])[0]


def test_every_run_reports_its_metrics_and_reruns_skip_finished_runs(recipe_run, sts_root):
    output, overrides, results = recipe_run
    runs = results["runs"]
    assert list(runs) == ["base", "cl", "ncl", "cl_matryoshka", "ncl_matryoshka"]
    for name, metrics in runs.items():
        for key in ("stsb_spearman", "stsb_spearman_ea25", "stsb_spearman_trunc25"):
            assert -1 <= metrics[key] <= 1
        assert 0 <= metrics["sparsity"] <= 1
        assert ("stsb_spearman_matryoshka25" in metrics) == name.endswith("matryoshka")
        assert ("stsb_spearman_top4" in metrics) == name.startswith("ncl")  # top-K only on non-negative runs
    assert runs["base"]["stsb_spearman"] > 0.3  # the tiny data is learnable: paraphrases share words
    assert runs["cl"]["sparsity"] < 0.01 and runs["ncl"]["sparsity"] > 0.2  # dense: only chance entries below 1e-5
    assert runs["ncl"]["sparsity_top4"] >= 1 - 4 / 64
    assert (output / "ncl" / "top_activating_texts.md").is_file() and (output / "compare.png").is_file()
    saved = json.loads((output / "results.json").read_text())
    assert saved["recipe"] == "sentence-embedding" and saved["runs"] == runs

    again = run_recipe("sentence-embedding", overrides=overrides, data_root=str(sts_root), output=output,
                       device="cpu")
    assert again["runs"] == runs  # nothing retrained or re-evaluated


def test_ncl_metrics_equal_scipy_on_the_saved_model(recipe_run):
    output, _, results = recipe_run
    dev = sts_rows(40, seed=1)
    texts = list(dict.fromkeys(text for _, a, b in dev for text in (a, b)))
    model = SentenceTransformer(str(output / "ncl" / "model"), device="cpu")  # no trust_remote_code
    assert model.get_embedding_dimension() == 64 and (model.encode(SENTENCES) >= 0).all()
    embeddings = model.encode(texts, convert_to_numpy=True)
    metrics = results["runs"]["ncl"]
    assert metrics["stsb_spearman"] == pytest.approx(cosine_spearman(embeddings, texts, dev), abs=1e-5)
    unit = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)  # the official sparsity: |z| <= 1e-5
    assert metrics["sparsity"] == pytest.approx(float((np.abs(unit) <= 1e-5).mean()), abs=1e-6)
    kept = np.zeros_like(embeddings)
    for row, values in enumerate(embeddings):
        top = np.argsort(-values, kind="stable")[:4]
        kept[row, top] = values[top]
    assert metrics["stsb_spearman_top4"] == pytest.approx(cosine_spearman(kept, texts, dev), abs=1e-5)
    first = embeddings[:, :16]  # 25% of 64
    assert metrics["stsb_spearman_trunc25"] == pytest.approx(cosine_spearman(first, texts, dev), abs=1e-5)


def test_validation_scores_held_out_training_pairs_and_trains_on_the_rest(sts_root):
    config, _ = resolve_config("sentence-embedding", overrides=["validation=true", "min_score=0"],
                               data_root=str(sts_root))
    context = prepare(config, output=None)
    train_rows = sts_rows(48, seed=0)
    held_out = set(zip(context.scored["sentence1"], context.scored["sentence2"]))
    trained = set(zip(context.train["anchor"], context.train["positive"]))
    assert len(held_out) == round(0.2 * len(train_rows)) and not held_out & trained
    assert held_out | trained == {(a, b) for _, a, b in train_rows}  # min_score=0: every other pair trains
    again = prepare(resolve_config("sentence-embedding", overrides=["validation=true", "seed=3"],
                                   data_root=str(sts_root))[0], output=None)
    assert set(zip(again.scored["sentence1"], again.scored["sentence2"])) == held_out  # one split for every seed


class Interrupted(Exception):
    pass


def test_an_interrupted_run_resumes_from_its_checkpoint(recipe_run, sts_root, tmp_path, monkeypatch):
    _, overrides, reference = recipe_run
    overrides = [*(item for item in overrides if not item.startswith("runs=")), "runs=cl,ncl"]
    steps = {"n": 0}
    original_step = SentenceTransformerTrainer.training_step

    def dying_step(self, *args, **kwargs):
        steps["n"] += 1
        if steps["n"] > 3:  # after the checkpoint at step 2
            raise Interrupted
        return original_step(self, *args, **kwargs)

    monkeypatch.setattr(SentenceTransformerTrainer, "training_step", dying_step)
    with pytest.raises(Interrupted):
        run_recipe("sentence-embedding", overrides=overrides, data_root=str(sts_root), output=tmp_path, device="cpu")
    monkeypatch.undo()
    assert not (tmp_path / "cl" / "model").exists()
    assert [p.name for p in (tmp_path / "cl" / "checkpoints").iterdir()] == ["checkpoint-2"]
    resumed = run_recipe("sentence-embedding", overrides=overrides, data_root=str(sts_root), output=tmp_path,
                         device="cpu")
    for run in ("cl", "ncl"):
        for metric in ("stsb_spearman", "sparsity", "stsb_spearman_ea25"):
            assert resumed["runs"][run][metric] == pytest.approx(reference["runs"][run][metric], abs=1e-6)


def test_missing_data_and_bad_settings_fail_before_any_work(tmp_path, capsys):
    with pytest.raises(FileNotFoundError, match="--data-root DIR, where DIR holds sts-train.csv and sts-dev.csv"):
        run_recipe("sentence-embedding", output=tmp_path / "a")
    assert cli_main(["run", "sentence-embedding", "--data-root", str(tmp_path), "--output", str(tmp_path / "b")]) == 2
    assert "lacks sts-train.csv, sts-dev.csv" in capsys.readouterr().err
    for override, message in [("train_data=web", "train_data='web'; expected one of"),
                              ("train_data=pairs", "train_data=pairs needs train_file=PATH"),
                              ("max_active_dims=0", "max_active_dims=0; expected a number >= 1")]:
        with pytest.raises(ValueError, match=message):
            run_recipe("sentence-embedding", overrides=[override], data_root=str(tmp_path), output=tmp_path / "c")
    assert not (tmp_path / "c").exists()
