"""SpectralContrastiveLoss: numpy reference, finite-difference gradients, closed forms, bad input."""

import numpy as np
import pytest
import torch

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
def test_all_dead_batch_gives_finite_loss_and_gradients(mode):
    z1, z2 = pair(8, 6)
    z1, z2 = (-z1.abs() - 0.1).requires_grad_(), (-z2.abs() - 0.1).requires_grad_()
    loss = SpectralContrastiveLoss(nonneg=mode)(z1, z2)
    loss.backward()
    assert loss.item() == 0.0
    assert torch.isfinite(z1.grad).all() and torch.isfinite(z2.grad).all()


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
