"""Sparse retrieval: NCL against Matryoshka and CSR at equal budgets of active dimensions.

Non-negative Contrastive Learning (Wang, Zhang, Guo, Wang, ICLR 2024, arXiv:2403.12459) makes sentence
embeddings sparse: what does that buy when each embedding keeps only ``k`` active dimensions? From the
same pretrained model (default: the packaged all-MiniLM-L6-v2), on the same STS-B train pairs, for the
same steps, trainable layers and learning rates:

- ``base``: the pretrained model untouched, cut to its first ``k`` dimensions (a reference);
- ``matryoshka``: dense, sentence-transformers' ``MatryoshkaLoss`` on the full width and every budget
  below it (Kusupati et al., 2022), cut to the first ``k`` dimensions;
- ``ncl_ea`` / ``ncl_topk``: ONE NCL model (:func:`~ncl_ext.adapters.text.sparse_encoder`, a
  ``head_dim``-wide non-negative head, ``NCLRankingLoss``) read two ways: the ``k`` dimensions of largest
  expected activation on training sentences (the same columns for every row, stored dense), or each
  row's ``k`` largest values (``encode(max_active_dims=k)``, stored sparse);
- ``csr`` / ``csr_cosine``: CSR (Wen et al., "Beyond Matryoshka", 2025), sentence-transformers'
  ``SparseAutoEncoder`` (``head_dim`` latents) with ``CSRLoss`` (its default dot-product ranking loss):
  one model per budget trained at that ``k`` (``csr_k=K``: one model trained at ``K``, cut at each
  budget), scored by dot product as trained (``csr``) and by cosine similarity (``csr_cosine``).

At each budget (suffix ``_k{k}``), on STS-B dev, which no choice looks at: ``stsb_spearman``
(``EmbeddingSimilarityEvaluator``); duplicate retrieval (each sentence of a dev pair scored >=
``min_score`` must find its partner among all dev sentences, itself excluded): ``mrr@10``,
``ndcg@10``, ``recall@10`` (``InformationRetrievalEvaluator``'s code); ``query_ms`` (exact search,
best of ``timing_repeats`` after one untimed warm-up search: a dense product for dense read-outs,
:class:`~ncl_ext.analysis.SparseIndex` for sparse ones); ``index_kib``. At ``backend_k`` the sparse
read-outs also go to Qdrant (local mode, in process) and Seismic: ``{engine}_recall_vs_exact``,
``{engine}_query_ms``. Also ``train_s`` (the wall time of the training behind a run, all its models)
and, for NCL, ``active_dims_full`` (non-zero entries per embedding before any cut). Nothing is
tuned.

Examples:
    ncl-ext run sparse-retrieval --data-root ../shared/data/stsbenchmark
    ncl-ext run sparse-retrieval --data-root DIR csr_k=256 backends=
"""

from __future__ import annotations

import importlib.util
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
from sentence_transformers import SentenceTransformer, SparseEncoder
from sentence_transformers.sentence_transformer.losses import MatryoshkaLoss, MultipleNegativesRankingLoss
from sentence_transformers.sparse_encoder.losses import CSRLoss, SparseMultipleNegativesRankingLoss
from sentence_transformers.sparse_encoder.modules import SparseAutoEncoder
from sentence_transformers.util import select_max_active_dims

from ncl_ext.adapters.text import (
    NCLRankingLoss,
    freeze_lower_layers,
    pretrained_sentence_transformer,
    save_model_atomically,
    sparse_encoder,
    train_on_pairs,
)
from ncl_ext.adapters.text_search import QdrantSparseIndex, SeismicSparseIndex, STSRetrievalScorer
from ncl_ext.analysis import expected_activation_order
from ncl_ext.analysis.loading import save_run_features
from ncl_ext.data.text_pairs import check_sts_source, load_sts_benchmark, sample_sentences, sts_positive_pairs
from ncl_ext.recipes.config import DEVICES, Settings, setting
from ncl_ext.training import seed_everything

__all__ = ["DEFAULT_PRESET", "RUN_NAMES", "Config", "evaluate", "prepare", "train"]

RUN_NAMES = ("base", "matryoshka", "ncl_ea", "ncl_topk", "csr", "csr_cosine")
#: The NCL model both NCL read-outs use (``--fresh`` removes it with the runs).
SHARED_FOLDERS = ("ncl_model",)
BACKENDS = {"qdrant": ("qdrant_client", QdrantSparseIndex), "seismic": ("seismic", SeismicSparseIndex)}


@dataclass
class Config(Settings):
    """Every setting of the sparse-retrieval recipe (``key=value`` on the command line)."""

    runs: tuple[str, ...] = setting(RUN_NAMES, "which runs", choices=RUN_NAMES)
    model: str | None = setting(None, "SentenceTransformer folder to start from; None: the packaged all-MiniLM-L6-v2")
    budgets: tuple[int, ...] = setting(
        (16, 32, 64, 128, 256), "active dimensions per embedding (Matryoshka trains on each, CSR once per budget)",
        minimum=1,
    )
    min_score: float = setting(4.0, "STS-B pairs scored at least this are positives / duplicates", minimum=0, maximum=5)
    head_dim: int = setting(1536, "width of the NCL head and of CSR's latent layer (4 x 384)", minimum=1)
    nonneg: str = setting("rep_relu", "the NCL head's map", choices=("relu", "rep_relu", "softplus", "sigmoid"))
    scale: float = setting(20.0, "inverse temperature of NCL's and Matryoshka's cosine ranking loss", above=0)
    csr_k: int | None = setting(None, "CSR's training k; None: one CSR model per budget, trained at it", minimum=1)
    epochs: float = setting(2.0, "passes over the training pairs", above=0)
    max_steps: int = setting(-1, "stop after this many steps; -1: run all epochs", minimum=-1)
    batch_size: int = setting(32, "pairs per batch (in-batch negatives)", minimum=2)
    lr: float = setting(5e-5, "learning rate of the transformer layers that train", above=0)
    head_lr: float = setting(1e-3, "learning rate of the new head (NCL's Dense, CSR's autoencoder)", above=0)
    warmup_ratio: float = setting(0.1, "share of the steps with a linear learning-rate warm-up", minimum=0, below=1)
    trainable_layers: int = setting(2, "top transformer layers that train (-1: all)", minimum=-1)
    ea_sentences: int = setting(1000, "training sentences, drawn at random, that rank the EA order", minimum=1,
                                evaluation=True)
    top_k: int = setting(10, "cut-off of MRR, NDCG and recall", minimum=1, evaluation=True)
    backends: tuple[str, ...] = setting(
        tuple(BACKENDS), "search engines also run at backend_k", choices=tuple(BACKENDS), evaluation=True
    )
    backend_k: int = setting(64, "the budget at which the search engines run", minimum=1, evaluation=True)
    backend_queries: int = setting(100, "queries per search engine (Qdrant's local mode is slow)", minimum=1,
                                   evaluation=True)
    timing_repeats: int = setting(3, "searches timed per measurement (after a warm-up); the best counts", minimum=1,
                                  evaluation=True)
    encode_batch_size: int = setting(64, "sentences per encoding batch", minimum=1, evaluation=True)
    save_steps: int = setting(50, "checkpoint every this many steps (a rerun resumes)", minimum=1)
    seed: int = setting(0, "seeds the heads and the batch order (the same for every run)")
    data_root: str | None = setting(None, "folder holding STS-B's sts-train.csv and sts-dev.csv")
    device: str | None = setting(None, "cpu, cuda or mps; default: the best available", choices=DEVICES)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.runs or not self.budgets:
            raise ValueError("runs and budgets each need at least one value")
        if list(self.budgets) != sorted(set(self.budgets)):
            shown = ",".join(map(str, self.budgets))
            raise ValueError(f"budgets={shown}; expected distinct values in increasing order")
        if self.backends and self.backend_k not in self.budgets:
            raise ValueError(f"backend_k={self.backend_k}; expected one of the budgets {self.budgets}")
        largest, name = (max(self.budgets), "budgets") if self.csr_k is None else (self.csr_k, "csr_k")
        if any(run.startswith("csr") for run in self.runs) and 4 * largest > self.head_dim:
            raise ValueError(f"{name} needs head_dim >= 4 x {largest} (CSR trains with 4k active latents); "
                             f"head_dim={self.head_dim}")
        check_sts_source(self.data_root)
        for backend in self.backends:  # (unknown names fail the setting's own check)
            if backend in BACKENDS and importlib.util.find_spec(BACKENDS[backend][0]) is None:
                raise ValueError(f"backends={backend}; its package is missing: pip install 'ncl_ext[retrieval]'")


DEFAULT_PRESET = "stsb"


class Context(NamedTuple):
    train: Any  # the (anchor, positive) training pairs
    dev: STSRetrievalScorer  # STS-B dev: Spearman and duplicate retrieval
    ea_texts: list[str]  # training sentences that rank expected activation


def prepare(config: Config, output: Path) -> Context:
    """Read STS-B, build the dev scorer and draw the training sentences that rank expected activation."""
    sts_train, sts_dev = load_sts_benchmark(config.data_root)
    train = sts_positive_pairs(sts_train, config.min_score)
    dev = STSRetrievalScorer(sts_dev, config.min_score, config.top_k, config.timing_repeats)
    return Context(train, dev, sample_sentences(train, config.ea_sentences, config.seed))


def train(config: Config, run: str, context: Context, run_dir: Path) -> Any:
    """The model(s) of ``run``: a model, or ``{k: model}`` for per-budget CSR; finished training is reloaded."""
    if run == "base":
        return pretrained_sentence_transformer(config.model, config.device)
    if run.startswith("ncl"):  # both NCL read-outs share one trained model
        return _trained(config, "ncl", context, run_dir.parent / "ncl_model")
    if run.startswith("csr"):  # both CSR read-outs (dot, cosine) share the trained models
        if config.csr_k is None:
            return {k: _trained(config, "csr", context, run_dir.parent / "csr" / f"k{k}", k) for k in config.budgets}
        return _trained(config, "csr", context, run_dir.parent / "csr", config.csr_k)
    return _trained(config, run, context, run_dir)


def _trained(config: Config, method: str, context: Context, folder: Path, k: int | None = None) -> Any:
    loader = SentenceTransformer if method == "matryoshka" else SparseEncoder
    if (folder / "model" / "modules.json").is_file():
        return loader(str(folder / "model"), device=config.device)
    seed_everything(config.seed)  # the same head initialisation and batches for every method
    base = pretrained_sentence_transformer(config.model, config.device)
    dim = base.get_embedding_dimension()
    if method == "matryoshka":
        model = base
        dims = [dim, *(k for k in reversed(config.budgets) if k < dim)]
        loss = MatryoshkaLoss(model, MultipleNegativesRankingLoss(model, scale=config.scale), dims)
    elif method == "ncl":
        model = sparse_encoder(base, dim=config.head_dim, mode=config.nonneg, device=config.device)
        loss = NCLRankingLoss(model, nonneg=None, scale=config.scale)  # the head applies the map
    else:  # CSR as sentence-transformers trains it: dot-product ranking loss plus reconstruction terms
        autoencoder = SparseAutoEncoder(dim, hidden_dim=config.head_dim, k=k, k_aux=min(512, config.head_dim))
        model = SparseEncoder(modules=[base[0], base[1], autoencoder], device=config.device)
        loss = CSRLoss(model, loss=SparseMultipleNegativesRankingLoss(model))
    freeze_lower_layers(model, config.trainable_layers)
    started = time.perf_counter()
    log = train_on_pairs(
        model, loss, context.train, folder / "checkpoints", epochs=config.epochs, max_steps=config.max_steps,
        batch_size=config.batch_size, lr=config.lr, head_lr=config.head_lr, warmup_ratio=config.warmup_ratio,
        seed=config.seed, use_cpu=config.device == "cpu", save_steps=config.save_steps,
    )
    (folder / "train.json").write_text(json.dumps({"seconds": time.perf_counter() - started, "log": log}))
    save_model_atomically(model, folder / "model")
    return model


def evaluate(config: Config, run: str, model: Any, context: Context, run_dir: Path) -> dict[str, float]:
    """Every metric of ``run`` at every budget (see the module docstring)."""
    texts = context.dev.texts
    if run.startswith("csr"):  # the autoencoder keeps its own top-k latents
        models = model if isinstance(model, dict) else dict.fromkeys(config.budgets, model)
        views = {k: (_encode(models[k], texts, config, k), True) for k in config.budgets}
        similarity = "cosine" if run == "csr_cosine" else "dot"
        save_run_features(run_dir, views[max(config.budgets)][0], texts=texts)  # for compare.png
        return _score(config, context, views, similarity) | _train_seconds(run_dir.parent / "csr")
    full = _encode(model, texts, config)
    if max(config.budgets) > full.shape[1]:
        raise ValueError(f"budgets={config.budgets}; expected at most the model's {full.shape[1]} dimensions")
    if run == "ncl_ea":
        order = expected_activation_order(_encode(model, context.ea_texts, config))
        views = {k: (full[:, order[:k]], False) for k in config.budgets}
    elif run == "ncl_topk":
        views = {k: (select_max_active_dims(full, k), True) for k in config.budgets}
    else:
        views = {k: (full[:, :k], False) for k in config.budgets}
    metrics = _score(config, context, views, "cosine")
    save_run_features(run_dir, full if run != "base" else views[max(config.budgets)][0], texts=texts)
    if run.startswith("ncl"):
        metrics["active_dims_full"] = float((full != 0).sum(1).float().mean())
        run_dir = run_dir.parent / "ncl_model"
    return metrics | _train_seconds(run_dir)


def _encode(model: Any, texts: list[str], config: Config, max_active_dims: int | None = None) -> torch.Tensor:
    sparse = isinstance(model, SparseEncoder)
    options = {"convert_to_sparse_tensor": False, "max_active_dims": max_active_dims} if sparse else {}
    return model.encode(texts, batch_size=config.encode_batch_size, convert_to_tensor=True, **options).float().cpu()


def _score(config: Config, context: Context, views: dict, similarity: str) -> dict[str, float]:
    """The dev metrics of each budget's ``(embeddings, sparse)``, named ``{metric}_k{k}``."""
    metrics = {}
    for k, (embeddings, sparse) in views.items():
        scores = context.dev.score(embeddings, sparse, similarity)
        scores["stsb_spearman"] = scores.pop("spearman")
        if sparse and k == config.backend_k:
            for name in config.backends:
                engine = context.dev.compare_engine(BACKENDS[name][1], embeddings, config.backend_queries, similarity)
                scores |= {f"{name}_{metric}": value for metric, value in engine.items()}
        metrics |= {f"{metric}_k{k}": value for metric, value in scores.items()}
    return metrics


def _train_seconds(folder: Path) -> dict[str, float]:
    """Wall time of the training behind a run (summed over per-budget models), as recorded when it ran."""
    return {"train_s": sum(json.loads(path.read_text())["seconds"] for path in folder.glob("**/train.json"))}

