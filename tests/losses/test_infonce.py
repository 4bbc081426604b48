"""InfoNCELoss: numpy reference, lightly's NTXentLoss, gradients, tiling, bad input."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from lightly.loss import NTXentLoss

from ncl_ext.losses import InfoNCELoss
from tests._reference import MODES, ntxent

BATCH_SIZES = [1, 2, 3, 8, 64]


def pair(batch_size, dim, dtype=torch.float64, seed=0, requires_grad=False):
    generator = torch.Generator().manual_seed(seed)
    z1 = torch.randn(batch_size, dim, generator=generator, dtype=dtype)
    z2 = z1 + 0.5 * torch.randn(batch_size, dim, generator=generator, dtype=dtype)  # correlated views
    return z1.requires_grad_(requires_grad), z2.requires_grad_(requires_grad)


def loss_and_grads(loss_fn, z1, z2):
    z1, z2 = z1.detach().clone().requires_grad_(), z2.detach().clone().requires_grad_()
    loss = loss_fn(z1, z2)
    loss.backward()
    return loss.detach(), z1.grad, z2.grad


@pytest.mark.parametrize("batch_size", BATCH_SIZES)
@pytest.mark.parametrize("dim", [1, 4, 32])
@pytest.mark.parametrize("temperature", [0.07, 0.2, 1.0])
def test_matches_numpy_reference(batch_size, dim, temperature):
    z1, z2 = pair(batch_size, dim)
    expected = ntxent(z1.numpy(), z2.numpy(), temperature)
    assert InfoNCELoss(temperature)(z1, z2).item() == pytest.approx(expected, rel=1e-10, abs=1e-10)


@pytest.mark.parametrize("batch_size", BATCH_SIZES)
@pytest.mark.parametrize("mode", MODES)
def test_nonneg_modes_match_numpy_reference(batch_size, mode):
    z1, z2 = pair(batch_size, 16, seed=batch_size)
    expected = ntxent(z1.numpy(), z2.numpy(), 0.2, mode)
    assert InfoNCELoss(0.2, nonneg=mode)(z1, z2).item() == pytest.approx(expected, rel=1e-10, abs=1e-10)


@pytest.mark.parametrize("batch_size", [1, 2, 16, 64])
@pytest.mark.parametrize("temperature", [0.1, 0.5])
@pytest.mark.parametrize("chunk_size", [None, 5])
def test_equals_lightly_ntxent_in_value_and_gradient(batch_size, temperature, chunk_size):
    z1, z2 = pair(batch_size, 32, dtype=torch.float32, seed=1)
    ours = loss_and_grads(InfoNCELoss(temperature, chunk_size=chunk_size), z1, z2)
    lightly = loss_and_grads(NTXentLoss(temperature), z1, z2)
    for mine, theirs in zip(ours, lightly, strict=True):
        torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("batch_size", [1, 8, 64])
def test_relu_equals_lightly_on_relu_features(batch_size):
    z1, z2 = pair(batch_size, 32, dtype=torch.float32, seed=2)
    ours = loss_and_grads(InfoNCELoss(0.2, nonneg="relu"), z1, z2)
    lightly = loss_and_grads(lambda a, b: NTXentLoss(0.2)(F.relu(a), F.relu(b)), z1, z2)
    for mine, theirs in zip(ours, lightly, strict=True):
        torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-5)


def test_rep_relu_has_relu_value_and_gelu_gradient():
    z1, z2 = pair(16, 32, seed=3)
    assert (F.relu(z1).sum(1) > 0).all() and (F.relu(z2).sum(1) > 0).all()  # no all-dead row
    loss, grad1, grad2 = loss_and_grads(InfoNCELoss(0.2, nonneg="rep_relu"), z1, z2)
    # Gradient of lightly's loss with respect to the ReLU outputs, times GELU's derivative.
    relu1, relu2 = F.relu(z1).requires_grad_(), F.relu(z2).requires_grad_()
    reference = NTXentLoss(0.2)(relu1, relu2)
    reference.backward()
    x1, x2 = z1.numpy(), z2.numpy()
    erf = np.vectorize(math.erf)

    def gelu_derivative(x):  # Phi(x) + x phi(x)
        return 0.5 * (1 + erf(x / math.sqrt(2))) + x * np.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)

    assert loss.item() == pytest.approx(reference.item(), rel=1e-12)
    np.testing.assert_allclose(grad1.numpy(), relu1.grad.numpy() * gelu_derivative(x1), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(grad2.numpy(), relu2.grad.numpy() * gelu_derivative(x2), rtol=1e-9, atol=1e-12)
    assert (grad1[z1 < 0] != 0).any()  # unlike ReLU, negative inputs still receive gradient


@pytest.mark.parametrize("mode", [None, "relu", "softplus"])
@pytest.mark.parametrize("chunk_size", [None, 2])
@pytest.mark.parametrize("batch_size", [1, 3])
def test_gradcheck(mode, chunk_size, batch_size):
    z1, z2 = pair(batch_size, 5, seed=4, requires_grad=True)
    loss_fn = InfoNCELoss(0.3, nonneg=mode, chunk_size=chunk_size)
    assert torch.autograd.gradcheck(loss_fn, (z1, z2))


@pytest.mark.parametrize(("batch_size", "chunk_size"), [(1, 1), (2, 1), (2, 3), (7, 3), (7, 5), (64, 48), (64, 1000)])
@pytest.mark.parametrize("mode", [None, "relu"])
@pytest.mark.parametrize("temperature", [0.1, 0.01])  # logits within / beyond the shift-by-bound range
def test_tiled_equals_untiled(batch_size, chunk_size, mode, temperature):
    z1, z2 = pair(batch_size, 24, seed=5)
    untiled = loss_and_grads(InfoNCELoss(temperature, nonneg=mode), z1, z2)
    tiled = loss_and_grads(InfoNCELoss(temperature, nonneg=mode, chunk_size=chunk_size), z1, z2)
    for a, b in zip(tiled, untiled, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_small_temperature_is_stable():
    # logits reach 1 / 0.005 = 200: exp overflows float32 without the row-max shift
    z1, z2 = torch.randn(32, 16), torch.randn(32, 16)
    expected = ntxent(z1.double().numpy(), z2.double().numpy(), 0.005)
    assert expected > 10
    for chunk_size in (None, 7):
        loss, grad1, grad2 = loss_and_grads(InfoNCELoss(0.005, chunk_size=chunk_size), z1, z2)
        assert loss.item() == pytest.approx(expected, rel=1e-5)
        assert torch.isfinite(grad1).all() and torch.isfinite(grad2).all()


def test_backward_twice_with_retained_graph_gives_the_same_gradient():
    z1, z2 = pair(8, 4, requires_grad=True)
    loss = InfoNCELoss(0.2)(z1, z2)
    first = torch.autograd.grad(loss, (z1, z2), retain_graph=True)
    second = torch.autograd.grad(loss, (z1, z2))
    for a, b in zip(first, second, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_gather_distributed_in_one_process_is_the_plain_loss():
    z1, z2 = pair(8, 4)
    assert InfoNCELoss(gather_distributed=True)(z1, z2).item() == pytest.approx(InfoNCELoss()(z1, z2).item())


@pytest.mark.parametrize("mode", ["relu", "rep_relu"])
@pytest.mark.parametrize("chunk_size", [None, 3])
def test_all_dead_batch_gives_finite_loss_and_gradients(mode, chunk_size):
    z1, z2 = pair(8, 6)
    z1, z2 = -z1.abs() - 0.1, -z2.abs() - 0.1  # every unit dead after ReLU
    loss, grad1, grad2 = loss_and_grads(InfoNCELoss(0.2, nonneg=mode, chunk_size=chunk_size), z1, z2)
    # all similarities are 0: each anchor's softmax is uniform over 2N - 1 = 15 entries
    assert loss.item() == pytest.approx(math.log(15))
    assert torch.isfinite(grad1).all() and torch.isfinite(grad2).all()


@pytest.mark.parametrize("mode", ["relu", "rep_relu"])
def test_partly_dead_batch_gives_finite_gradients(mode):
    z1, z2 = pair(8, 6)
    z1[0] = -z1[0].abs() - 0.1  # one sample with every unit dead
    loss, grad1, grad2 = loss_and_grads(InfoNCELoss(0.2, nonneg=mode), z1, z2)
    assert torch.isfinite(loss) and torch.isfinite(grad1).all() and torch.isfinite(grad2).all()


@pytest.mark.parametrize(
    ("z1", "z2", "argument"),
    [
        (torch.randn(8), torch.randn(8), "z1"),
        (torch.randn(4, 8), torch.randn(8), "z2"),
        (torch.randn(4, 8), torch.randn(5, 8), "batch size"),
        (torch.randn(4, 8), torch.randn(4, 9), "feature dim"),
        (torch.randn(0, 8), torch.randn(0, 8), "z1"),
        (torch.randint(0, 3, (4, 8)), torch.randn(4, 8), "z1"),
        (torch.tensor([[float("nan"), 1.0]]), torch.ones(1, 2), "z1"),
        (torch.ones(1, 2), torch.tensor([[float("inf"), 1.0]]), "z2"),
    ],
)
def test_bad_inputs_name_the_argument(z1, z2, argument):
    with pytest.raises(ValueError, match=argument):
        InfoNCELoss()(z1, z2)


@pytest.mark.parametrize(
    ("kwargs", "argument"),
    [
        ({"temperature": 0.0}, "temperature"),
        ({"temperature": -0.5}, "temperature"),
        ({"temperature": float("nan")}, "temperature"),
        ({"nonneg": "tanh"}, "nonneg"),
        ({"chunk_size": 0}, "chunk_size"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs, argument):
    with pytest.raises(ValueError, match=argument):
        InfoNCELoss(**kwargs)


def test_finite_check_can_be_switched_off():
    z1, z2 = torch.tensor([[float("nan"), 1.0]]), torch.ones(1, 2)
    assert torch.isnan(InfoNCELoss(check_finite=False)(z1, z2))
