"""The latent-class benchmark: data with known ground truth, and the NCL theory checked end to end."""

from __future__ import annotations

import pytest
import torch

from ncl_ext.analysis import LatentClassData, feature_report, sparse_class_features
from ncl_ext.losses import InfoNCELoss
from tests._analysis_threads import one_torch_thread  # noqa: F401  (fixture)


def nearest_anchor_class(data: LatentClassData, x: torch.Tensor) -> torch.Tensor:
    return data.anchor_classes[torch.cdist(x, data.anchors).argmin(1)]


def test_positive_pairs_share_a_latent_class_and_may_come_from_different_anchors() -> None:
    data = LatentClassData(num_classes=6, anchors_per_class=3, input_dim=32, noise=0.3, seed=1)
    x1, x2, classes = data.positive_pairs(500, torch.Generator().manual_seed(0))
    assert torch.equal(nearest_anchor_class(data, x1), classes)
    assert torch.equal(nearest_anchor_class(data, x2), classes)
    same_anchor = torch.cdist(x1, data.anchors).argmin(1) == torch.cdist(x2, data.anchors).argmin(1)
    assert 0.2 < float(same_anchor.float().mean()) < 0.5  # 1/3 expected with 3 anchors per class
    x, labels = data.sample(300, seed=5)
    assert torch.equal(nearest_anchor_class(data, x), labels)
    assert torch.equal(data.sample(300, seed=5)[0], x)


def test_sparse_class_features_have_the_asked_share_of_zeros() -> None:
    features, labels = sparse_class_features(1000, dim=200, num_classes=10, zero_fraction=0.95, seed=2)
    assert float((features == 0).float().mean()) == pytest.approx(0.95)
    assert bool((features >= 0).all())
    assert torch.bincount(labels).tolist() == [100] * 10
    # Samples of a class share more dimensions than samples of different classes.
    active = (features > 0).float()
    overlap = active @ active.T
    same = labels[:, None] == labels[None, :]
    assert float(overlap[same].mean()) > 2 * float(overlap[~same].mean())
    with pytest.raises(ValueError, match="zero_fraction"):
        sparse_class_features(10, zero_fraction=1.0)


def train_encoder(nonneg: str | None, data: LatentClassData, steps: int = 300) -> torch.nn.Module:
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(data.input_dim, 128),
        torch.nn.ReLU(),
        torch.nn.Linear(128, 128),
        torch.nn.ReLU(),
        torch.nn.Linear(128, 32),
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = InfoNCELoss(temperature=0.2, nonneg=nonneg)
    generator = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x1, x2, _ = data.positive_pairs(256, generator)
        loss = loss_fn(model(x1), model(x2))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model


@pytest.mark.usefixtures("one_torch_thread")
def test_ncl_dimensions_fire_for_one_latent_class_and_cl_features_are_dense_and_mixed() -> None:
    """Wang et al. (ICLR 2024), Theorem: with non-negative outputs each dimension recovers one latent class."""
    data = LatentClassData(num_classes=10, anchors_per_class=3, input_dim=32, noise=0.5, seed=0)
    x, latent = data.sample(2000, seed=2)
    reports = {}
    for name, nonneg in (("ncl", "relu"), ("cl", None)):
        model = train_encoder(nonneg, data)
        with torch.no_grad():
            features = model(x)
        features = torch.relu(features) if nonneg else features
        reports[name] = feature_report(features, latent, sepin_samples=256)
    ncl, cl = reports["ncl"], reports["cl"]
    assert ncl["sparsity"] >= 0.8
    assert ncl["semantic_consistency"] >= 0.9
    assert cl["sparsity"] < 0.05
    # Chance is 1/10: every dense CL dim is non-zero on every sample, of every class.
    assert cl["semantic_consistency"] < 0.15
    assert ncl["correlation"] < cl["correlation"]
    assert ncl["sepin@1"] > 3 * cl["sepin@1"] and ncl["sepin@10"] > 3 * cl["sepin@10"]
