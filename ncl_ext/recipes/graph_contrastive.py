"""Graph contrastive learning: GRACE (CL) and GRACE with a non-negative head (NCL), side by side.

GRACE (Zhu, Xu, Yu, Liu, Wu, Wang, "Deep Graph Contrastive Representation Learning",
2020, arXiv:2006.04131) is trained twice on one graph, from the same initial weights and
with the same random views: once as published (CL) and once with the non-negative head
of Wang, Zhang, Guo, Wang, "Non-negative Contrastive Learning" (ICLR 2024,
arXiv:2403.12459) on the projector output (NCL). Then, for each run:

- node classification with GRACE's protocol: an L2-regularised logistic regression on the
  frozen, L2-normalised encoder embeddings, over ``eval_splits`` random 10% / 10% / 80%
  train / validation / test splits (the regularisation strength is chosen on the
  validation nodes): ``node_acc_mean`` and ``node_acc_std``; on Planetoid graphs also
  the public split (20 labelled nodes per class): ``public_split_acc``;
- the feature report of the head outputs (the features the loss sees, which NCL makes
  non-negative) against the node labels: ``sparsity``, ``semantic_consistency``,
  ``correlation``, ``effective_rank``, ``active_dims``, ``dead_dims``, and the same
  node classification on these features (``head_acc_mean``).

Presets: ``synthetic`` (the offline default: a generated graph with planted communities,
seconds), ``cora``, ``citeseer``, ``pubmed`` (GRACE's published settings, its
``config.yaml``), ``amazon-computers``, ``amazon-photo``, ``coauthor-cs`` (the settings
published with GRACE's successor GCA, Zhu et al., WWW 2021, which evaluates GRACE on
them). Real graphs are read from ``--data-root`` (PyG's raw files; never written to).
One addition to GRACE's settings, for both runs: the gradient norm is clipped at
``max_grad_norm=1.0``. Without it the NCL run on Cora collapses for 20-60 epochs once or
twice per run (the loss climbs back towards log 2N, the effective rank falls from about
20 to 7) before recovering; ``max_grad_norm=none`` trains exactly as published.

Examples:
    ncl-ext run graph-contrastive                                    # generated graph, CPU, seconds
    ncl-ext run graph-contrastive --preset cora --data-root shared/data/planetoid
    ncl-ext run graph-contrastive eval_splits=20 objective=spectral --preset cora --data-root data
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ncl_ext import analysis
from ncl_ext.adapters.graph import GRACE, OBJECTIVES, GCNEncoder, GraphAugmentation
from ncl_ext.data.graphs import GRAPH_DATASETS, load_graph_dataset, planted_partition_graph
from ncl_ext.nonneg import check_mode
from ncl_ext.training import TrainConfig, Trainer, make_accelerator, seed_everything

RUN_NAMES = ("cl", "ncl")
SYNTHETIC = "synthetic"


@dataclass
class Config:
    """Every setting of a graph contrastive run (override any of them with ``key=value``)."""

    dataset: str = SYNTHETIC
    data_root: str | None = None
    device: str | None = None
    runs: tuple[str, ...] = RUN_NAMES
    # The generated graph (dataset=synthetic).
    num_nodes: int = 800
    num_classes: int = 5
    num_features: int = 200
    normalize_features: bool = True
    # GRACE: encoder, projector, views, objective (names of its config.yaml in comments).
    hidden: int = 128  # num_hidden: embedding size (the first GCN layer has twice as many units)
    projection_hidden: int = 128  # num_proj_hidden
    activation: str = "relu"
    num_layers: int = 2
    drop_edge: tuple[float, ...] = (0.2, 0.4)  # drop_edge_rate_1, drop_edge_rate_2
    mask_feature: tuple[float, ...] = (0.3, 0.4)  # drop_feature_rate_1, drop_feature_rate_2
    temperature: float = 0.4  # tau
    objective: str = "infonce"
    nonneg: str = "relu"  # the NCL run's head (gelu / leaky_relu: the paper's non-non-negative ablations)
    chunk_size: int | None = None  # InfoNCE rows at a time, for graphs too large for the N x N matrix
    # Optimisation: GRACE trains full-batch with Adam at a constant learning rate.
    epochs: int = 200  # num_epochs
    lr: float = 5e-4  # learning_rate
    weight_decay: float = 1e-5
    # Not in GRACE: clipping the gradient norm stops the NCL run's transient collapses on Cora
    # (loss back near log 2N for 20-60 epochs) and leaves CL's accuracy within noise.
    max_grad_norm: float | None = 1.0
    cosine_decay: bool = False
    seed: int = 0
    # Evaluation: GRACE's node-classification protocol.
    eval_splits: int = 10
    train_fraction: float = 0.1
    val_fraction: float = 0.1
    inverse_regularization: tuple[float, ...] = (0.0625, 0.25, 1.0, 4.0, 16.0, 64.0, 256.0, 1024.0)

    def __post_init__(self) -> None:
        known = (SYNTHETIC, *GRAPH_DATASETS)
        if self.dataset not in known:
            raise ValueError(f"dataset={self.dataset!r} is unknown; expected one of {known}")
        unknown = [run for run in self.runs if run not in RUN_NAMES]
        if unknown or not self.runs:
            raise ValueError(f"runs={self.runs!r}; expected a non-empty subset of {RUN_NAMES}, e.g. runs=cl,ncl")
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective={self.objective!r}; expected one of {OBJECTIVES}")
        check_mode(self.nonneg, argument="nonneg")
        for name in ("drop_edge", "mask_feature"):
            if len(getattr(self, name)) != 2:
                raise ValueError(f"{name}={getattr(self, name)!r}; expected two rates, one per view, e.g. 0.2,0.4")
        if not (0 < self.train_fraction and 0 < self.val_fraction and self.train_fraction + self.val_fraction < 1):
            raise ValueError(
                f"train_fraction={self.train_fraction!r}, val_fraction={self.val_fraction!r}; "
                "expected positive fractions that leave test nodes (sum < 1)"
            )
        if self.eval_splits < 1 or not self.inverse_regularization:
            raise ValueError("eval_splits must be >= 1 and inverse_regularization must list at least one value")


#: Named presets: overrides of :class:`Config`. Planetoid values: GRACE's config.yaml;
#: Amazon / Coauthor values: GCA's param/*.json (GRACE's paper has no such datasets).
PRESETS: dict[str, dict[str, Any]] = {
    SYNTHETIC: dict(dataset=SYNTHETIC, hidden=64, projection_hidden=64, epochs=100, lr=1e-3, temperature=0.5),
    "cora": dict(
        dataset="cora", lr=5e-4, hidden=128, projection_hidden=128, activation="relu",
        drop_edge=(0.2, 0.4), mask_feature=(0.3, 0.4), temperature=0.4, epochs=200, weight_decay=1e-5,
    ),
    "citeseer": dict(
        dataset="citeseer", lr=1e-3, hidden=256, projection_hidden=256, activation="prelu",
        drop_edge=(0.2, 0.0), mask_feature=(0.3, 0.2), temperature=0.9, epochs=200, weight_decay=1e-5,
    ),
    "pubmed": dict(
        dataset="pubmed", lr=1e-3, hidden=256, projection_hidden=256, activation="relu",
        drop_edge=(0.4, 0.1), mask_feature=(0.0, 0.2), temperature=0.7, epochs=1500, weight_decay=1e-5,
        chunk_size=4096,
    ),
    "amazon-computers": dict(
        dataset="amazon-computers", lr=1e-2, hidden=128, projection_hidden=128, activation="rrelu",
        drop_edge=(0.6, 0.3), mask_feature=(0.2, 0.3), temperature=0.2, epochs=2000, weight_decay=1e-5,
        chunk_size=4096,
    ),
    "amazon-photo": dict(
        dataset="amazon-photo", lr=1e-1, hidden=256, projection_hidden=64, activation="relu",
        drop_edge=(0.3, 0.5), mask_feature=(0.1, 0.1), temperature=0.3, epochs=2000, weight_decay=1e-5,
        chunk_size=4096,
    ),
    "coauthor-cs": dict(
        dataset="coauthor-cs", lr=5e-4, hidden=256, projection_hidden=256, activation="rrelu",
        drop_edge=(0.3, 0.2), mask_feature=(0.3, 0.4), temperature=0.4, epochs=1000, weight_decay=1e-5,
        chunk_size=4096,
    ),
}
DEFAULT_PRESET = SYNTHETIC


def run(config: Config, output: Path) -> dict[str, dict[str, Any]]:
    """Train and evaluate every run in ``config.runs`` on one graph; return their metrics."""
    accelerator = make_accelerator(config.device)
    graph = load_graph(config, output).to(accelerator.device)
    accelerator.print(
        f"graph {config.dataset}: {graph.num_nodes} nodes, {graph.num_edges} edges, "
        f"{graph.num_features} features, {int(graph.y.max()) + 1} classes"
    )
    results = {}
    for name in config.runs:
        model = _train(config, name, graph, accelerator, output / name)
        results[name] = evaluate(config, model, graph)
        accelerator.print(
            f"[{name}] node accuracy {results[name]['node_acc_mean']:.4f} ± {results[name]['node_acc_std']:.4f}, "
            f"sparsity {results[name]['sparsity']:.4f}"
        )
    return results


def load_graph(config: Config, output: Path) -> Any:
    """The generated graph, or the benchmark graph copied from ``data_root`` into ``output/data``."""
    if config.dataset == SYNTHETIC:
        return planted_partition_graph(
            num_nodes=config.num_nodes, num_classes=config.num_classes, num_features=config.num_features,
            seed=config.seed,
        )
    if config.data_root is None:
        raise ValueError(
            f"dataset={config.dataset!r} needs --data-root: a folder holding "
            f"{GRAPH_DATASETS[config.dataset].folder}/raw/{GRAPH_DATASETS[config.dataset].raw_files[0]}"
        )
    return load_graph_dataset(config.dataset, config.data_root, output / "data", config.normalize_features)


class WholeGraph:
    """A :class:`ncl_ext.training.BatchSource` of one batch per epoch: the whole graph (full-batch GRACE)."""

    def __init__(self, graph: Any) -> None:
        self.graph = graph

    def __len__(self) -> int:
        return 1

    def batches(self, epoch: int, start: int = 0) -> Iterator[Any]:
        if start == 0:
            yield self.graph


def _train(config: Config, name: str, graph: Any, accelerator: Any, output: Path) -> GRACE:
    seed_everything(config.seed)  # CL and NCL start from the same weights and draw the same views
    encoder = GCNEncoder(graph.num_features, config.hidden, config.num_layers, config.activation)
    views = tuple(GraphAugmentation(edge, feature) for edge, feature in zip(config.drop_edge, config.mask_feature))
    model = GRACE(
        encoder, projection_hidden=config.projection_hidden, nonneg=config.nonneg if name == "ncl" else None,
        temperature=config.temperature, views=views, objective=config.objective, chunk_size=config.chunk_size,
    )

    def compute_loss(model: GRACE, batch: Any) -> dict[str, torch.Tensor]:
        return model.training_step(batch.x, batch.edge_index)

    train_config = TrainConfig(
        epochs=config.epochs, lr=config.lr, optimizer="adamw", weight_decay=config.weight_decay,
        warmup_epochs=0, min_lr=0.0 if config.cosine_decay else config.lr, max_grad_norm=config.max_grad_norm,
        seed=config.seed,
        checkpoint_every=max(1, config.epochs // 4), log_every=max(1, config.epochs // 20),
    )
    accelerator.print(f"[{name}] training GRACE with nonneg={model.nonneg!r} for {config.epochs} epochs")
    trainer = Trainer(model, compute_loss, WholeGraph(graph), train_config, output, accelerator=accelerator)
    return trainer.fit().model


def evaluate(config: Config, model: GRACE, graph: Any) -> dict[str, Any]:
    """Node classification on the embeddings and the feature report of the head outputs."""
    embeddings = model.embed(graph.x, graph.edge_index).cpu()
    head = model.head_features(graph.x, graph.edge_index).cpu()
    labels = graph.y.cpu()
    splits = random_splits(len(labels), config.train_fraction, config.val_fraction, config.eval_splits, config.seed)
    accuracies = [node_classification(embeddings, labels, split, config.inverse_regularization) for split in splits]
    head_accuracies = [node_classification(head, labels, split, config.inverse_regularization) for split in splits]
    metrics: dict[str, Any] = {
        "node_acc_mean": float(np.mean(accuracies)),
        "node_acc_std": float(np.std(accuracies)),
    }
    if "train_mask" in graph:
        public = tuple(graph[mask].cpu().nonzero().flatten() for mask in ("train_mask", "val_mask", "test_mask"))
        metrics["public_split_acc"] = node_classification(embeddings, labels, public, config.inverse_regularization)
    report = analysis.feature_report(head, labels)
    for key in ("sparsity", "semantic_consistency", "correlation", "effective_rank", "active_dims", "dead_dims"):
        metrics[key] = report[key]
    metrics["head_acc_mean"] = float(np.mean(head_accuracies))
    metrics["node_accs"] = [float(a) for a in accuracies]
    return metrics


def random_splits(
    num_nodes: int, train_fraction: float, val_fraction: float, count: int, seed: int
) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """``count`` random ``(train, val, test)`` node index splits (GRACE: 10% / 10% / 80%)."""
    generator = torch.Generator().manual_seed(seed)
    train_size, val_size = round(train_fraction * num_nodes), round(val_fraction * num_nodes)
    splits = []
    for _ in range(count):
        order = torch.randperm(num_nodes, generator=generator)
        splits.append((order[:train_size], order[train_size : train_size + val_size], order[train_size + val_size :]))
    return splits


def node_classification(
    features: torch.Tensor,
    labels: torch.Tensor,
    split: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    inverse_regularization: tuple[float, ...],
) -> float:
    """Test accuracy of GRACE's probe: logistic regression on L2-normalised features.

    GRACE's classifier, scikit-learn's one-vs-rest ``liblinear`` logistic regression, is
    fitted on the training nodes for each ``C`` (inverse L2 strength) in
    ``inverse_regularization``; the one most accurate on the validation nodes is scored on
    the test nodes.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier

    x = torch.nn.functional.normalize(features.double(), dim=1).numpy()
    y = labels.numpy()
    train, val, test = (index.numpy() for index in split)
    best_score, best_model = -1.0, None
    for c in inverse_regularization:
        model = OneVsRestClassifier(LogisticRegression(C=c, solver="liblinear")).fit(x[train], y[train])
        score = model.score(x[val], y[val])
        if score > best_score:
            best_score, best_model = score, model
    return float(best_model.score(x[test], y[test]))
