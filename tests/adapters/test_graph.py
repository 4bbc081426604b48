"""Graph contrastive learning: GRACE model and losses, graph data, and the graph recipe."""

import json
import shutil
import stat
from pathlib import Path

import numpy as np
import pytest
import torch
from torch_geometric.datasets import KarateClub
from torch_geometric.nn import GCNConv
from torch_geometric.nn.models import GraphSAGE

from ncl_ext.adapters.graph import GRACE, GCNEncoder, GraphAugmentation, PyGCLInfoNCE, graph_inputs
from ncl_ext.data.graphs import load_graph_dataset, planted_partition_graph

CORA_RAW = Path(__file__).resolve().parents[3] / "shared" / "data" / "planetoid" / "Cora" / "raw"


# ------------------------------------------------------------------ independent references


def grace_loss_reference(h1: np.ndarray, h2: np.ndarray, tau: float) -> float:
    """GRACE's objective written out node by node (Zhu et al. 2020, eq. 1-2).

    For node i of view 1: positive (h1_i, h2_i); negatives h2_j (j != i, inter-view) and
    h1_j (j != i, intra-view). The loss averages both directions over all nodes.
    """

    def cos(a, b):
        return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))

    def semi(u, v, i):
        positive = np.exp(cos(u[i], v[i]) / tau)
        inter = sum(np.exp(cos(u[i], v[j]) / tau) for j in range(len(u)))
        intra = sum(np.exp(cos(u[i], u[j]) / tau) for j in range(len(u)) if j != i)
        return -np.log(positive / (inter + intra))

    n = len(h1)
    return sum(0.5 * (semi(h1, h2, i) + semi(h2, h1, i)) for i in range(n)) / n


def spectral_loss_reference(u1: np.ndarray, u2: np.ndarray) -> float:
    """``-2 E[u.u+] + E[(u.u-)^2]``, negatives = every view of every other node, by loops."""
    views = np.concatenate([u1, u2])
    n = len(u1)
    attraction = -2 * np.mean([u1[i] @ u2[i] for i in range(n)])
    negatives = [
        (views[a] @ views[b]) ** 2
        for a in range(2 * n)
        for b in range(2 * n)
        if b != a and b != (a + n) % (2 * n)
    ]
    return attraction + float(np.mean(negatives))


def gcn_reference(x: np.ndarray, edge_index: np.ndarray, layers: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """Dense GCN (Kipf & Welling): ``relu(D^-1/2 (A + I) D^-1/2 H W + b)`` per layer, messages src -> dst."""
    n = len(x)
    adjacency = np.zeros((n, n))
    for source, target in edge_index.T:
        adjacency[target, source] = 1.0
    adjacency += np.eye(n)
    inv_sqrt = 1.0 / np.sqrt(adjacency.sum(axis=1))
    normalized = inv_sqrt[:, None] * adjacency * inv_sqrt[None, :]
    h = x
    for weight, bias in layers:
        h = np.maximum(normalized @ h @ weight.T + bias, 0.0)
    return h


@pytest.fixture(scope="module")
def karate():
    return KarateClub()[0]


@pytest.fixture(scope="module")
def generated():
    return planted_partition_graph(num_nodes=120, num_classes=4, num_features=40, p_in=0.15, p_out=0.01, seed=3)


# ------------------------------------------------------------------ model and losses


def test_gcn_encoder_matches_a_dense_gcn(karate):
    torch.manual_seed(0)
    encoder = GCNEncoder(karate.num_features, 8)
    x, edge_index = GraphAugmentation(drop_edge=0.3, mask_feature=0.2)(karate.x, karate.edge_index)  # directed now
    layers = [(linear.weight.detach().double().numpy(), bias.detach().double().numpy())
              for linear, bias in zip(encoder.linears, encoder.biases)]
    assert [w.shape for w, _ in layers] == [(16, karate.num_features), (8, 16)]  # GRACE: in -> 2*out -> out
    expected = gcn_reference(x.double().numpy(), edge_index.numpy(), layers)
    np.testing.assert_allclose(encoder(x, edge_index).detach().double().numpy(), expected, rtol=1e-4, atol=1e-5)
    # Stacked PyG GCNConv layers with the same weights compute the same embeddings.
    convs = [GCNConv(karate.num_features, 16), GCNConv(16, 8)]
    for conv, (weight, bias) in zip(convs, layers):
        conv.lin.weight.data, conv.bias.data = torch.from_numpy(weight).float(), torch.from_numpy(bias).float()
    pyg = torch.relu(convs[1](torch.relu(convs[0](x, edge_index)), edge_index))
    torch.testing.assert_close(encoder(x, edge_index), pyg, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("nonneg", [None, "relu"])
def test_grace_training_loss_equals_the_reference(karate, nonneg):
    torch.manual_seed(0)
    views = (GraphAugmentation(0.2, 0.3), GraphAugmentation(0.4, 0.4))
    model = GRACE(GCNEncoder(karate.num_features, 16), nonneg=nonneg, temperature=0.4, views=views)
    torch.manual_seed(1)
    loss = model.training_step(karate.x, karate.edge_index)["loss"]

    torch.manual_seed(1)  # the same two views, drawn in the same order as training_step draws them
    with torch.no_grad():
        h1 = model.project(model(*views[0](karate.x, karate.edge_index)))
        h2 = model.project(model(*views[1](karate.x, karate.edge_index)))
    expected = grace_loss_reference(h1.double().numpy(), h2.double().numpy(), tau=0.4)
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-5)


def test_ncl_outputs_are_non_negative_and_cl_outputs_are_not(generated):
    torch.manual_seed(0)
    ncl = GRACE(GCNEncoder(generated.num_features, 16), nonneg="relu")
    torch.manual_seed(0)
    cl = GRACE(GCNEncoder(generated.num_features, 16), nonneg=None)
    ncl_out = ncl.training_step(generated.x, generated.edge_index)
    assert (ncl_out["features"] >= 0).all() and (ncl_out["features"] == 0).any()
    assert (ncl.head_features(generated.x, generated.edge_index) >= 0).all()
    assert (cl.head_features(generated.x, generated.edge_index) < 0).any()
    assert ncl.training  # embed / head_features restore the training mode


def test_spectral_objective_equals_the_reference(generated):
    torch.manual_seed(0)
    views = (GraphAugmentation(0.2, 0.3), GraphAugmentation(0.4, 0.4))
    model = GRACE(GCNEncoder(generated.num_features, 8), nonneg="relu", views=views, objective="spectral")
    torch.manual_seed(5)
    loss = model.training_step(generated.x, generated.edge_index)["loss"]
    torch.manual_seed(5)
    with torch.no_grad():
        u1, u2 = (model.project(model(*view(generated.x, generated.edge_index))) for view in views)
    expected = spectral_loss_reference(u1.double().numpy(), u2.double().numpy())
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-4)


def test_training_on_a_generated_graph_lowers_the_loss_with_any_pyg_encoder(generated):
    torch.manual_seed(0)
    model = GRACE(GraphSAGE(generated.num_features, 16, num_layers=2), nonneg="relu", temperature=0.5)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    losses = []
    for _ in range(20):
        loss = model.training_step(generated.x, generated.edge_index)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.1
    assert model.embed(generated.x, generated.edge_index).shape == (generated.num_nodes, 16)


@pytest.mark.parametrize("nonneg", [None, "relu"])
def test_pygcl_adapter_with_intraview_negatives_is_grace(nonneg):
    generator = torch.Generator().manual_seed(0)
    h1, h2 = torch.randn(7, 5, generator=generator), torch.randn(7, 5, generator=generator)
    loss = PyGCLInfoNCE(tau=0.5, nonneg=nonneg)
    # PyGCL's DualBranchContrast(mode="L2L", intraview_negs=True): samples = [other view; own view].
    eye = torch.eye(7)
    pos_mask = torch.cat([eye, torch.zeros(7, 7)], dim=1)
    neg_mask = torch.cat([1 - eye, 1 - eye], dim=1)
    value = 0.5 * (
        loss(anchor=h1, sample=torch.cat([h2, h1]), pos_mask=pos_mask, neg_mask=neg_mask)
        + loss(anchor=h2, sample=torch.cat([h1, h2]), pos_mask=pos_mask, neg_mask=neg_mask)
    )
    u1, u2 = (h.double().numpy() for h in (h1, h2))
    if nonneg == "relu":
        u1, u2 = np.maximum(u1, 0), np.maximum(u2, 0)
    assert float(value) == pytest.approx(grace_loss_reference(u1, u2, tau=0.5), rel=1e-5)
    # PyGCL's defaults (identity positives, everything else negative) are plain inter-view InfoNCE.
    assert float(loss.compute(h1, h2, eye, 1 - eye)) == pytest.approx(float(loss(h1, h2)))


def test_bad_arguments_raise_clear_errors(karate):
    with pytest.raises(ValueError, match="drop_edge"):
        GraphAugmentation(drop_edge=1.5)
    with pytest.raises(ValueError, match="nonneg"):
        GRACE(GCNEncoder(4, 4), nonneg="square")
    with pytest.raises(ValueError, match="objective"):
        GRACE(GCNEncoder(4, 4), objective="triplet")
    with pytest.raises(ValueError, match="embedding_dim"):
        GRACE(torch.nn.Linear(4, 4))
    with pytest.raises(ValueError, match="pos_mask"):
        PyGCLInfoNCE(tau=0.5)(torch.randn(3, 2), torch.randn(3, 2), pos_mask=torch.eye(2))
    with pytest.raises(ValueError, match="temperature"):
        GRACE(GCNEncoder(4, 4), temperature=0.0)


# ------------------------------------------------------------------ graph inputs: Data, Batch, sparse adjacencies


def directed_graph() -> tuple[torch.Tensor, torch.Tensor]:
    """A small directed graph (edges in one direction only), so that a transposed reading would show."""
    generator = torch.Generator().manual_seed(4)
    source = torch.arange(12)
    edge_index = torch.cat([torch.stack([source, (source + 1) % 12]), torch.stack([source[:6], source[:6] + 5])], dim=1)
    return torch.rand(12, 6, generator=generator), edge_index


def sparse_adjacencies(edge_index: torch.Tensor, num_nodes: int) -> dict[str, torch.Tensor]:
    """The transposed adjacency ``adj_t[target, source]`` (PyG's convention) in each torch sparse layout."""
    from torch_geometric.utils import to_torch_coo_tensor

    adj_t = to_torch_coo_tensor(edge_index.flip(0), size=num_nodes)
    return {"coo": adj_t, "csr": adj_t.to_sparse_csr(), "csc": adj_t.to_sparse_csc()}


@pytest.mark.parametrize("layout", ["coo", "csr"])  # PyG's gcn_norm has no CSC
def test_a_sparse_adjacency_is_read_as_pyg_message_passing_reads_it(layout):
    x, edge_index = directed_graph()
    adj_t = sparse_adjacencies(edge_index, len(x))[layout]
    torch.manual_seed(0)
    encoder = GCNEncoder(6, 4, num_layers=1)
    # Independent reference: PyG's own GCNConv given the same sparse adjacency, with the encoder's weights.
    conv = GCNConv(6, 4)
    conv.lin.weight.data, conv.bias.data = encoder.linears[0].weight.data.clone(), encoder.biases[0].data.clone()
    expected = torch.relu(conv(x, adj_t))
    torch.testing.assert_close(encoder(*graph_inputs(x, adj_t)), expected, rtol=1e-5, atol=1e-6)
    assert sorted(map(tuple, graph_inputs(x, adj_t)[1].T.tolist())) == sorted(map(tuple, edge_index.T.tolist()))


@pytest.mark.parametrize("form", ["data", "batch", "data_adj_t", "coo", "csr"])
def test_grace_gives_the_same_loss_and_embeddings_for_every_graph_form(form):
    from torch_geometric.data import Batch, Data

    x, edge_index = directed_graph()
    adjacencies = sparse_adjacencies(edge_index, len(x))
    graph = {
        "data": lambda: (Data(x=x, edge_index=edge_index),),
        "batch": lambda: (Batch.from_data_list([Data(x=x, edge_index=edge_index)]),),
        "data_adj_t": lambda: (Data(x=x, adj_t=adjacencies["coo"]),),
        "coo": lambda: (x, adjacencies["coo"]),
        "csr": lambda: (x, adjacencies["csr"]),
    }[form]()
    # The views drop each edge with a random draw in edge order: a sparse adjacency stores its
    # edges sorted by (target, source), so its reference is edge_index in that order.
    by_target = (edge_index[1] * len(x) + edge_index[0]).argsort()
    reference = edge_index if form in ("data", "batch") else edge_index[:, by_target]
    torch.manual_seed(0)
    model = GRACE(GCNEncoder(6, 8), nonneg="relu", temperature=0.5)
    torch.manual_seed(1)
    expected_loss = model.training_step(x, reference)["loss"]
    torch.manual_seed(1)
    loss = model.training_step(*graph)["loss"]
    torch.testing.assert_close(loss, expected_loss)
    torch.testing.assert_close(model.embed(*graph), model.embed(x, edge_index))
    torch.testing.assert_close(model.head_features(*graph), model.head_features(x, edge_index))


def test_torch_sparse_sparse_tensor_is_read_transposed():
    torch_sparse = pytest.importorskip("torch_sparse")
    x, edge_index = directed_graph()
    adj_t = torch_sparse.SparseTensor(row=edge_index[1], col=edge_index[0], sparse_sizes=(len(x), len(x)))
    torch.manual_seed(0)
    encoder = GCNEncoder(6, 4)
    torch.testing.assert_close(encoder(*graph_inputs(x, adj_t)), encoder(x, edge_index))


def test_bad_graph_inputs_raise_clear_errors():
    from torch_geometric.utils import to_torch_coo_tensor

    x, edge_index = directed_graph()
    with pytest.raises(ValueError, match="Data / Batch"):
        graph_inputs(x)
    with pytest.raises(ValueError, match="edge_index must be a \\(2, num_edges\\)"):
        graph_inputs(x, edge_index.T)
    with pytest.raises(ValueError, match="x must be"):
        graph_inputs(x[0], edge_index)
    with pytest.raises(ValueError, match="adjacency must be"):
        graph_inputs(x, [[0, 1], [1, 0]])
    with pytest.raises(ValueError, match="num_nodes, num_nodes"):
        graph_inputs(x, to_torch_coo_tensor(edge_index, size=20))
    with pytest.raises(ValueError, match="edge weights"):
        graph_inputs(x, to_torch_coo_tensor(edge_index, torch.full((edge_index.shape[1],), 0.5), size=12))


# ------------------------------------------------------------------ data


def test_generated_graph_has_planted_communities_and_class_dependent_features():
    graph = planted_partition_graph(num_nodes=300, num_classes=3, num_features=60, seed=7)
    again = planted_partition_graph(num_nodes=300, num_classes=3, num_features=60, seed=7)
    assert torch.equal(graph.edge_index, again.edge_index) and torch.equal(graph.x, again.x)
    assert graph.is_undirected() and graph.y.bincount().tolist() == [100, 100, 100]
    source, target = graph.edge_index
    assert (graph.y[source] == graph.y[target]).float().mean() > 0.7  # homophily of the planted partition
    topic = torch.arange(60) * 3 // 60
    on_topic = graph.x[graph.y[:, None] == topic[None, :]].mean()
    off_topic = graph.x[graph.y[:, None] != topic[None, :]].mean()
    assert on_topic > 2 * off_topic
    with pytest.raises(ValueError, match="p_in"):
        planted_partition_graph(p_in=2.0)


@pytest.fixture
def read_only_planetoid(tmp_path):
    """A copy of the real Cora raw files in a folder (and files) made read-only."""
    if not CORA_RAW.is_dir():
        pytest.skip(f"the Cora raw files are not at {CORA_RAW}")
    source = tmp_path / "planetoid"
    shutil.copytree(CORA_RAW, source / "Cora" / "raw")
    for path in [*source.rglob("*"), source]:
        path.chmod(stat.S_IREAD | (stat.S_IEXEC if path.is_dir() else 0))
    yield source
    for path in [source, *source.rglob("*")]:
        path.chmod(stat.S_IRWXU)


def test_planetoid_loads_from_a_read_only_folder_without_writing_there(read_only_planetoid, tmp_path):
    before = sorted(p.relative_to(read_only_planetoid) for p in read_only_planetoid.rglob("*"))
    graph = load_graph_dataset("cora", read_only_planetoid, tmp_path / "work")
    assert (graph.num_nodes, graph.num_features, int(graph.y.max()) + 1) == (2708, 1433, 7)
    assert int(graph.train_mask.sum()) == 140 and int(graph.test_mask.sum()) == 1000
    torch.testing.assert_close(graph.x.sum(1), torch.ones(2708))  # NormalizeFeatures, as GRACE
    assert sorted(p.relative_to(read_only_planetoid) for p in read_only_planetoid.rglob("*")) == before
    assert (tmp_path / "work" / "Cora" / "processed").is_dir()


def test_missing_or_malformed_data_roots_fail_with_one_line_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a folder"):
        load_graph_dataset("cora", tmp_path / "nowhere", tmp_path / "work")
    with pytest.raises(FileNotFoundError, match="ind.cora.x"):
        load_graph_dataset("cora", tmp_path, tmp_path / "work")
    raw = tmp_path / "broken" / "Cora" / "raw"
    raw.mkdir(parents=True)
    for name in ("x", "tx", "allx", "y", "ty", "ally", "graph", "test.index"):
        (raw / f"ind.cora.{name}").write_bytes(b"not a pickle")
    with pytest.raises(ValueError, match="could not read the Cora raw files"):
        load_graph_dataset("cora", tmp_path / "broken", tmp_path / "work")
    with pytest.raises(ValueError, match="dataset"):
        load_graph_dataset("ogbn-arxiv", tmp_path, tmp_path / "work")


# ------------------------------------------------------------------ recipe


QUICK = ["epochs=3", "eval_splits=2", "hidden=16", "projection_hidden=16", "inverse_regularization=1,16"]


def test_recipe_runs_cl_and_ncl_on_a_read_only_planetoid_copy(read_only_planetoid, tmp_path):
    from ncl_ext.recipes import run_recipe

    results = run_recipe(
        "graph-contrastive", preset="cora", data_root=str(read_only_planetoid), overrides=QUICK,
        output=tmp_path / "out", device="cpu",
    )
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved["runs"] == results["runs"] and saved["config"]["temperature"] == 0.4
    for name in ("cl", "ncl"):
        metrics = results["runs"][name]
        for key in ("node_acc_mean", "node_acc_std", "public_split_acc", "sparsity", "semantic_consistency"):
            assert 0.0 <= metrics[key] <= 1.0, (name, key)
        assert metrics["node_acc_mean"] > 1 / 7  # better than chance after 3 epochs on Cora's features
    assert results["runs"]["ncl"]["sparsity"] > results["runs"]["cl"]["sparsity"]
    assert (tmp_path / "out" / "data" / "Cora" / "raw" / "ind.cora.x").is_file()


def test_default_recipe_runs_offline_on_the_generated_graph(tmp_path):
    from ncl_ext.recipes import run_recipe

    overrides = QUICK + ["num_nodes=150", "num_features=40"]
    results = run_recipe("graph-contrastive", overrides=overrides, output=tmp_path, device="cpu")
    assert results["preset"] == "synthetic" and set(results["runs"]) == {"cl", "ncl"}
    assert "public_split_acc" not in results["runs"]["cl"]
    assert results["runs"]["ncl"]["sparsity"] > 0.3 and results["runs"]["cl"]["sparsity"] < 0.05


def test_ncl_run_gets_its_own_temperature_and_head_width(tmp_path):
    from ncl_ext.recipes import graph_contrastive
    from ncl_ext.recipes.runner import resolve_config

    overrides = [*QUICK, "num_nodes=60", "num_features=20", "temperature=0.4", "ncl_temperature_scale=0.5",
                 "ncl_projection_scale=2", "epochs=1"]
    config, _ = resolve_config("graph-contrastive", overrides=overrides, device="cpu")
    context = graph_contrastive.prepare(config, tmp_path)
    cl = graph_contrastive.train(config, "cl", context, tmp_path / "cl")
    ncl = graph_contrastive.train(config, "ncl", context, tmp_path / "ncl")
    assert cl.loss.temperature == pytest.approx(0.4) and ncl.loss.temperature == pytest.approx(0.2)
    assert cl.nonneg is None and ncl.nonneg == "relu"
    assert cl.head_features(context.graph).shape[1] == 16 and ncl.head_features(context.graph).shape[1] == 32
    # The encoders (what the node probe sees) keep GRACE's size and start from the same weights.
    assert cl.embed(context.graph).shape == ncl.embed(context.graph).shape == (60, 16)
    metrics = graph_contrastive.evaluate(config, "ncl", ncl, context, tmp_path / "ncl")
    assert 0.0 <= metrics["node_val_acc_mean"] <= 1.0
    assert metrics["active_dims"] + metrics["dead_dims"] == 32


def test_cli_reports_a_missing_data_root_on_one_line(capsys, tmp_path):
    from ncl_ext.cli import main

    assert main(["run", "graph-contrastive", "--preset", "cora", "--output", str(tmp_path)]) == 2
    assert "--data-root" in capsys.readouterr().err
    assert main(["run", "graph-contrastive", "--preset", "cora", "--data-root", str(tmp_path / "none")]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("ncl-ext: error:") and "\n" not in error
