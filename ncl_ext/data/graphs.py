"""Graphs for node-level contrastive learning: a generated default and the standard benchmarks.

Two sources of one ``torch_geometric.data.Data`` graph (``x``, ``edge_index``, ``y``):

- :func:`planted_partition_graph`, generated offline: a stochastic block model with
  planted communities (one per class) and bag-of-words-like node features whose
  "topic" depends on the class. Features alone and edges alone are both informative
  but noisy, as on citation graphs.
- :func:`load_graph_dataset`: Planetoid (Cora, CiteSeer, PubMed), Amazon (Computers,
  Photo) and Coauthor (CS) from a local folder of the raw files PyG reads. The folder
  may be read-only (a shared data volume): the raw files are copied into a writable
  ``work_dir`` and PyG processes the copy there, offline.

These are the node-classification benchmarks of GRACE (Zhu et al., "Deep Graph
Contrastive Representation Learning", 2020) and of its successor GCA.

Examples:
    >>> from ncl_ext.data.graphs import planted_partition_graph
    >>> graph = planted_partition_graph(num_nodes=60, num_classes=3, num_features=30, seed=0)
    >>> graph.num_nodes, graph.x.shape[1], int(graph.y.max()) + 1
    (60, 30, 3)
    >>> graph = load_graph_dataset("cora", "shared/data/planetoid", "runs/work")   # doctest: +SKIP
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from torch_geometric.data import Data

__all__ = [
    "GRAPH_DATASETS",
    "GraphDatasetSpec",
    "WholeGraph",
    "load_graph_dataset",
    "planted_partition_graph",
    "random_node_splits",
]


@dataclass(frozen=True)
class GraphDatasetSpec:
    """Where PyG looks for one dataset: its class, its name argument, folder and raw files."""

    pyg_class: str  # class name in torch_geometric.datasets
    pyg_name: str  # the ``name`` argument of that class
    folder: str  # PyG's folder under the root: ROOT/FOLDER/raw
    raw_files: tuple[str, ...]


def _planetoid(name: str) -> GraphDatasetSpec:
    parts = ("x", "tx", "allx", "y", "ty", "ally", "graph", "test.index")
    return GraphDatasetSpec("Planetoid", name, name, tuple(f"ind.{name.lower()}.{p}" for p in parts))


#: Dataset names accepted by :func:`load_graph_dataset`.
GRAPH_DATASETS: dict[str, GraphDatasetSpec] = {
    "cora": _planetoid("Cora"),
    "citeseer": _planetoid("CiteSeer"),
    "pubmed": _planetoid("PubMed"),
    "amazon-computers": GraphDatasetSpec("Amazon", "Computers", "Computers", ("amazon_electronics_computers.npz",)),
    "amazon-photo": GraphDatasetSpec("Amazon", "Photo", "Photo", ("amazon_electronics_photo.npz",)),
    "coauthor-cs": GraphDatasetSpec("Coauthor", "CS", "CS", ("ms_academic_cs.npz",)),
}


def planted_partition_graph(
    num_nodes: int = 800,
    num_classes: int = 5,
    num_features: int = 200,
    p_in: float = 0.04,
    p_out: float = 0.002,
    topic_rate: float = 0.10,
    noise_rate: float = 0.03,
    seed: int = 0,
) -> Data:
    """A graph with planted communities and class-dependent binary features.

    Nodes are split into ``num_classes`` equal communities; an edge joins two nodes of
    the same community with probability ``p_in`` and of different ones with ``p_out``
    (a stochastic block model). The features are split into ``num_classes`` topic
    blocks: a feature of the node's own topic is on with probability ``topic_rate``,
    any other feature with ``noise_rate``. (PyG's ``StochasticBlockModelDataset`` draws its
    features with scikit-learn's ``make_classification`` and fails with scikit-learn 1.9,
    so only PyG's edge sampler is used here.)

    Args:
        num_nodes: number of nodes (>= num_classes).
        num_classes: number of communities, which are also the node labels.
        num_features: feature dimension (>= num_classes).
        p_in: edge probability within a community.
        p_out: edge probability across communities.
        topic_rate: probability that a feature of the node's own topic is 1.
        noise_rate: probability that any other feature is 1.
        seed: the graph is a deterministic function of the arguments.

    Returns:
        ``Data(x=float (N, F), edge_index=(2, E) undirected, y=long (N,))``.

    Examples:
        >>> graph = planted_partition_graph(num_nodes=90, num_classes=3, num_features=12, seed=1)
        >>> graph.is_undirected(), graph.y.bincount().tolist()
        (True, [30, 30, 30])
    """
    from torch_geometric.data import Data
    from torch_geometric.utils import stochastic_blockmodel_graph

    if num_classes < 2:
        raise ValueError(f"num_classes={num_classes!r}; expected an integer >= 2")
    if num_nodes < num_classes:
        raise ValueError(f"num_nodes={num_nodes!r}; expected at least num_classes={num_classes} nodes")
    if num_features < num_classes:
        raise ValueError(f"num_features={num_features!r}; expected at least num_classes={num_classes} features")
    for name, value in (("p_in", p_in), ("p_out", p_out), ("topic_rate", topic_rate), ("noise_rate", noise_rate)):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{name}={value!r}; expected a probability in [0, 1]")

    block_sizes = [len(part) for part in torch.arange(num_nodes).tensor_split(num_classes)]
    labels = torch.repeat_interleave(torch.arange(num_classes), torch.tensor(block_sizes))
    edge_probs = torch.full((num_classes, num_classes), p_out).fill_diagonal_(p_in)
    topic_of_feature = torch.arange(num_features) * num_classes // num_features
    on_topic = labels[:, None] == topic_of_feature[None, :]
    rates = torch.where(on_topic, topic_rate, noise_rate)
    # PyG's block-model sampler draws from the global generator: fork it so that the
    # graph depends on ``seed`` only and the caller's random state is left untouched.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        edge_index = stochastic_blockmodel_graph(block_sizes, edge_probs)
        features = torch.bernoulli(rates)
    return Data(x=features, edge_index=edge_index, y=labels)


def load_graph_dataset(
    name: str,
    data_root: str | os.PathLike,
    work_dir: str | os.PathLike,
    normalize_features: bool = True,
) -> Data:
    """Load a benchmark graph from the raw files under ``data_root``, never writing there.

    The raw files are looked up in ``DATA_ROOT/FOLDER/raw`` (PyG's own layout, e.g.
    ``planetoid/Cora/raw/ind.cora.x``), ``DATA_ROOT/FOLDER`` or ``DATA_ROOT`` itself,
    with FOLDER matched case-insensitively. They are copied to ``WORK_DIR/FOLDER/raw``,
    where PyG processes them (once; later calls reuse the processed file).

    Args:
        name: one of :data:`GRAPH_DATASETS` (``cora``, ``citeseer``, ``pubmed``,
            ``amazon-computers``, ``amazon-photo``, ``coauthor-cs``).
        data_root: folder holding the raw files (may be read-only).
        work_dir: a writable folder for the copy and PyG's processed files.
        normalize_features: row-normalise the features to sum 1 (PyG's
            ``NormalizeFeatures``, as GRACE does).

    Returns:
        The graph as ``Data``; Planetoid graphs keep their public ``train_mask``,
        ``val_mask`` and ``test_mask``.

    Raises:
        ValueError: unknown ``name``, or raw files that PyG cannot read.
        FileNotFoundError: ``data_root`` or the raw files are missing.
    """
    import torch_geometric.datasets
    import torch_geometric.transforms as T

    if name not in GRAPH_DATASETS:
        raise ValueError(f"dataset={name!r} is unknown; expected one of {sorted(GRAPH_DATASETS)}")
    spec = GRAPH_DATASETS[name]
    source = _find_raw_folder(spec, Path(data_root))
    work_dir = Path(work_dir)
    raw_copy = work_dir / spec.folder / "raw"
    raw_copy.mkdir(parents=True, exist_ok=True)
    for file_name in spec.raw_files:
        target = raw_copy / file_name
        if not target.exists() or target.stat().st_size != (source / file_name).stat().st_size:
            shutil.copyfile(source / file_name, target)  # copyfile: the copy is writable even if the source is not

    dataset_class = getattr(torch_geometric.datasets, spec.pyg_class)
    transform = T.NormalizeFeatures() if normalize_features else None
    try:
        dataset = dataset_class(str(work_dir), spec.pyg_name, transform=transform)
    except Exception as error:  # PyG raises many kinds (pickle, numpy, zip) on a damaged file
        raise ValueError(
            f"could not read the {spec.pyg_name} raw files in {source} ({type(error).__name__}: {error}); "
            f"expected the original files {', '.join(spec.raw_files)}"
        ) from error
    return dataset[0]


def _find_raw_folder(spec: GraphDatasetSpec, data_root: Path) -> Path:
    if not data_root.is_dir():
        raise FileNotFoundError(
            f"data_root={str(data_root)!r} is not a folder; point --data-root at the folder holding "
            f"{spec.folder}/raw/{spec.raw_files[0]}"
        )
    folders = [p for p in data_root.iterdir() if p.is_dir() and p.name.lower() == spec.folder.lower()]
    candidates = [c for folder in folders for c in (folder / "raw", folder)] + [data_root / "raw", data_root]
    for candidate in candidates:
        if all((candidate / file_name).is_file() for file_name in spec.raw_files):
            return candidate
    partial = [c for c in candidates if any((c / f).is_file() for f in spec.raw_files)]
    if partial:
        missing = [f for f in spec.raw_files if not (partial[0] / f).is_file()]
        raise FileNotFoundError(f"{partial[0]} lacks the {spec.pyg_name} raw file(s) {', '.join(missing)}")
    raise FileNotFoundError(
        f"no {spec.pyg_name} raw files under data_root={str(data_root)!r}; expected "
        f"{data_root / spec.folder / 'raw' / spec.raw_files[0]} (PyG's layout) or the files directly in the folder"
    )


def random_node_splits(
    num_nodes: int, train_fraction: float, val_fraction: float, count: int, seed: int
) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """``count`` random ``(train, validation, test)`` node index splits (GRACE: 10% / 10% / 80%).

    Examples:
        >>> [len(part) for part in random_node_splits(100, 0.1, 0.1, count=1, seed=0)[0]]
        [10, 10, 80]
    """
    generator = torch.Generator().manual_seed(seed)
    train_size, val_size = round(train_fraction * num_nodes), round(val_fraction * num_nodes)
    splits = []
    for _ in range(count):
        order = torch.randperm(num_nodes, generator=generator)
        splits.append((order[:train_size], order[train_size : train_size + val_size], order[train_size + val_size :]))
    return splits


class WholeGraph:
    """A :class:`ncl_ext.training.BatchSource` of one batch per epoch: the whole graph (full-batch training).

    Examples:
        >>> source = WholeGraph("graph")
        >>> len(source), list(source.batches(epoch=0))
        (1, ['graph'])
    """

    def __init__(self, graph: Any) -> None:
        self.graph = graph

    def __len__(self) -> int:
        return 1

    def batches(self, epoch: int, start: int = 0) -> Iterator[Any]:
        if start == 0:
            yield self.graph
