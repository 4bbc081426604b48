"""Sentence embeddings: the non-negative head, the NCL ranking losses, sparse encoders.

Tiny real sentence-transformers models are built offline from a small ``BertConfig`` and a
word-level vocabulary; expected values come from numpy re-implementations in this file.
"""

import json
import math
import subprocess
import sys

import numpy as np
import pytest
import sentence_transformers
import torch
from datasets import Dataset
from packaging.version import Version
from sentence_transformers import (
    SentenceTransformer,
    SentenceTransformerTrainer,
    SentenceTransformerTrainingArguments,
    SparseEncoder,
    SparseEncoderTrainer,
    SparseEncoderTrainingArguments,
)
from sentence_transformers.sentence_transformer.losses import (
    CachedMultipleNegativesRankingLoss,
    MatryoshkaLoss,
    MultipleNegativesRankingLoss,
)
from sentence_transformers.sentence_transformer.modules import Dense, Normalize
from sentence_transformers.sparse_encoder.evaluation import SparseInformationRetrievalEvaluator
from transformers import BertConfig, BertModel

import ncl_ext
from ncl_ext.adapters.text import (
    CachedNCLRankingLoss,
    NCLRankingLoss,
    NCLSpectralLoss,
    add_nonneg_head,
    freeze_lower_layers,
    sparse_encoder,
    train_on_pairs,
)
from ncl_ext.nonneg import rep_relu
from tests._tiny_models import HIDDEN, SENTENCES


def features_of(model, columns):
    return [model.tokenize(column) for column in columns]


def np_ranking_loss(anchors, candidates, scale=20.0, nonneg=None):
    """numpy in-batch InfoNCE: anchor i's positive is candidates[0][i], every candidate row is in its softmax."""
    if nonneg == "relu":
        anchors, candidates = np.maximum(anchors, 0), [np.maximum(c, 0) for c in candidates]
    def unit(x):
        return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-8)

    a, docs = unit(anchors), unit(np.concatenate(candidates))
    logits = scale * a @ docs.T
    log_z = np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1)) + logits.max(1)
    return float(np.mean(log_z - logits[np.arange(len(a)), np.arange(len(a))]))


def pooled_embeddings(model, sentences):
    """The Pooling output of ``model`` (before any head / Normalize), as numpy."""
    with torch.no_grad():
        features = model.tokenize(sentences)
        for module in list(model)[:2]:
            features = module(features)
    return features["sentence_embedding"].numpy()


# --- the head ---------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["relu", "rep_relu", "softplus", "sigmoid"])
def test_head_gives_non_negative_embeddings_computed_as_documented(model, mode):
    pooled = pooled_embeddings(model, SENTENCES)
    add_nonneg_head(model, mode, dim=48)
    assert isinstance(model[2], Dense) and isinstance(model[3], Normalize)
    embeddings = model.encode(SENTENCES)
    assert embeddings.shape == (len(SENTENCES), 48)
    assert (embeddings >= 0).all()
    weight, bias = model[2].linear.weight.detach().numpy(), model[2].linear.bias.detach().numpy()
    pre = pooled @ weight.T + bias
    activation = {
        "relu": np.maximum(pre, 0),
        "rep_relu": np.maximum(pre, 0),
        "softplus": np.log1p(np.exp(pre)),
        "sigmoid": 1 / (1 + np.exp(-pre)),
    }[mode]
    expected = activation / np.linalg.norm(activation, axis=1, keepdims=True)
    np.testing.assert_allclose(embeddings, expected, atol=1e-5)
    if mode in ("relu", "rep_relu"):
        assert (embeddings == 0).mean() > 0.2  # exact zeros, not just small values


def test_linear_head_starts_as_an_isometry(model):
    before = model.encode(SENTENCES)
    add_nonneg_head(model, None, dim=64)
    after = model.encode(SENTENCES)
    np.testing.assert_allclose(after @ after.T, before @ before.T, atol=1e-5)


def test_head_is_inserted_before_normalize_after_existing_dense(model):
    add_nonneg_head(model, None, dim=40)
    add_nonneg_head(model, "relu", dim=24)
    kinds = [type(module).__name__ for module in model]
    assert kinds == ["Transformer", "Pooling", "Dense", "Dense", "Normalize"]
    assert model.get_embedding_dimension() == 24
    assert (model.encode(SENTENCES) >= 0).all()


@pytest.mark.parametrize("mode", ["relu", "rep_relu", "softplus", "sigmoid", None])
def test_saved_model_reloads_without_trust_remote_code(model, tmp_path, mode):
    add_nonneg_head(model, mode, dim=48)
    torch.nn.init.normal_(model[2].linear.bias)  # make the reload check cover the bias too
    expected = model.encode(SENTENCES)
    model.save(str(tmp_path))
    modules = json.loads((tmp_path / "modules.json").read_text())
    assert all(entry["type"].startswith("sentence_transformers.") for entry in modules)
    dense_config = json.loads((tmp_path / "2_Dense" / "config.json").read_text())
    assert dense_config["activation_function"].startswith("torch.nn.")
    reloaded = SentenceTransformer(str(tmp_path), device="cpu")  # trust_remote_code defaults to False
    np.testing.assert_allclose(reloaded.encode(SENTENCES), expected, atol=1e-6)


def test_rep_relu_head_has_gelu_gradient_and_relu_output(model):
    add_nonneg_head(model, "rep_relu", dim=16)
    activation = model[2].activation_function
    x = torch.tensor([-2.0, -0.5, 0.0, 0.7, 3.0], requires_grad=True)
    y = activation(x)
    torch.testing.assert_close(y, x.detach().clamp_min(0))
    y.sum().backward()
    cdf = np.array([0.5 * (1 + math.erf(v / math.sqrt(2))) for v in x.tolist()])
    pdf = np.exp(-0.5 * x.detach().numpy() ** 2) / math.sqrt(2 * math.pi)
    np.testing.assert_allclose(x.grad.numpy(), cdf + x.detach().numpy() * pdf, atol=1e-6)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"mode": "exp"}, "mode='exp'"),
        ({"mode": "bogus"}, "mode='bogus'"),
        ({"mode": "relu", "dim": 0}, "dim must be"),
    ],
)
def test_head_rejects_bad_arguments(model, kwargs, message):
    with pytest.raises(ValueError, match=message):
        add_nonneg_head(model, **kwargs)


def test_head_rejects_a_model_that_is_not_a_sentence_transformer():
    with pytest.raises(ValueError, match="SentenceTransformer"):
        add_nonneg_head(torch.nn.Linear(4, 4))


# --- the losses -------------------------------------------------------------------------


@pytest.mark.parametrize("columns", [2, 3])
def test_ranking_loss_without_nonneg_equals_multiple_negatives_ranking_loss(model, columns):
    data = [SENTENCES[:4], SENTENCES[4:], SENTENCES[2:6]][:columns]
    labels = torch.zeros(4)
    ours = NCLRankingLoss(model, nonneg=None)(features_of(model, data), labels)
    reference = MultipleNegativesRankingLoss(model)(features_of(model, data), labels)
    assert NCLRankingLoss(model).scale == 20.0
    torch.testing.assert_close(ours, reference, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("nonneg", [None, "relu"])
def test_ranking_loss_matches_numpy_reference(model, nonneg):
    add_nonneg_head(model, None, dim=24)  # signed features, so relu changes them
    torch.nn.init.normal_(model[2].linear.bias)
    data = [SENTENCES[:4], SENTENCES[4:]]
    embeddings = [model.encode(column) for column in data]
    expected = np_ranking_loss(embeddings[0], embeddings[1:], nonneg=nonneg)
    loss = NCLRankingLoss(model, nonneg=nonneg)(features_of(model, data), torch.zeros(4))
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_ranking_loss_terms_sum_to_the_loss(model):
    data = [SENTENCES[:4], SENTENCES[4:]]
    terms = NCLRankingLoss(model, output_dict=True)(features_of(model, data), torch.zeros(4))
    total = NCLRankingLoss(model)(features_of(model, data), torch.zeros(4))
    assert set(terms) == {"alignment", "uniformity"}
    torch.testing.assert_close(terms["alignment"] + terms["uniformity"], total)
    embeddings = [np.maximum(model.encode(column), 0) for column in data]
    cosines = (embeddings[0] * embeddings[1]).sum(1) / (
        np.linalg.norm(embeddings[0], axis=1) * np.linalg.norm(embeddings[1], axis=1)
    )
    assert terms["alignment"].item() == pytest.approx(-20 * cosines.mean(), rel=1e-5)


def test_ranking_loss_rejects_nan_and_bad_mode(model):
    loss = NCLRankingLoss(model)
    with pytest.raises(ValueError, match="NaN"):
        loss.compute_loss_from_embeddings([torch.full((2, 4), float("nan")), torch.ones(2, 4)], None)
    with pytest.raises(ValueError, match="nonneg='sigmod'"):
        NCLRankingLoss(model, nonneg="sigmod")


def gradients(model):
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("nonneg", [None, "relu"])
def test_cached_loss_matches_uncached_value_and_gradients(tiny_path, nonneg):
    data = [SENTENCES, SENTENCES[::-1], SENTENCES[1:] + SENTENCES[:1]]
    results = []
    for cached in (False, True):
        torch.manual_seed(1)  # the same head in both models
        model = add_nonneg_head(SentenceTransformer(str(tiny_path), device="cpu"), None, dim=24)
        torch.nn.init.normal_(model[2].linear.bias)
        if cached:
            loss_fn = CachedNCLRankingLoss(model, nonneg=nonneg, mini_batch_size=3)
        else:
            loss_fn = NCLRankingLoss(model, nonneg=nonneg)
        loss = loss_fn(features_of(model, data), torch.zeros(len(SENTENCES)))
        loss.backward()
        results.append((loss.detach(), gradients(model)))
    (loss, grads), (cached_loss, cached_grads) = results
    torch.testing.assert_close(cached_loss, loss, rtol=1e-5, atol=1e-6)
    assert grads.keys() == cached_grads.keys() and len(grads) > 0
    for name in grads:
        torch.testing.assert_close(cached_grads[name], grads[name], rtol=1e-4, atol=1e-5)


def test_cached_loss_without_nonneg_equals_cached_mnrl(model):
    data = [SENTENCES[:4], SENTENCES[4:]]
    with torch.no_grad():
        ours = CachedNCLRankingLoss(model, nonneg=None, mini_batch_size=2)(features_of(model, data), None)
        reference = CachedMultipleNegativesRankingLoss(model, mini_batch_size=2)(features_of(model, data), None)
    torch.testing.assert_close(ours, reference)


def np_matryoshka_reference(model, data, dims, nonneg):
    embeddings = [model.encode(column) for column in data]
    return sum(
        np_ranking_loss(embeddings[0][:, :d], [e[:, :d] for e in embeddings[1:]], nonneg=nonneg) for d in dims
    )


@pytest.mark.parametrize("cached", [False, True])
def test_ranking_loss_inside_matryoshka_loss(tiny_path, cached):
    model = add_nonneg_head(SentenceTransformer(str(tiny_path), device="cpu"), None, dim=24)
    torch.nn.init.normal_(model[2].linear.bias)
    data = [SENTENCES, SENTENCES[::-1]]
    dims = [24, 6]
    expected = np_matryoshka_reference(model, data, dims, "relu")
    if cached:
        inner = CachedNCLRankingLoss(model, nonneg="relu", mini_batch_size=3)
    else:
        inner = NCLRankingLoss(model, nonneg="relu")
    loss = MatryoshkaLoss(model, inner, dims)(features_of(model, data), None)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    loss.backward()
    assert model[2].linear.weight.grad is not None and torch.isfinite(model[2].linear.weight.grad).all()


def test_spectral_loss_matches_numpy_reference(model):
    add_nonneg_head(model, None, dim=24)
    torch.nn.init.normal_(model[2].linear.bias)
    data = [SENTENCES[:4], SENTENCES[4:]]
    z = np.maximum(np.concatenate([model.encode(column) for column in data]), 0)
    n = 4
    gram = z @ z.T
    positive = -2 * np.mean([gram[i, n + i] for i in range(n)])
    negatives = [gram[a, b] ** 2 for a in range(2 * n) for b in range(2 * n) if b != a and b != (a + n) % (2 * n)]
    expected = positive + np.mean(negatives)
    loss = NCLSpectralLoss(model, nonneg="relu")(features_of(model, data), None)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    with pytest.raises(ValueError, match="pairs"):
        NCLSpectralLoss(model)(features_of(model, [SENTENCES[:2]] * 3), None)


@pytest.mark.parametrize("loss_name", ["ranking", "cached", "spectral"])
def test_sentence_transformer_trainer_trains_with_the_losses(model, tmp_path, loss_name):
    add_nonneg_head(model, "relu", dim=48)
    loss = {
        "ranking": lambda: NCLRankingLoss(model, nonneg=None, output_dict=True),
        "cached": lambda: CachedNCLRankingLoss(model, nonneg="relu", mini_batch_size=2),
        "spectral": lambda: NCLSpectralLoss(model, nonneg="relu"),
    }[loss_name]()
    pairs = Dataset.from_dict({"anchor": SENTENCES, "positive": SENTENCES[1:] + SENTENCES[:1]})
    args = SentenceTransformerTrainingArguments(
        output_dir=str(tmp_path), max_steps=3, per_device_train_batch_size=4, learning_rate=1e-2,
        logging_steps=1, save_strategy="no", report_to="none", use_cpu=True, seed=0,
    )
    before = model[2].linear.weight.detach().clone()
    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=pairs, loss=loss)
    trainer.train()
    assert not torch.equal(model[2].linear.weight.detach(), before)
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(logs) == 3 and all(math.isfinite(entry["loss"]) for entry in logs)
    if loss_name == "ranking":
        assert all("alignment" in entry and "uniformity" in entry for entry in logs)
    assert (model.encode(SENTENCES) >= 0).all()


# --- NCL as a native SparseEncoder --------------------------------------------------------


def np_head_embeddings(model, sentences, head):
    """ReLU(pooled @ W.T + b) computed in numpy from the Pooling output and the head's weights."""
    weight, bias = head.linear.weight.detach().numpy(), head.linear.bias.detach().numpy()
    return np.maximum(pooled_embeddings(model, sentences) @ weight.T + bias, 0)


def np_top_k(rows, k):
    """Each row's k largest values kept, the others zeroed."""
    kept = np.zeros_like(rows)
    for i, row in enumerate(rows):
        top = np.argsort(-row, kind="stable")[:k]
        kept[i, top] = row[top]
    return kept


def test_sparse_encoder_encodes_non_negative_sparse_rows_with_max_active_dims(tiny_path):
    torch.manual_seed(0)
    encoder = sparse_encoder(tiny_path, dim=96, mode="relu", device="cpu")
    assert isinstance(encoder, SparseEncoder)
    assert [type(module).__name__ for module in encoder] == ["Transformer", "Pooling", "Dense"]
    assert encoder.similarity_fn_name == "cosine"
    torch.nn.init.normal_(encoder[2].linear.bias, std=0.5)  # denser than 32 units before the cut
    embeddings = encoder.encode(SENTENCES, max_active_dims=32)
    assert embeddings.is_sparse and embeddings.shape == (len(SENTENCES), 96)
    dense = embeddings.to_dense().numpy()
    assert (dense >= 0).all()
    assert ((dense != 0).sum(1) <= 32).all() and ((dense != 0).sum(1) == 32).any()
    full = np_head_embeddings(encoder, SENTENCES, encoder[2])
    assert ((full > 0).sum(1) > 32).all()  # so the cut did something
    np.testing.assert_allclose(dense, np_top_k(full, 32), atol=1e-5)
    stats = encoder.sparsity(embeddings)
    assert stats["active_dims"] == pytest.approx((dense != 0).sum(1).mean())
    decoded = encoder.decode(embeddings[0], top_k=5)
    assert len(decoded) == 5 and [w for _, w in decoded] == sorted((w for _, w in decoded), reverse=True)
    assert decoded[0][1] == pytest.approx(dense[0].max(), rel=1e-5)
    similarity = encoder.similarity(embeddings, embeddings).numpy()
    unit = dense / np.linalg.norm(dense, axis=1, keepdims=True)
    np.testing.assert_allclose(similarity, unit @ unit.T, atol=1e-5)


def test_saved_sparse_encoder_reloads_as_a_plain_sparse_encoder_without_ncl_ext(tiny_path, tmp_path):
    encoder = sparse_encoder(tiny_path, dim=48, mode="rep_relu", max_active_dims=8, device="cpu")
    torch.nn.init.normal_(encoder[2].linear.bias)
    expected = encoder.encode(SENTENCES).to_dense().numpy()
    encoder.save(str(tmp_path))
    modules = json.loads((tmp_path / "modules.json").read_text())
    assert all(entry["type"].startswith("sentence_transformers.") for entry in modules)
    script = (
        "import json, sys\n"
        "from sentence_transformers import SparseEncoder\n"
        f"encoder = SparseEncoder({str(tmp_path)!r}, device='cpu')\n"  # trust_remote_code defaults to False
        f"rows = encoder.encode({SENTENCES!r}).to_dense().tolist()\n"
        "loaded = sorted(name for name in sys.modules if name.startswith('ncl_ext'))\n"
        "print(json.dumps({'rows': rows, 'ncl_ext': loaded, 'max_active_dims': encoder.max_active_dims,\n"
        "                  'similarity': encoder.similarity_fn_name}))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    reloaded = json.loads(done.stdout.strip().splitlines()[-1])
    assert reloaded["ncl_ext"] == [] and reloaded["similarity"] == "cosine"
    saves_max_active_dims = Version(sentence_transformers.__version__) >= Version("6.2")  # not saved before 6.2
    assert reloaded["max_active_dims"] == (8 if saves_max_active_dims else None)
    np.testing.assert_allclose(np.array(reloaded["rows"]), expected, atol=1e-6)


def test_sparse_encoder_keeps_an_existing_non_negative_head(model):
    add_nonneg_head(model, "relu", dim=40)
    head = model[2]
    encoder = sparse_encoder(model)
    assert encoder[2] is head and len(encoder) == 3  # Normalize left out
    st_rows = model.encode(SENTENCES)
    rows = encoder.encode(SENTENCES).to_dense().numpy()
    np.testing.assert_allclose(rows / np.linalg.norm(rows, axis=1, keepdims=True), st_rows, atol=1e-5)
    with pytest.raises(ValueError, match="Softplus head"):
        sparse_encoder(add_nonneg_head(SentenceTransformer(str(model_path_of(model)), device="cpu"), "softplus"))


def model_path_of(model):
    return model[0].auto_model.name_or_path.rsplit("/", 1)[0] + "/st"


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"mode": None}, ValueError, "mode=None"),
        ({"mode": "identity"}, ValueError, "not non-negative"),
        ({"mode": "exp"}, ValueError, "mode='exp'"),
        ({"dim": 0}, ValueError, "dim must be"),
        ({"max_active_dims": 0}, ValueError, "max_active_dims must be"),
    ],
)
def test_sparse_encoder_rejects_bad_arguments(tiny_path, kwargs, error, message):
    with pytest.raises(error, match=message):
        sparse_encoder(tiny_path, **kwargs)


def test_sparse_encoder_rejects_a_missing_path_and_other_models(tmp_path):
    with pytest.raises(FileNotFoundError, match="no modules.json"):
        sparse_encoder(tmp_path / "missing")
    with pytest.raises(ValueError, match="SentenceTransformer"):
        sparse_encoder(torch.nn.Linear(3, 3))


PAIRS = Dataset.from_dict({"anchor": SENTENCES, "positive": SENTENCES[1:] + SENTENCES[:1]})


@pytest.mark.parametrize("loss_name", ["ranking", "cached", "spectral"])
def test_sparse_encoder_trainer_trains_with_the_ncl_losses(tiny_path, tmp_path, loss_name, seed_and_one_thread):
    encoder = sparse_encoder(tiny_path, dim=48, mode="rep_relu", device="cpu")
    loss = {
        "ranking": lambda: NCLRankingLoss(encoder, nonneg=None),
        "cached": lambda: CachedNCLRankingLoss(encoder, nonneg=None, mini_batch_size=2),
        "spectral": lambda: NCLSpectralLoss(encoder, nonneg=None),
    }[loss_name]()
    args = SparseEncoderTrainingArguments(
        output_dir=str(tmp_path), max_steps=3, per_device_train_batch_size=4, learning_rate=1e-2,
        logging_steps=1, save_strategy="no", report_to="none", use_cpu=True, seed=0,
    )
    before = encoder[2].linear.weight.detach().clone()
    trainer = SparseEncoderTrainer(model=encoder, args=args, train_dataset=PAIRS, loss=loss)
    trainer.train()
    assert not torch.equal(encoder[2].linear.weight.detach(), before)
    logs = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(logs) == 3 and all(math.isfinite(value) for value in logs)
    assert (encoder.encode(SENTENCES).to_dense() >= 0).all()


def test_train_on_pairs_trains_only_the_unfrozen_layers_and_the_head(tiny_path, tmp_path, seed_and_one_thread):
    encoder = sparse_encoder(tiny_path, dim=24, device="cpu")
    freeze_lower_layers(encoder, 1)
    before = {name: p.detach().clone() for name, p in encoder.named_parameters()}
    log = train_on_pairs(encoder, NCLRankingLoss(encoder, nonneg=None), PAIRS, tmp_path, max_steps=2, batch_size=4,
                         lr=1e-3, head_lr=1e-2, use_cpu=True)
    assert log[-1]["step"] == 2
    changed = {name for name, p in encoder.named_parameters() if not torch.equal(p.detach(), before[name])}
    assert "2.linear.weight" in changed and any(".layer.1." in name for name in changed)
    assert not any(".layer.0." in name or "embeddings" in name for name in changed)
    with pytest.raises(ValueError, match="exceeds the model's 2 layers"):
        freeze_lower_layers(encoder, 3)


def test_sparse_evaluators_run_on_the_ncl_encoder(tiny_path):
    encoder = sparse_encoder(tiny_path, dim=48, device="cpu")
    corpus = {str(i): text for i, text in enumerate(SENTENCES)}
    queries = {"q": "a man plays the guitar"}
    evaluator = SparseInformationRetrievalEvaluator(queries, corpus, {"q": {"0"}}, max_active_dims=8, write_csv=False)
    metrics = evaluator(encoder)
    assert 0 <= metrics[evaluator.primary_metric] <= 1
    assert metrics["corpus_active_dims"] <= 8 and metrics["query_active_dims"] <= 8


# --- dead rows: bounded gradient while training ---------------------------------------------


def test_a_dead_row_gets_a_bounded_gradient_while_training(model, tmp_path):
    add_nonneg_head(model, "rep_relu", dim=48)
    head, normalize = model[2], model[3]
    with torch.no_grad():
        head.linear.bias.fill_(-0.1)  # an all-zero input row is dead: every unit is at -0.1
    pooled = 3 * torch.randn(8, HIDDEN, generator=torch.Generator().manual_seed(0))
    pooled[0] = 0
    loss_fn = NCLRankingLoss(model, nonneg=None)

    def input_gradients(embed):
        inputs = pooled.clone().requires_grad_()
        embeddings = embed(inputs)
        loss_fn.compute_loss_from_embeddings([embeddings[:4], embeddings[4:]], None).backward()
        return embeddings.detach(), inputs.grad.norm(dim=1)

    model.train()
    embeddings, norms = input_gradients(lambda x: normalize(head({"sentence_embedding": x}))["sentence_embedding"])
    assert (embeddings[0] == 0).all() and (embeddings[1:] != 0).any(dim=1).all()
    live_median = norms[1:].median()
    assert torch.isfinite(norms).all() and 0 < norms[0] <= 10 * live_median

    # The same computation written out without the bound: the dead row's gradient explodes.
    weight, bias = head.linear.weight.detach(), head.linear.bias.detach()
    plain = lambda x: torch.nn.functional.normalize(rep_relu(x @ weight.T + bias), dim=1)  # noqa: E731
    _, plain_norms = input_gradients(plain)
    assert not (plain_norms[0] <= 1e6 * live_median)  # ~1e24 or inf
    torch.testing.assert_close(plain_norms[1:], norms[1:])  # live rows are untouched

    # Hooks are not saved: the reloaded head is the plain Dense, with the same embeddings.
    model.eval()
    model.save(str(tmp_path))
    reloaded = SentenceTransformer(str(tmp_path), device="cpu")
    assert not reloaded[2]._forward_hooks and not reloaded[2].activation_function._forward_hooks
    np.testing.assert_allclose(reloaded.encode(SENTENCES), model.encode(SENTENCES), atol=1e-6)


# --- multi-GPU gathering, checked with two gloo processes --------------------------------

WORLD_SIZE, BATCH_PER_RANK = 2, 3


def gathered_losses(gather=True):
    """The losses under test, on a stand-in model: only their embedding-level method is called."""
    return {
        "ranking": NCLRankingLoss(torch.nn.Identity(), nonneg="relu", gather_across_devices=gather),
        "spectral": NCLSpectralLoss(torch.nn.Identity(), nonneg="relu", gather_across_devices=gather),
    }


def batch_embeddings():
    generator = torch.Generator().manual_seed(0)
    return [torch.randn(WORLD_SIZE * BATCH_PER_RANK, 5, generator=generator, dtype=torch.float64) for _ in range(2)]


def loss_and_gradients(loss, rows):
    embeddings = [e[rows].clone().requires_grad_() for e in batch_embeddings()]
    value = loss.compute_loss_from_embeddings(embeddings, None)
    value.backward()
    return value.item(), [e.grad for e in embeddings]


def gather_worker(rank, init_file, output_dir):
    import datetime

    import torch.distributed as dist

    dist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD_SIZE,
        timeout=datetime.timedelta(seconds=60),
    )
    try:
        rows = slice(rank * BATCH_PER_RANK, (rank + 1) * BATCH_PER_RANK)
        results = {name: loss_and_gradients(loss, rows) for name, loss in gathered_losses().items()}
        torch.save(results, f"{output_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.distributed
def test_gather_across_devices_gives_the_full_batch_loss_and_gradients(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(gather_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD_SIZE, join=True)
    ranks = [torch.load(tmp_path / f"rank{rank}.pt") for rank in range(WORLD_SIZE)]
    for name, loss in gathered_losses(gather=False).items():
        full_value, full_grads = loss_and_gradients(loss, slice(None))
        # each rank averages over its local anchors: the full-batch loss is the mean of the rank losses,
        # and DDP's gradient averaging (sum over ranks / world size) gives the full-batch gradient
        assert np.mean([result[name][0] for result in ranks]) == pytest.approx(full_value, rel=1e-10)
        for rank, result in enumerate(ranks):
            rows = slice(rank * BATCH_PER_RANK, (rank + 1) * BATCH_PER_RANK)
            for grad, full_grad in zip(result[name][1], full_grads):
                torch.testing.assert_close(grad / WORLD_SIZE, full_grad[rows], msg=name)


# --- HF encoders via ncl_ext.patch ------------------------------------------------------


def test_hf_encoder_with_mean_pooling_round_trips_through_patch(tmp_path):
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=40, hidden_size=HIDDEN, num_hidden_layers=2, num_attention_heads=2, intermediate_size=48
    )
    model = ncl_ext.patch(BertModel(config).eval(), mode="relu")
    input_ids = torch.tensor([[2, 7, 9, 11, 3], [2, 5, 3, 0, 0]])
    mask = (input_ids != 0).long()

    def mean_pooled(encoder):
        with torch.no_grad():
            tokens = encoder(input_ids=input_ids, attention_mask=mask).last_hidden_state
        return (tokens * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)

    expected = mean_pooled(model)
    assert (expected >= 0).all() and (expected == 0).any()
    model.save_pretrained(tmp_path)
    reloaded = ncl_ext.from_pretrained(tmp_path).eval()
    torch.testing.assert_close(mean_pooled(reloaded), expected)
