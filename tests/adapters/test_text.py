"""Sentence embeddings: the non-negative head, the NCL ranking losses, STS data and the recipe.

Tiny real sentence-transformers models are built offline from a small ``BertConfig`` and a
word-level vocabulary; expected values come from numpy re-implementations in this file.
"""

import json
import math

import numpy as np
import pytest
import torch
from datasets import Dataset
from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer, SentenceTransformerTrainingArguments
from sentence_transformers.sentence_transformer.losses import (
    CachedMultipleNegativesRankingLoss,
    MatryoshkaLoss,
    MultipleNegativesRankingLoss,
)
from sentence_transformers.sentence_transformer.modules import Dense, Normalize, Pooling, Transformer
from transformers import BertConfig, BertModel, BertTokenizerFast

import ncl_ext
from ncl_ext.adapters.text import CachedNCLRankingLoss, NCLRankingLoss, NCLSpectralLoss, add_nonneg_head
from ncl_ext.cli import main as cli_main
from ncl_ext.data.text_pairs import (
    load_hub_pairs,
    read_nli_triplets,
    read_pairs_tsv,
    read_sts_csv,
    sts_positive_pairs,
)
from ncl_ext.recipes import run_recipe
from ncl_ext.recipes.sentence_embedding import _ea_sentences

WORDS = (
    "a the man woman child dog cat horse plays runs eats rides sings guitar piano flute food bread "
    "ball park street river is on in with and small big red green"
).split()
SENTENCES = [
    "a man plays guitar",
    "a woman plays piano",
    "the dog runs in the park",
    "a cat eats food",
    "a child rides a horse",
    "the woman sings",
    "a big red ball",
    "the small green river",
]
HIDDEN = 32


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory):
    """A tiny BERT + word-level tokenizer, saved as a SentenceTransformer folder."""
    path = tmp_path_factory.mktemp("tiny-bert")
    (path / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]))
    BertTokenizerFast.from_pretrained(path).save_pretrained(path)  # reads vocab.txt: one token per word
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(WORDS) + 5, hidden_size=HIDDEN, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=48, max_position_embeddings=32, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )
    BertModel(config).save_pretrained(path)
    transformer = Transformer(str(path))
    model = SentenceTransformer(modules=[transformer, Pooling(HIDDEN, "mean"), Normalize()], device="cpu")
    model.save(str(path / "st"))
    return path / "st"


@pytest.fixture
def model(tiny_path):
    return SentenceTransformer(str(tiny_path), device="cpu")


def features_of(model, columns):
    return [model.tokenize(column) for column in columns]


def np_ranking_loss(anchors, candidates, scale=20.0, nonneg=None):
    """numpy in-batch InfoNCE: anchor i's positive is candidates[0][i], every candidate row is in its softmax."""
    if nonneg == "relu":
        anchors, candidates = np.maximum(anchors, 0), [np.maximum(c, 0) for c in candidates]
    unit = lambda x: x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-8)
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


# --- data -------------------------------------------------------------------------------


def write_sts(path, rows):
    lines = []
    for index, (score, first, second) in enumerate(rows):
        extra = "\tsource-a\tsource-b" if index % 3 == 0 else ""  # some original rows carry source columns
        lines.append(f"main-captions\tMSRvid\t2012test\t{index:04d}\t{score}\t{first}\t{second}{extra}")
    path.write_text("\n".join(lines) + "\n")


def test_read_sts_csv_keeps_quotes_and_filters_positive_pairs(tmp_path):
    rows = [(5.0, 'a man says "hi"', "a man says hi"), (1.2, "a cat", "a dog"), (4.0, "x's", 'y "z')]
    write_sts(tmp_path / "sts.csv", rows)
    sts = read_sts_csv(tmp_path / "sts.csv")
    assert sts["sentence1"] == [r[1] for r in rows] and sts["sentence2"] == [r[2] for r in rows]
    assert sts["score"] == [5.0, 1.2, 4.0]
    pairs = sts_positive_pairs(sts, min_score=4.0)
    assert pairs.column_names == ["anchor", "positive"]
    assert pairs["anchor"] == ['a man says "hi"', "x's"]


def test_read_sts_csv_rejects_malformed_rows(tmp_path):
    (tmp_path / "short.csv").write_text("genre\tfile\t2012\t0001\t4.0\tonly one sentence\n")
    with pytest.raises(ValueError, match=r"short.csv:1: expected 7"):
        read_sts_csv(tmp_path / "short.csv")
    write_sts(tmp_path / "bad.csv", [(4.0, "a", "b"), ("high", "c", "d")])
    with pytest.raises(ValueError, match=r"bad.csv:2: the score column holds 'high'"):
        read_sts_csv(tmp_path / "bad.csv")
    write_sts(tmp_path / "range.csv", [(7.5, "a", "b")])
    with pytest.raises(ValueError, match="outside"):
        read_sts_csv(tmp_path / "range.csv")
    with pytest.raises(FileNotFoundError):
        read_sts_csv(tmp_path / "missing.csv")


def test_read_pairs_tsv_and_nli_triplets(tmp_path):
    (tmp_path / "pairs.tsv").write_text('anchor\tpositive\na "q"\ta doc\nb\tc\n')
    pairs = read_pairs_tsv(tmp_path / "pairs.tsv")
    assert pairs["anchor"] == ['a "q"', "b"] and pairs["positive"] == ["a doc", "c"]
    (tmp_path / "bad.tsv").write_text("one\ttwo\tthree\n")
    with pytest.raises(ValueError, match="bad.tsv:1: expected 2"):
        read_pairs_tsv(tmp_path / "bad.tsv")
    nli = "split\tdataset\tfilename\tsentence1\tsentence2\tlabel\n" + "\n".join(
        [
            "train\tSNLI\tx\tP1\tE1\tentailment",
            "train\tSNLI\tx\tP1\tC1\tcontradiction",
            "train\tSNLI\tx\tP1\tE2\tentailment",
            "train\tSNLI\tx\tP1\tN1\tneutral",
            "train\tSNLI\tx\tP2\tE3\tentailment",  # no contradiction: skipped
            "dev\tSNLI\tx\tP3\tE4\tentailment",
            "dev\tSNLI\tx\tP3\tC4\tcontradiction",
        ]
    )
    (tmp_path / "nli.tsv").write_text(nli + "\n")
    triplets = read_nli_triplets(tmp_path / "nli.tsv")
    assert list(zip(triplets["anchor"], triplets["positive"], triplets["negative"])) == [
        ("P1", "E1", "C1"),
        ("P1", "E2", "C1"),
    ]


def test_load_hub_pairs_selects_and_renames_columns_of_a_local_dataset(tmp_path):
    (tmp_path / "train.csv").write_text("question,answer,id\nwho plays,a man plays,1\nwho runs,a dog runs,2\n")
    pairs = load_hub_pairs(str(tmp_path), split="train", columns=["question", "answer"])
    assert pairs.column_names == ["anchor", "positive"]
    assert list(pairs["anchor"]) == ["who plays", "who runs"] and list(pairs["positive"]) == ["a man plays", "a dog runs"]
    with pytest.raises(ValueError, match=r"columns \['title'\] are not in"):
        load_hub_pairs(str(tmp_path), split="train", columns=["title"])


# --- the recipe -------------------------------------------------------------------------


def sts_rows(count, seed):
    """Sentence pairs over the tiny vocabulary: paraphrases (high score) and unrelated pairs (low)."""
    generator = np.random.default_rng(seed)
    rows = []
    for index in range(count):
        words = list(generator.choice(WORDS, size=5))
        if index % 2 == 0:
            rows.append((4.0 + float(generator.uniform(0, 1)), " ".join(words), " ".join(words[1:] + ["and"])))
        else:
            other = list(generator.choice(WORDS, size=5))
            rows.append((float(generator.uniform(0, 2)), " ".join(words), " ".join(other)))
    return rows


RECIPE_OVERRIDES = [
    "head_dim=64", "epochs=2", "batch_size=8", "ea_sentences=30", "save_steps=2", "trainable_layers=1",
    "encode_batch_size=16",
]


@pytest.fixture(scope="module")
def recipe_run(tiny_path, tmp_path_factory):
    """One uninterrupted run of the recipe (with the Matryoshka runs) on a tiny STS-B copy."""
    root = tmp_path_factory.mktemp("stsbenchmark")
    write_sts(root / "sts-train.csv", sts_rows(48, seed=0))
    write_sts(root / "sts-dev.csv", sts_rows(40, seed=1))
    output = tmp_path_factory.mktemp("recipe") / "out"
    overrides = [f"model={tiny_path}", *RECIPE_OVERRIDES, "matryoshka=true"]
    results = run_recipe("sentence-embedding", overrides=overrides, data_root=str(root), output=output, device="cpu")
    return root, output, overrides, results


def test_recipe_runs_base_cl_ncl_and_skips_finished_runs(recipe_run):
    root, output, overrides, results = recipe_run
    runs = results["runs"]
    assert list(runs) == ["base", "cl", "ncl", "cl_matryoshka", "ncl_matryoshka"]
    for name, metrics in runs.items():
        for key in ("stsb_spearman", "stsb_spearman_ea25", "stsb_spearman_trunc25"):
            assert -1 <= metrics[key] <= 1
        assert 0 <= metrics["sparsity"] <= 1
        assert metrics["search_ms_sparse"] > 0 and metrics["search_ms_dense"] > 0
        assert ("stsb_spearman_matryoshka25" in metrics) == name.endswith("matryoshka")
    assert runs["base"]["stsb_spearman"] > 0.3  # the tiny data is learnable: paraphrases share words
    assert runs["cl"]["sparsity"] == 0 and runs["ncl"]["sparsity"] > 0.2
    ncl_model = SentenceTransformer(str(output / "ncl" / "model"), device="cpu")  # no trust_remote_code
    assert ncl_model.get_embedding_dimension() == 64 and (ncl_model.encode(SENTENCES) >= 0).all()
    assert (output / "ncl" / "top_activating_texts.md").is_file()
    saved = json.loads((output / "results.json").read_text())
    assert saved["recipe"] == "sentence-embedding" and saved["runs"] == runs

    again = run_recipe("sentence-embedding", overrides=overrides, data_root=str(root), output=output, device="cpu")
    for name in runs:  # finished runs are reloaded, not retrained
        assert again["runs"][name]["stsb_spearman"] == pytest.approx(runs[name]["stsb_spearman"], abs=1e-6)


def test_ea_sentences_are_a_seeded_draw_from_the_whole_training_set():
    # Ordered data, as STS-B train is (sorted by genre): the draw must not be the first sentences.
    train = Dataset.from_dict({"anchor": [f"a{i}" for i in range(200)], "positive": [f"p{i}" for i in range(200)]})
    drawn = _ea_sentences(train, 50, seed=0)
    assert len(set(drawn)) == 50 and set(drawn) <= set(train["anchor"]) | set(train["positive"])
    assert drawn == _ea_sentences(train, 50, seed=0) and drawn != _ea_sentences(train, 50, seed=1)
    assert max(int(text[1:]) for text in drawn) >= 100  # reaches the second half of the file
    assert len(_ea_sentences(train, 10_000, seed=0)) == 400  # capped at the distinct sentences


class Interrupted(Exception):
    pass


def test_recipe_resumes_an_interrupted_run_from_its_checkpoint(recipe_run, tmp_path, monkeypatch):
    root, _, overrides, reference = recipe_run
    overrides = [item for item in overrides if not item.startswith("matryoshka")]
    steps = {"n": 0}
    original_step = SentenceTransformerTrainer.training_step

    def dying_step(self, *args, **kwargs):
        steps["n"] += 1
        if steps["n"] > 3:  # after the checkpoint at step 2
            raise Interrupted
        return original_step(self, *args, **kwargs)

    monkeypatch.setattr(SentenceTransformerTrainer, "training_step", dying_step)
    with pytest.raises(Interrupted):
        run_recipe("sentence-embedding", overrides=overrides, data_root=str(root), output=tmp_path, device="cpu")
    monkeypatch.undo()
    assert not (tmp_path / "cl" / "model").exists()
    assert [p.name for p in (tmp_path / "cl" / "checkpoints").iterdir()] == ["checkpoint-2"]
    resumed = run_recipe("sentence-embedding", overrides=overrides, data_root=str(root), output=tmp_path, device="cpu")
    for run in ("cl", "ncl"):
        for metric in ("stsb_spearman", "sparsity", "stsb_spearman_ea25"):
            assert resumed["runs"][run][metric] == pytest.approx(reference["runs"][run][metric], abs=1e-6)


def test_recipe_without_data_says_where_to_point_data_root(tmp_path, capsys):
    with pytest.raises(FileNotFoundError, match="--data-root DIR, where DIR holds sts-train.csv and sts-dev.csv"):
        run_recipe("sentence-embedding", output=tmp_path)
    assert cli_main(["run", "sentence-embedding", "--data-root", str(tmp_path), "--output", str(tmp_path)]) == 2
    assert "lacks sts-train.csv, sts-dev.csv" in capsys.readouterr().err
    with pytest.raises(ValueError, match="train_data='web'"):
        run_recipe("sentence-embedding", overrides=["train_data=web"], data_root=str(tmp_path), output=tmp_path)
