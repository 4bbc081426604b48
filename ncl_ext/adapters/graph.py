"""Graph contrastive learning (GRACE) with a non-negative head, around any PyG encoder.

GRACE (Zhu, Xu, Yu, Liu, Wu, Wang, "Deep Graph Contrastive Representation Learning",
ICML GRL+ workshop 2020, arXiv:2006.04131) learns node embeddings by contrasting two
corrupted views of one graph: each view drops edges and masks feature columns; a GNN
encoder and a small projector map both views, and node ``i`` of one view must pick out
node ``i`` of the other among all other nodes of *both* views (inter- and intra-view
negatives). That objective is InfoNCE / NT-Xent with a ``2N - 1`` denominator, so
:class:`ncl_ext.losses.InfoNCELoss` computes it.

Non-negative Contrastive Learning (Wang, Zhang, Guo, Wang, ICLR 2024, arXiv:2403.12459)
adds one thing: a non-negative map (``NonNegative``) on the projector output, before the
loss. ``nonneg=None`` is GRACE; ``nonneg="relu"`` is its NCL version, whose output
features are sparse and whose dimensions tend to fire for one class each.

Also here: :class:`PyGCLInfoNCE`, the same (optionally non-negative) InfoNCE behind the
PyGCL loss contract ``compute(anchor, sample, pos_mask, neg_mask)``, for people whose
pipeline is built on PyGCL's ``DualBranchContrast``.

Examples:
    >>> import torch
    >>> from torch_geometric.datasets import KarateClub
    >>> from ncl_ext.adapters.graph import GCNEncoder, GRACE
    >>> graph = KarateClub()[0]
    >>> model = GRACE(GCNEncoder(graph.num_features, 16), nonneg="relu", temperature=0.5)
    >>> out = model.training_step(graph.x, graph.edge_index)
    >>> out["loss"].backward()
    >>> bool((out["features"] >= 0).all())
    True
    >>> model.embed(graph.x, graph.edge_index).shape          # frozen embeddings for probing
    torch.Size([34, 16])
"""

from __future__ import annotations

from itertools import pairwise
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ncl_ext.nonneg import NonNegative, check_mode, nonneg

__all__ = [
    "GRACE", "OBJECTIVES", "GCNEncoder", "GraphAugmentation", "PyGCLInfoNCE", "graph_inputs", "normalized_adjacency",
]

#: The contrastive objectives :class:`GRACE` can train with.
OBJECTIVES = ("infonce", "spectral")


class GraphAugmentation:
    """One GRACE view: drop each edge with ``drop_edge`` and each feature column with ``mask_feature``.

    Uses PyG's ``dropout_edge`` (each directed edge independently, as GRACE does) and
    ``mask_feature(mode="col")`` (the same feature columns zeroed for every node).

    Args:
        drop_edge: probability of removing an edge, in [0, 1).
        mask_feature: probability of zeroing a feature column, in [0, 1).

    Examples:
        >>> x, edge_index = torch.ones(3, 4), torch.tensor([[0, 1, 1, 2], [1, 0, 2, 1]])
        >>> x_view, edges_view = GraphAugmentation(drop_edge=0.5, mask_feature=0.5)(x, edge_index)
        >>> x_view.shape, edges_view.shape[0]
        (torch.Size([3, 4]), 2)
    """

    def __init__(self, drop_edge: float = 0.2, mask_feature: float = 0.3) -> None:
        for name, value in (("drop_edge", drop_edge), ("mask_feature", mask_feature)):
            if not 0.0 <= value < 1.0:
                raise ValueError(f"{name}={value!r}; expected a probability in [0, 1)")
        self.drop_edge, self.mask_feature = drop_edge, mask_feature

    def __call__(self, x: torch.Tensor, edge_index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        from torch_geometric.utils import dropout_edge, mask_feature

        edge_index, _ = dropout_edge(edge_index, p=self.drop_edge)
        x, _ = mask_feature(x, p=self.mask_feature, mode="col")
        return x, edge_index

    def __repr__(self) -> str:
        return f"GraphAugmentation(drop_edge={self.drop_edge}, mask_feature={self.mask_feature})"


class GCNEncoder(nn.Module):
    """GRACE's encoder: ``num_layers`` GCN layers, ``in -> 2*out -> ... -> out``, activation after each.

    Each layer is Kipf & Welling's ``act(A_hat H W + b)`` with ``A_hat = D^-1/2 (A + I) D^-1/2``
    (PyG's ``gcn_norm``), exactly PyG's ``GCNConv`` with its glorot initialisation; GRACE
    applies the activation after every layer, the last one included, and shares one
    activation module between layers (one learned slope for ``"prelu"``). ``A_hat`` of each
    view is built once and applied by ``torch.sparse.mm`` on a COO matrix: the same values
    as stacked ``GCNConv`` layers, about 1.4x faster forward + backward on a CPU.

    Args:
        in_channels: node feature dimension.
        out_channels: embedding dimension (GRACE's ``num_hidden``).
        num_layers: number of GCN layers (GRACE uses 2).
        activation: any name PyG's activation resolver knows (``"relu"``, ``"prelu"``, ...).

    Examples:
        >>> encoder = GCNEncoder(in_channels=8, out_channels=4)
        >>> encoder(torch.randn(5, 8), torch.tensor([[0, 1], [1, 0]])).shape
        torch.Size([5, 4])
    """

    def __init__(self, in_channels: int, out_channels: int, num_layers: int = 2, activation: str = "relu") -> None:
        super().__init__()
        from torch_geometric.nn.dense.linear import Linear
        from torch_geometric.nn.resolver import activation_resolver

        if num_layers < 1:
            raise ValueError(f"num_layers={num_layers!r}; expected an integer >= 1")
        self.out_channels = out_channels
        widths = [in_channels] + [2 * out_channels] * (num_layers - 1) + [out_channels]
        self.linears = nn.ModuleList(
            Linear(width_in, width_out, bias=False, weight_initializer="glorot")
            for width_in, width_out in pairwise(widths)
        )
        self.biases = nn.ParameterList(nn.Parameter(torch.zeros(width)) for width in widths[1:])
        self.activation = activation_resolver(activation)

    def forward(self, x: torch.Tensor, edge_index: torch.Tensor) -> torch.Tensor:
        """Embeddings ``(N, out_channels)`` of the nodes of the graph ``(x, edge_index)``."""
        adjacency = normalized_adjacency(edge_index, num_nodes=x.shape[0])
        for linear, bias in zip(self.linears, self.biases):
            x = self.activation(torch.sparse.mm(adjacency, linear(x)) + bias)
        return x


def normalized_adjacency(edge_index: torch.Tensor, num_nodes: int) -> torch.Tensor:
    """``D^-1/2 (A + I) D^-1/2`` as a sparse COO ``(N, N)`` matrix that multiplies node features.

    Row ``i`` aggregates the messages sent to node ``i`` along ``edge_index[0] -> edge_index[1]``
    (PyG's ``source_to_target`` flow), so directed graphs (a view with dropped edges) are
    propagated as ``GCNConv`` propagates them.
    """
    from torch_geometric.nn.conv.gcn_conv import gcn_norm

    edge_index, weight = gcn_norm(edge_index, None, num_nodes, add_self_loops=True)
    size = (num_nodes, num_nodes)
    # gcn_norm's indices are valid by construction: skip torch's invariant checks.
    return torch.sparse_coo_tensor(edge_index.flip(0), weight, size, check_invariants=False).coalesce()


class GRACE(nn.Module):
    """GRACE around any PyG encoder, with the NCL non-negative head as one argument.

    ``encoder(x, edge_index) -> (N, embedding_dim)`` node embeddings (the ones a linear
    probe evaluates) -> projector ``Linear -> ELU -> Linear`` (GRACE's) -> head
    (``NonNegative(nonneg)``, or nothing for plain GRACE) -> the contrastive objective.

    Args:
        encoder: any module called as ``encoder(x, edge_index)``, e.g. :class:`GCNEncoder`,
            ``torch_geometric.nn.models.GAT``, ``GraphSAGE``.
        embedding_dim: the encoder's output size; read from ``encoder.out_channels`` if omitted.
        projection_hidden: the projector's hidden width (GRACE's ``num_proj_hidden``).
        projection_dim: the projector's output size (default: ``embedding_dim``, as GRACE).
        nonneg: ``None`` for GRACE (CL), or a :data:`ncl_ext.nonneg.MODES` name for NCL.
        temperature: the InfoNCE temperature (GRACE's ``tau``).
        views: the two :class:`GraphAugmentation` views (GRACE's per-view drop rates);
            default: GRACE's Cora rates, edges 0.2 / 0.4 and features 0.3 / 0.4.
        objective: ``"infonce"`` (GRACE's, with inter- and intra-view negatives) or
            ``"spectral"`` (the spectral contrastive loss; with a non-negative head it is
            exactly the NMF objective of NCL).
        chunk_size: compute InfoNCE ``chunk_size`` nodes at a time (large graphs).

    Examples:
        >>> from torch_geometric.nn.models import GraphSAGE
        >>> model = GRACE(GraphSAGE(8, 32, num_layers=2), nonneg="relu", projection_dim=64)
        >>> out = model.training_step(torch.randn(6, 8), torch.tensor([[0, 1, 2], [1, 2, 3]]))
        >>> out["features"].shape
        torch.Size([6, 64])
    """

    def __init__(
        self,
        encoder: nn.Module,
        embedding_dim: int | None = None,
        projection_hidden: int | None = None,
        projection_dim: int | None = None,
        nonneg: str | None = None,
        temperature: float = 0.5,
        views: tuple[GraphAugmentation, GraphAugmentation] | None = None,
        objective: str = "infonce",
        chunk_size: int | None = None,
    ) -> None:
        super().__init__()
        from ncl_ext.losses import InfoNCELoss, SpectralContrastiveLoss

        embedding_dim = embedding_dim or getattr(encoder, "out_channels", None)
        if not isinstance(embedding_dim, int) or embedding_dim < 1:
            raise ValueError(
                f"embedding_dim={embedding_dim!r}; pass the encoder's output size (it has no int out_channels)"
            )
        if objective not in OBJECTIVES:
            raise ValueError(f"objective={objective!r}; expected one of {OBJECTIVES}")
        views = views or (GraphAugmentation(0.2, 0.3), GraphAugmentation(0.4, 0.4))
        if len(views) != 2 or not all(isinstance(v, GraphAugmentation) for v in views):
            raise ValueError(f"views={views!r}; expected two GraphAugmentation objects")
        check_mode(nonneg, argument="nonneg", allow_none=True)
        projection_hidden = projection_hidden or embedding_dim
        projection_dim = projection_dim or embedding_dim

        self.encoder = encoder
        self.projector = nn.Sequential(
            nn.Linear(embedding_dim, projection_hidden), nn.ELU(), nn.Linear(projection_hidden, projection_dim)
        )
        self.nonneg = nonneg
        self.head = NonNegative(nonneg) if nonneg is not None else nn.Identity()
        self.views = views
        self.objective = objective
        # The head already made the features non-negative: the loss itself stays plain.
        if objective == "infonce":
            self.loss = InfoNCELoss(temperature=temperature, chunk_size=chunk_size)
        else:
            self.loss = SpectralContrastiveLoss()

    def forward(self, x: Any, edge_index: Any = None) -> torch.Tensor:
        """Node embeddings ``(N, embedding_dim)``: the encoder output, before projector and head.

        Takes ``(x, edge_index)``, a PyG ``Data`` / ``Batch`` (``x`` and ``edge_index`` or
        ``adj_t``), or ``x`` with a torch sparse or ``torch_sparse.SparseTensor`` adjacency
        read as PyG reads one, transposed (see :func:`graph_inputs`).
        """
        return self.encoder(*graph_inputs(x, edge_index))

    def project(self, embeddings: torch.Tensor) -> torch.Tensor:
        """The features the objective sees: ``head(projector(embeddings))`` (non-negative under NCL)."""
        return self.head(self.projector(embeddings))

    def training_step(self, x: Any, edge_index: Any = None) -> dict[str, Any]:
        """Draw the two views, encode and project both, and return the objective.

        Takes the graph as :meth:`forward` does. Returns ``{"loss": scalar, "features": head
        output of the first view}`` (the form the shared :class:`ncl_ext.training.Trainer`
        logs feature statistics from).
        """
        x, edge_index = graph_inputs(x, edge_index)
        first, second = (self.project(self(*view(x, edge_index))) for view in self.views)
        return {"loss": self.loss(first, second), "features": first.detach()}

    @torch.no_grad()
    def embed(self, x: Any, edge_index: Any = None) -> torch.Tensor:
        """Embeddings of the uncorrupted graph in eval mode, for a linear probe."""
        was_training = self.training
        self.eval()
        try:
            return self(x, edge_index)
        finally:
            self.train(was_training)

    @torch.no_grad()
    def head_features(self, x: Any, edge_index: Any = None) -> torch.Tensor:
        """Head outputs of the uncorrupted graph: the features NCL makes sparse."""
        return self.project(self.embed(x, edge_index))


def graph_inputs(x: Any, edge_index: Any = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x, edge_index)`` from ``(x, edge_index)``, a PyG ``Data`` / ``Batch``, or ``x`` with a sparse adjacency.

    A sparse adjacency (a torch sparse COO / CSR / CSC tensor or a ``torch_sparse.SparseTensor``,
    as the second argument or as ``data.adj_t``) is read the way PyG's message passing reads
    one: *transposed*, ``adj_t[target, source]`` (what ``ToSparseTensor`` stores and
    ``GCNConv(x, adj_t)`` expects), so the edge ``source -> target`` comes back as the column
    ``(source, target)`` of ``edge_index``. Only the structure is used: an adjacency whose
    stored values are not all 1 (edge weights) is refused rather than silently unweighted.

    Examples:
        >>> from torch_geometric.data import Data
        >>> from torch_geometric.utils import to_torch_coo_tensor
        >>> edge_index = torch.tensor([[0, 1], [1, 2]])             # 0 -> 1 -> 2
        >>> graph_inputs(Data(x=torch.ones(3, 2), edge_index=edge_index))[1].tolist()
        [[0, 1], [1, 2]]
        >>> adj_t = to_torch_coo_tensor(edge_index.flip(0), size=3)  # adj_t[target, source]
        >>> graph_inputs(torch.ones(3, 2), adj_t)[1].tolist()
        [[0, 1], [1, 2]]
    """
    if edge_index is None:
        if not (hasattr(x, "x") and (hasattr(x, "edge_index") or hasattr(x, "adj_t"))):
            raise ValueError(
                "expected (x, edge_index) or a torch_geometric Data / Batch with x and edge_index, "
                f"got {type(x).__name__}"
            )
        x, edge_index = x.x, x.edge_index if getattr(x, "edge_index", None) is not None else x.adj_t
    if not isinstance(x, torch.Tensor) or x.dim() != 2:
        raise ValueError(f"x must be a (num_nodes, num_features) tensor, got {getattr(x, 'shape', type(x).__name__)}")
    if isinstance(edge_index, torch.Tensor) and edge_index.layout == torch.strided:
        if edge_index.dim() != 2 or edge_index.shape[0] != 2:
            raise ValueError(f"edge_index must be a (2, num_edges) tensor, got shape {tuple(edge_index.shape)}")
        return x, edge_index
    from torch_geometric.utils import to_edge_index

    if isinstance(edge_index, torch.Tensor) and edge_index.layout == torch.sparse_coo:
        edge_index = edge_index.coalesce()  # duplicate entries are one edge
    try:
        transposed, values = to_edge_index(edge_index)  # torch sparse (COO / CSR / CSC) or torch_sparse.SparseTensor
    except (TypeError, ValueError, AttributeError, RuntimeError) as error:
        raise ValueError(
            "the adjacency must be an edge_index, a torch sparse tensor or a SparseTensor, "
            f"got {type(edge_index).__name__}"
        ) from error
    # A SparseTensor has sparse_sizes(), a torch sparse tensor a shape.
    size = tuple(edge_index.sparse_sizes() if hasattr(edge_index, "sparse_sizes") else edge_index.shape)
    if size != (x.shape[0], x.shape[0]):
        raise ValueError(f"the adjacency has shape {size}; expected (num_nodes, num_nodes) = {(x.shape[0],) * 2}")
    if values is not None and not bool((values == 1).all()):
        raise ValueError("the adjacency has edge weights (values other than 1); GRACE uses the graph structure only")
    return x, transposed.flip(0)


class PyGCLInfoNCE:
    """InfoNCE behind PyGCL's loss contract, with the NCL ``nonneg`` flag.

    Drop-in for ``GCL.losses.InfoNCE(tau)``: PyGCL's ``DualBranchContrast(loss, mode="L2L",
    intraview_negs=True)`` calls ``loss(anchor=..., sample=..., pos_mask=..., neg_mask=...)``,
    which is GRACE's objective. For every anchor row ``i``::

        loss_i = -mean_{j: pos_mask[i, j]} log( exp(s_ij / tau) / sum_{k: pos or neg} exp(s_ik / tau) )

    with ``s`` the cosine similarity of ``nonneg(anchor)`` and ``nonneg(sample)``; the loss
    is the mean over anchors. Pairs in neither mask are left out.

    Args:
        tau: temperature (> 0).
        nonneg: ``None`` (default) for plain InfoNCE, or a :data:`ncl_ext.nonneg.MODES` name for NCL.

    Examples:
        >>> loss = PyGCLInfoNCE(tau=0.5, nonneg="relu")
        >>> anchor, sample = torch.randn(4, 8), torch.randn(4, 8)
        >>> pos = torch.eye(4)
        >>> bool(loss(anchor=anchor, sample=sample, pos_mask=pos, neg_mask=1 - pos) > 0)
        True
    """

    def __init__(self, tau: float, nonneg: str | None = None) -> None:
        if not tau > 0:
            raise ValueError(f"tau={tau!r}; expected a positive temperature")
        self.tau = tau
        self.nonneg = check_mode(nonneg, argument="nonneg", allow_none=True)

    def compute(
        self,
        anchor: torch.Tensor,
        sample: torch.Tensor,
        pos_mask: torch.Tensor,
        neg_mask: torch.Tensor,
        *args,
        **kwargs,
    ) -> torch.Tensor:
        expected = (anchor.shape[0], sample.shape[0])
        for name, mask in (("pos_mask", pos_mask), ("neg_mask", neg_mask)):
            if tuple(mask.shape) != expected:
                raise ValueError(f"{name} has shape {tuple(mask.shape)}; expected (anchors, samples) = {expected}")
        if not bool((pos_mask.sum(dim=1) > 0).all()):
            raise ValueError("pos_mask has a row without any positive; every anchor needs at least one")
        anchor, sample = nonneg(anchor, self.nonneg), nonneg(sample, self.nonneg)
        logits = F.normalize(anchor, dim=1) @ F.normalize(sample, dim=1).T / self.tau
        contrasted = (pos_mask + neg_mask) > 0
        log_prob = logits - torch.logsumexp(logits.masked_fill(~contrasted, -torch.inf), dim=1, keepdim=True)
        per_anchor = (log_prob * pos_mask).sum(dim=1) / pos_mask.sum(dim=1)
        return -per_anchor.mean()

    def __call__(
        self,
        anchor: torch.Tensor,
        sample: torch.Tensor,
        pos_mask: torch.Tensor | None = None,
        neg_mask: torch.Tensor | None = None,
        *args,
        **kwargs,
    ) -> torch.Tensor:
        """``compute`` with PyGCL's defaults: ``pos_mask`` = identity, ``neg_mask`` = ``1 - pos_mask``."""
        if pos_mask is None:
            pos_mask = torch.eye(anchor.shape[0], sample.shape[0], device=anchor.device)
        if neg_mask is None:
            neg_mask = 1.0 - pos_mask
        return self.compute(anchor, sample, pos_mask, neg_mask, *args, **kwargs)
