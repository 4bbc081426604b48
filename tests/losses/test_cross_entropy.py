"""NonNegativeCrossEntropyLoss: numpy reference, gradients, non-negative weights, bad input."""

import numpy as np
import pytest
import torch

from ncl_ext.losses import NonNegativeCrossEntropyLoss
from tests._reference import MODES, cross_entropy, numeric_gradient


def batch(batch_size, in_features, num_classes, seed=0):
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(batch_size, in_features, generator=generator, dtype=torch.float64)
    labels = torch.randint(0, num_classes, (batch_size,), generator=generator)
    return features, labels


def make_loss(in_features, num_classes, **kwargs):
    torch.manual_seed(0)
    return NonNegativeCrossEntropyLoss(in_features, num_classes, **kwargs).double()


def reference(loss_fn, features, labels):
    bias = None if loss_fn.classifier.bias is None else loss_fn.classifier.bias.detach().numpy()
    return cross_entropy(
        features.numpy(),
        labels.numpy(),
        loss_fn.classifier.weight.detach().numpy(),
        bias,
        loss_fn.nonneg,
        loss_fn.nonneg_weights,
        loss_fn.label_smoothing,
    )


@pytest.mark.parametrize("batch_size", [1, 2, 3, 8, 64])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(("in_features", "num_classes"), [(1, 2), (16, 5)])
def test_matches_numpy_reference(batch_size, mode, in_features, num_classes):
    loss_fn = make_loss(in_features, num_classes, nonneg=mode)
    features, labels = batch(batch_size, in_features, num_classes, seed=batch_size)
    expected = reference(loss_fn, features, labels)
    assert loss_fn(features, labels).item() == pytest.approx(expected, rel=1e-10, abs=1e-12)


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("nonneg_weights", [False, True])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
@pytest.mark.parametrize("mode", ["relu", "softplus"])
def test_options_match_numpy_reference(bias, nonneg_weights, label_smoothing, mode):
    loss_fn = make_loss(8, 4, nonneg=mode, bias=bias, nonneg_weights=nonneg_weights, label_smoothing=label_smoothing)
    features, labels = batch(16, 8, 4, seed=1)
    expected = reference(loss_fn, features, labels)
    assert loss_fn(features, labels).item() == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize("nonneg_weights", [False, True])
def test_gradients_match_finite_differences_of_the_reference(nonneg_weights):
    loss_fn = make_loss(4, 3, nonneg="softplus", bias=True, nonneg_weights=nonneg_weights, label_smoothing=0.2)
    features, labels = batch(5, 4, 3, seed=2)
    features.requires_grad_()
    loss_fn(features, labels).backward()
    x, y = features.detach().numpy(), labels.numpy()
    weight, bias = loss_fn.classifier.weight.detach().numpy(), loss_fn.classifier.bias.detach().numpy()

    def ref(features=x, weight=weight, bias=bias):
        return cross_entropy(features, y, weight, bias, "softplus", nonneg_weights, 0.2)

    for grad, numeric in [
        (features.grad, numeric_gradient(lambda a: ref(features=a), x)),
        (loss_fn.classifier.weight.grad, numeric_gradient(lambda w: ref(weight=w), weight)),
        (loss_fn.classifier.bias.grad, numeric_gradient(lambda b: ref(bias=b), bias)),
    ]:
        np.testing.assert_allclose(grad.numpy(), numeric, atol=1e-7)


@pytest.mark.parametrize(("mode", "nonneg_weights"), [(None, False), ("relu", False), ("relu", True), ("exp", True)])
def test_gradcheck(mode, nonneg_weights):
    loss_fn = make_loss(4, 3, nonneg=mode, bias=True, nonneg_weights=nonneg_weights)
    features, labels = batch(5, 4, 3, seed=3)
    assert torch.autograd.gradcheck(
        lambda x, w, b: torch.func.functional_call(loss_fn, {"weight": w, "bias": b}, (x, labels)),
        (
            features.requires_grad_(),
            loss_fn.classifier.weight.detach().clone().requires_grad_(),
            loss_fn.classifier.bias.detach().clone().requires_grad_(),
        ),
    )


def test_logits_use_non_negative_features_and_weights():
    loss_fn = make_loss(6, 3, nonneg="relu", nonneg_weights=True)
    features, _ = batch(10, 6, 3)
    expected = torch.relu(features) @ torch.relu(loss_fn.classifier.weight).T
    torch.testing.assert_close(loss_fn.logits(features), expected)
    assert (loss_fn.logits(features) >= 0).all()
    assert (loss_fn.classifier.weight >= 0).all()  # initialised non-negative so no class starts dead
    assert loss_fn.classifier.bias is None  # no bias by default, as in the paper


def test_classifier_learns_a_separable_problem():
    torch.manual_seed(0)
    features = torch.randn(64, 8)
    labels = (features[:, 0] > 0).long()
    loss_fn = NonNegativeCrossEntropyLoss(8, 2)
    optimizer = torch.optim.SGD(loss_fn.parameters(), lr=0.5)
    first = loss_fn(features, labels).item()
    for _ in range(50):
        optimizer.zero_grad()
        loss_fn(features, labels).backward()
        optimizer.step()
    accuracy = (loss_fn.logits(features).argmax(dim=1) == labels).float().mean().item()
    assert loss_fn(features, labels).item() < first / 2 and accuracy > 0.9


def test_all_dead_features_give_finite_loss_and_gradients():
    loss_fn = make_loss(6, 3, nonneg="rep_relu")
    features, labels = batch(8, 6, 3)
    features = (-features.abs() - 0.1).requires_grad_()
    loss = loss_fn(features, labels)
    loss.backward()
    assert loss.item() == pytest.approx(np.log(3))  # all logits 0: uniform over 3 classes
    assert torch.isfinite(features.grad).all() and torch.isfinite(loss_fn.classifier.weight.grad).all()


@pytest.mark.parametrize(
    ("features", "labels", "argument"),
    [
        (torch.randn(6), torch.zeros(6, dtype=torch.long), "features"),
        (torch.randn(4, 5), torch.zeros(4, dtype=torch.long), "features"),
        (torch.full((4, 6), float("nan")), torch.zeros(4, dtype=torch.long), "features"),
        (torch.randn(4, 6), torch.zeros(3, dtype=torch.long), "labels"),
        (torch.randn(4, 6), torch.zeros(4), "labels"),
        (torch.randn(4, 6), torch.full((4,), 3), "labels"),
        (torch.randn(4, 6), torch.full((4,), -1), "labels"),
    ],
)
def test_bad_inputs_name_the_argument(features, labels, argument):
    with pytest.raises(ValueError, match=argument):
        NonNegativeCrossEntropyLoss(6, 3)(features, labels)


@pytest.mark.parametrize(
    ("kwargs", "argument"),
    [
        ({"nonneg": "tanh"}, "nonneg"),
        ({"nonneg": None, "nonneg_weights": True}, "nonneg_weights"),
        ({"label_smoothing": 1.5}, "label_smoothing"),
        ({"in_features": 0}, "in_features"),
        ({"num_classes": 2.5}, "num_classes"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs, argument):
    with pytest.raises(ValueError, match=argument):
        NonNegativeCrossEntropyLoss(**{"in_features": 6, "num_classes": 3, **kwargs})


def test_half_precision_features_are_scored_in_float32():
    loss_fn = NonNegativeCrossEntropyLoss(16, 5, nonneg="relu", nonneg_weights=True)
    features = torch.randn(32, 16, generator=torch.Generator().manual_seed(3))
    labels = torch.randint(0, 5, (32,), generator=torch.Generator().manual_seed(4))
    half = features.to(torch.bfloat16).requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = loss_fn(half, labels)
    assert loss.dtype == torch.float32
    assert float(loss) == pytest.approx(float(loss_fn(half.detach().float(), labels)), rel=1e-6)
    loss.backward()
    assert half.grad.dtype == torch.bfloat16
