"""SpectralContrastiveLoss: numpy reference, finite differences, closed forms, precision, dead rows, bad input."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ncl_ext.losses import SpectralContrastiveLoss
from tests._reference import MODES, numeric_gradient, spectral


def pair(batch_size, dim, seed=0, dtype=torch.float64):
    generator = torch.Generator().manual_seed(seed)
    z1 = torch.randn(batch_size, dim, generator=generator, dtype=dtype)
    return z1, z1 + 0.5 * torch.randn(batch_size, dim, generator=generator, dtype=dtype)


# (2N)^2 <= dim^2 uses the similarity matrix, larger batches the dim x dim Gram identity: both are covered.
@pytest.mark.parametrize("batch_size", [1, 2, 3, 8, 64])
@pytest.mark.parametrize("dim", [1, 4, 32])
@pytest.mark.parametrize("mode", MODES)
def test_matches_numpy_reference(batch_size, dim, mode):
    z1, z2 = pair(batch_size, dim, seed=batch_size * dim)
    expected = spectral(z1.numpy(), z2.numpy(), mode)
    loss = SpectralContrastiveLoss(nonneg=mode)(z1, z2)
    assert loss.item() == pytest.approx(expected, rel=1e-9, abs=1e-9)


def test_float32_matches_numpy_reference():
    z1, z2 = pair(64, 8, dtype=torch.float32)
    expected = spectral(z1.double().numpy(), z2.double().numpy(), "relu")
    assert SpectralContrastiveLoss(nonneg="relu")(z1, z2).item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize(("batch_size", "dim"), [(1, 3), (2, 5), (6, 2)])
@pytest.mark.parametrize("mode", [None, "softplus"])
def test_gradient_matches_finite_differences_of_the_reference(batch_size, dim, mode):
    z1, z2 = pair(batch_size, dim, seed=7)
    z1.requires_grad_()
    z2.requires_grad_()
    SpectralContrastiveLoss(nonneg=mode)(z1, z2).backward()
    x1, x2 = z1.detach().numpy(), z2.detach().numpy()
    np.testing.assert_allclose(z1.grad.numpy(), numeric_gradient(lambda a: spectral(a, x2, mode), x1), atol=1e-6)
    np.testing.assert_allclose(z2.grad.numpy(), numeric_gradient(lambda b: spectral(x1, b, mode), x2), atol=1e-6)


@pytest.mark.parametrize(("batch_size", "dim"), [(1, 3), (3, 4), (6, 2)])
@pytest.mark.parametrize("mode", [None, "relu", "sigmoid"])
def test_gradcheck(batch_size, dim, mode):
    z1, z2 = pair(batch_size, dim, seed=11)
    assert torch.autograd.gradcheck(SpectralContrastiveLoss(nonneg=mode), (z1.requires_grad_(), z2.requires_grad_()))


def test_orthonormal_identical_views_reach_the_minimum_of_minus_two():
    # f(x) = f(x+) = e_i: attraction -2 * 1, every negative pair orthogonal, so the loss is -2.
    eye = torch.eye(5, dtype=torch.float64)
    assert SpectralContrastiveLoss(nonneg="relu")(eye, eye).item() == pytest.approx(-2.0)


def test_identical_constant_features_closed_form():
    # u = c * ones(d) everywhere: every dot product is c^2 d, so loss = -2 c^2 d + (c^2 d)^2.
    c, d = 0.5, 3
    z = torch.full((4, d), c, dtype=torch.float64)
    assert SpectralContrastiveLoss()(z, z).item() == pytest.approx(-2 * c * c * d + (c * c * d) ** 2)


def test_gather_distributed_in_one_process_is_the_plain_loss():
    z1, z2 = pair(8, 4)
    assert SpectralContrastiveLoss(gather_distributed=True)(z1, z2).item() == pytest.approx(
        SpectralContrastiveLoss()(z1, z2).item()
    )


@pytest.mark.parametrize("mode", ["relu", "rep_relu"])
def test_all_dead_batch_raises(mode):
    z1, z2 = pair(8, 6)
    z1, z2 = -z1.abs() - 0.1, -z2.abs() - 0.1  # every unit dead after ReLU
    with pytest.raises(ValueError, match="z1 and z2 is dead"):
        SpectralContrastiveLoss(nonneg=mode)(z1, z2)
    # without the check: every dot product is 0, and so are the loss and its gradient
    z1, z2 = z1.requires_grad_(), z2.requires_grad_()
    loss = SpectralContrastiveLoss(nonneg=mode, check_finite=False)(z1, z2)
    loss.backward()
    assert loss.item() == 0.0
    assert not z1.grad.any() and not z2.grad.any()


def gelu_derivative(x):
    return 0.5 * (1 + torch.erf(x / math.sqrt(2))) + x * torch.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)


def test_dead_row_gets_the_bounded_attraction_gradient():
    # A dead row u_0 = 0 has every dot product 0: its gradient is the attraction -(2 / N) u_positive
    # alone, times the map's derivative: 0 for relu, GELU's derivative for rep_relu.
    batch_size = 64
    z1, z2 = pair(batch_size, 32, seed=13)
    z1[0] = -z1[0].abs() - 0.1
    for mode, derivative in (("relu", lambda x: (x > 0).double()), ("rep_relu", gelu_derivative)):
        leaves = z1.clone().requires_grad_(), z2.clone().requires_grad_()
        SpectralContrastiveLoss(nonneg=mode)(*leaves).backward()
        expected = -2 / batch_size * F.relu(z2[0]) * derivative(z1[0])
        torch.testing.assert_close(leaves[0].grad[0], expected, rtol=1e-12, atol=1e-15)
        norms = torch.cat([leaves[0].grad, leaves[1].grad]).norm(dim=1)
        assert norms[0] <= 10 * norms[1:].median(), mode


def test_float16_no_longer_overflows():
    # N = 8, D = 64: the squared dot products overflow float16 (the loss was inf) unless computed in float32
    z1, z2 = pair(8, 64, seed=14, dtype=torch.float32)
    half1, half2 = z1.half(), z2.half()
    views = F.relu(torch.cat([half1, half2]))
    assert torch.isinf((views @ views.T).square().sum())  # the sum of squared dot products, in float16
    loss = SpectralContrastiveLoss(nonneg="relu")(half1, half2)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(spectral(z1.double().numpy(), z2.double().numpy(), "relu"), rel=1e-2)
    assert loss.item() == pytest.approx(spectral(half1.double().numpy(), half2.double().numpy(), "relu"), rel=1e-5)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("mode", [None, "relu", "softplus"])
@pytest.mark.parametrize(("batch_size", "dim"), [(8, 64), (64, 8)])  # similarity-matrix and Gram paths
def test_low_precision_inputs_are_computed_in_float32(dtype, mode, batch_size, dim):
    z1, z2 = pair(batch_size, dim, seed=15, dtype=torch.float32)
    low1, low2 = z1.to(dtype).requires_grad_(), z2.to(dtype).requires_grad_()
    loss = SpectralContrastiveLoss(nonneg=mode)(low1, low2)
    loss.backward()
    assert loss.dtype == torch.float32 and low1.grad.dtype == low2.grad.dtype == dtype
    rounded1, rounded2 = low1.detach().double().numpy(), low2.detach().double().numpy()
    assert loss.item() == pytest.approx(spectral(rounded1, rounded2, mode), rel=1e-5)
    assert loss.item() == pytest.approx(spectral(z1.double().numpy(), z2.double().numpy(), mode), rel=1e-2)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_gradients_match_finite_differences(dtype):
    z1, z2 = pair(3, 4, seed=16, dtype=torch.float32)
    low1, low2 = z1.to(dtype).requires_grad_(), z2.to(dtype).requires_grad_()
    SpectralContrastiveLoss(nonneg="softplus")(low1, low2).backward()
    x1, x2 = low1.detach().double().numpy(), low2.detach().double().numpy()
    for grad, expected in (
        (low1.grad, numeric_gradient(lambda a: spectral(a, x2, "softplus"), x1)),
        (low2.grad, numeric_gradient(lambda b: spectral(x1, b, "softplus"), x2)),
    ):  # up to the rounding of the 16-bit result
        np.testing.assert_allclose(grad.double().numpy(), expected, rtol=1e-2, atol=1e-2 * np.abs(expected).max())


def autocast_devices():
    cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
    return ["cpu", pytest.param("cuda", marks=cuda)]


@pytest.mark.parametrize("device", autocast_devices())
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_inside_autocast_the_loss_is_float32(device, dtype, seed_and_one_thread):
    z1, z2 = (z.float().to(device) for z in pair(8, 64, seed=17))
    encoder = torch.nn.Linear(64, 64).to(device)
    loss_fn = SpectralContrastiveLoss(nonneg="relu")
    with torch.autocast(device, dtype=dtype):
        features = encoder(z1), encoder(z2)
        loss = loss_fn(*features)
        exact = loss_fn(z1, z2)  # float32 features are not demoted to 16-bit products
    assert features[0].dtype == dtype and loss.dtype == exact.dtype == torch.float32
    rounded = [f.detach().double().cpu().numpy() for f in features]
    # attraction and repulsion cancel partly: float32 rounding is relative to each term, not to their sum
    assert loss.item() == pytest.approx(spectral(*rounded, "relu"), rel=1e-5, abs=1e-5)
    full = spectral(z1.double().cpu().numpy(), z2.double().cpu().numpy(), "relu")
    assert exact.item() == pytest.approx(full, rel=1e-5, abs=1e-5)
    loss.backward()
    assert encoder.weight.grad.dtype == torch.float32 and torch.isfinite(encoder.weight.grad).all()


@pytest.mark.parametrize(
    ("z1", "z2", "argument"),
    [
        (torch.randn(8), torch.randn(8), "z1"),
        (torch.randn(4, 8), torch.randn(4, 8, 1), "z2"),
        (torch.randn(4, 8), torch.randn(5, 8), "batch size"),
        (torch.randn(4, 8), torch.randn(4, 9), "feature dim"),
        (torch.tensor([[float("nan"), 1.0]]), torch.ones(1, 2), "z1"),
        (torch.ones(1, 2), torch.tensor([[float("-inf"), 1.0]]), "z2"),
    ],
)
def test_bad_inputs_name_the_argument(z1, z2, argument):
    with pytest.raises(ValueError, match=argument):
        SpectralContrastiveLoss()(z1, z2)


def test_unknown_mode_names_the_argument():
    with pytest.raises(ValueError, match="nonneg"):
        SpectralContrastiveLoss(nonneg="abs")


def test_finite_check_can_be_switched_off():
    z1, z2 = torch.tensor([[float("nan"), 1.0]]), torch.ones(1, 2)
    assert torch.isnan(SpectralContrastiveLoss(check_finite=False)(z1, z2))
