"""Graph contrastive learning: GRACE (CL) and GRACE with a non-negative head (NCL), side by side.

GRACE (Zhu, Xu, Yu, Liu, Wu, Wang, "Deep Graph Contrastive Representation Learning",
2020, arXiv:2006.04131) is trained twice on one graph, from the same initial weights and
with the same random views: once as published (CL) and once with the non-negative head
of Wang, Zhang, Guo, Wang, "Non-negative Contrastive Learning" (ICLR 2024,
arXiv:2403.12459) on the projector output (NCL). The NCL run uses the paper's ``relu`` map
and trains at half of GRACE's temperature (``ncl_temperature_scale=0.5``: non-negative
cosine similarities span [0, 1], half the range of signed ones), with no gradient clipping
for either run, as GRACE; these defaults were chosen on validation nodes over every
preset's hyper-parameters (``benchmarks/graph_robustness.py``). Then, for each run:

- node classification with GRACE's protocol: an L2-regularised logistic regression on the
  frozen, L2-normalised encoder embeddings, over ``eval_splits`` random 10% / 10% / 80%
  train / validation / test splits (the regularisation strength is chosen on the
  validation nodes): ``node_acc_mean`` and ``node_acc_std`` on the test nodes, and
  ``node_val_acc_mean`` on the validation nodes (what settings may be chosen on); on
  Planetoid graphs also the public split (20 labelled nodes per class): ``public_split_acc``;
- the feature report of the head outputs (the features the loss sees, which NCL makes
  non-negative) against the node labels: ``sparsity``, ``semantic_consistency``,
  ``correlation``, ``effective_rank``, ``active_dims``, ``dead_dims``, and the same
  node classification on these features (``head_acc_mean``).

Presets: ``synthetic`` (the offline default: a generated graph with planted communities,
under a minute), ``cora``, ``citeseer``, ``pubmed`` (GRACE's published settings, its
``config.yaml``), ``amazon-computers``, ``amazon-photo``, ``coauthor-cs`` (the settings
published with GRACE's successor GCA, Zhu et al., WWW 2021, which evaluates GRACE on
them). Real graphs are read from ``--data-root`` (PyG's raw files; never written to;
PyG's Planetoid reader unpickles them, so the data root must be trusted).
The presets' values and their sources are in ``recipes/graph-contrastive/*.yaml``; what
the recipe adds to GRACE's settings, and why, is in ``recipes/graph-contrastive/README.md``.

Examples:
    ncl-ext run graph-contrastive                                    # generated graph, CPU, under a minute
    ncl-ext run graph-contrastive --preset cora --data-root shared/data/planetoid
    ncl-ext run graph-contrastive eval_splits=20 objective=spectral --preset cora --data-root data
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ncl_ext import analysis
from ncl_ext.adapters.graph import GRACE, OBJECTIVES, GCNEncoder, GraphAugmentation
from ncl_ext.analysis.loading import save_run_features
from ncl_ext.analysis.probes import logistic_regression_accuracies, logistic_regression_accuracy
from ncl_ext.data.graphs import (
    GRAPH_DATASETS,
    WholeGraph,
    load_graph_dataset,
    planted_partition_graph,
    random_node_splits,
)
from ncl_ext.log import logger
from ncl_ext.recipes.config import DEVICES, Settings, setting
from ncl_ext.training import TrainConfig, Trainer, make_accelerator, seed_everything

RUN_NAMES = ("cl", "ncl")
SYNTHETIC = "synthetic"
DEFAULT_PRESET = SYNTHETIC
_C_VALUES = (0.0625, 0.25, 1.0, 4.0, 16.0, 64.0, 256.0, 1024.0)


@dataclass
class Config(Settings):
    """Every setting of a graph contrastive run (override any of them with ``key=value``)."""

    dataset: str = setting(SYNTHETIC, "the graph", choices=(SYNTHETIC, *GRAPH_DATASETS))
    data_root: str | None = setting(None, "folder holding the raw files PyG reads (never written to)")
    device: str | None = setting(None, "cpu, cuda or mps; default: the best available", choices=DEVICES)
    runs: tuple[str, ...] = setting(RUN_NAMES, "which runs to train: cl (GRACE), ncl (GRACE + non-negative head)",
                                    choices=RUN_NAMES)
    num_nodes: int = setting(800, "dataset=synthetic: nodes", minimum=2)
    num_classes: int = setting(5, "dataset=synthetic: planted communities", minimum=2)
    num_features: int = setting(200, "dataset=synthetic: feature columns", minimum=1)
    noise_rate: float = setting(0.03, "dataset=synthetic: probability that a feature off the node's topic is on "
                                "(on-topic: 0.10)", minimum=0, maximum=1)
    normalize_features: bool = setting(True, "row-normalise node features to sum 1 (as GRACE)")
    hidden: int = setting(128, "embedding size (GRACE's num_hidden; the first GCN layer has twice as many)", minimum=1)
    projection_hidden: int = setting(128, "projector hidden width (GRACE's num_proj_hidden)", minimum=1)
    projection_dim: int | None = setting(None, "projector output width: the head the loss sees (default: hidden, as "
                                         "GRACE)", minimum=1)
    activation: str = setting("relu", "encoder activation (the presets: relu, prelu on CiteSeer, rrelu on "
                              "Amazon Computers and Coauthor CS)")
    num_layers: int = setting(2, "GCN layers", minimum=1)
    drop_edge: tuple[float, ...] = setting((0.2, 0.4), "edge drop rate of view 1, view 2", minimum=0, below=1)
    mask_feature: tuple[float, ...] = setting((0.3, 0.4), "feature-column mask rate of view 1, view 2", minimum=0,
                                              below=1)
    temperature: float = setting(0.4, "InfoNCE temperature (GRACE's tau)", above=0)
    ncl_temperature_scale: float = setting(0.5, "ncl run: its InfoNCE temperature is temperature x this (non-negative "
                                           "cosines span [0, 1], half of [-1, 1]; README)", above=0)
    ncl_projection_scale: int = setting(1, "ncl run: its projector outputs (projection_dim or hidden) x this dims",
                                        minimum=1)
    objective: str = setting("infonce", "the contrastive objective", choices=OBJECTIVES)
    nonneg: str = setting("relu", "the non-negative map of the ncl run", mode=True)
    chunk_size: int | None = setting(None, "InfoNCE rows at a time, for graphs too large for the N x N matrix",
                                     minimum=1)
    epochs: int = setting(200, "full-batch training steps (GRACE's num_epochs)", minimum=1)
    lr: float = setting(5e-4, "Adam learning rate", above=0)
    weight_decay: float = setting(1e-5, "weight decay", minimum=0)
    max_grad_norm: float | None = setting(None, "clip the gradient norm (None: as published)", above=0)
    cosine_decay: bool = setting(False, "cosine learning-rate decay (GRACE: constant)")
    seed: int = setting(0, "seeds weights, views and splits (every run of a command uses the same)")
    eval_splits: int = setting(10, "random train/validation/test splits of the node probe", minimum=1, evaluation=True)
    train_fraction: float = setting(0.1, "share of nodes the probe trains on", above=0, below=1, evaluation=True)
    val_fraction: float = setting(0.1, "share of nodes the probe's C is chosen on", above=0, below=1, evaluation=True)
    inverse_regularization: tuple[float, ...] = setting(_C_VALUES, "candidate C of the logistic regression", above=0,
                                                        evaluation=True)

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("drop_edge", "mask_feature"):
            if len(getattr(self, name)) != 2:
                raise ValueError(f"{name}={getattr(self, name)!r}; expected two rates, one per view, e.g. 0.2,0.4")
        if self.train_fraction + self.val_fraction >= 1:
            raise ValueError(
                f"train_fraction={self.train_fraction!r}, val_fraction={self.val_fraction!r}; "
                "expected fractions that leave test nodes (sum < 1)"
            )
        activations = ("relu", "prelu", "rrelu", "elu", "selu", "gelu", "leaky_relu", "tanh", "sigmoid", "silu")
        if self.activation.lower() not in activations:
            raise ValueError(f"activation={self.activation!r}; expected one of {', '.join(activations)}")
        if self.dataset != SYNTHETIC and self.data_root is None:
            spec = GRAPH_DATASETS[self.dataset]
            raise ValueError(
                f"dataset={self.dataset!r} needs --data-root: a folder holding {spec.folder}/raw/{spec.raw_files[0]}"
            )


class Context:
    """The graph (on the device) and the accelerator every run of the command shares."""

    def __init__(self, config: Config, output: Path) -> None:
        self.accelerator = make_accelerator(config.device)
        self.device = self.accelerator.device
        if config.dataset == SYNTHETIC:
            graph = planted_partition_graph(
                num_nodes=config.num_nodes, num_classes=config.num_classes, num_features=config.num_features,
                noise_rate=config.noise_rate, seed=config.seed,
            )
        else:
            # PyG processes a copy of the raw files in the output folder: the data root may be read-only.
            graph = load_graph_dataset(config.dataset, config.data_root, output / "data", config.normalize_features)
        self.graph = graph.to(self.device)
        logger.info(
            f"graph {config.dataset}: {graph.num_nodes} nodes, {graph.num_edges} edges, "
            f"{graph.num_features} features, {int(graph.y.max()) + 1} classes"
        )


def prepare(config: Config, output: Path) -> Context:
    return Context(config, output)


def train_config(config: Config, name: str) -> TrainConfig:
    """GRACE's optimisation: full-batch Adam at a constant learning rate (AdamW with GRACE's small decay)."""
    return TrainConfig(
        epochs=config.epochs, lr=config.lr, optimizer="adamw", weight_decay=config.weight_decay,
        warmup_epochs=0, min_lr=0.0 if config.cosine_decay else config.lr, max_grad_norm=config.max_grad_norm,
        seed=config.seed, checkpoint_every=max(1, config.epochs // 4), log_every=max(1, config.epochs // 20), name=name,
    )


def derived_settings(config: Config) -> dict[str, Any]:
    return {"optimizer": train_config(config, "dry-run").optimizer_summary()}


def train(config: Config, name: str, context: Context, output: Path) -> GRACE:
    """Train run ``name`` (resuming from ``output/checkpoints``); CL and NCL share weights and views."""
    seed_everything(config.seed)
    encoder = GCNEncoder(context.graph.num_features, config.hidden, config.num_layers, config.activation)
    views = tuple(GraphAugmentation(edge, feature) for edge, feature in zip(config.drop_edge, config.mask_feature))
    ncl = name == "ncl"
    model = GRACE(
        encoder,
        projection_hidden=config.projection_hidden,
        projection_dim=(config.projection_dim or config.hidden) * (config.ncl_projection_scale if ncl else 1),
        nonneg=config.nonneg if ncl else None,
        temperature=config.temperature * (config.ncl_temperature_scale if ncl else 1.0),
        views=views,
        objective=config.objective,
        chunk_size=config.chunk_size,
    )
    trainer = Trainer(
        model, lambda model, graph: model.training_step(graph), WholeGraph(context.graph), train_config(config, name),
        output, accelerator=context.accelerator,
    )
    return trainer.fit().model


def evaluate(config: Config, name: str, model: GRACE, context: Context, output: Path) -> dict[str, Any]:
    """Node classification on the embeddings (and on the head outputs), and the feature report of the head."""
    graph = context.graph
    embeddings = model.embed(graph).cpu()
    head = model.head_features(graph).cpu()
    labels = graph.y.cpu()
    splits = random_node_splits(
        len(labels), config.train_fraction, config.val_fraction, config.eval_splits, config.seed
    )
    # (validation, test) accuracy per split; a setting may be selected on the validation nodes only.
    validation, probe = zip(
        *(logistic_regression_accuracies(embeddings, labels, split, config.inverse_regularization) for split in splits)
    )
    head_probe = [logistic_regression_accuracy(head, labels, split, config.inverse_regularization) for split in splits]
    metrics: dict[str, Any] = {
        "node_acc_mean": float(np.mean(probe)), "node_acc_std": float(np.std(probe)),
        "node_val_acc_mean": float(np.mean(validation)),
    }
    if "train_mask" in graph:
        public = tuple(graph[mask].cpu().nonzero().flatten() for mask in ("train_mask", "val_mask", "test_mask"))
        metrics["public_split_acc"] = logistic_regression_accuracy(
            embeddings, labels, public, config.inverse_regularization
        )
    report = analysis.feature_report(head, labels)
    for key in ("sparsity", "semantic_consistency", "correlation", "effective_rank", "active_dims", "dead_dims"):
        metrics[key] = report[key]
    metrics["head_acc_mean"] = float(np.mean(head_probe))
    metrics["node_accs"] = [float(accuracy) for accuracy in probe]
    save_run_features(output, head, labels)
    logger.info(f"[{name}] node accuracy {metrics['node_acc_mean']:.4f} ± {metrics['node_acc_std']:.4f}, "
                f"sparsity {metrics['sparsity']:.4f}")
    return metrics
