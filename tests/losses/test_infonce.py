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


def gelu_derivative(x):
    """Phi(x) + x phi(x), the gradient rep_relu passes back."""
    return 0.5 * (1 + torch.erf(x / math.sqrt(2))) + x * torch.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)


@pytest.mark.parametrize("mode", ["relu", "rep_relu"])
@pytest.mark.parametrize("chunk_size", [None, 3])
def test_all_dead_batch_raises(mode, chunk_size):
    z1, z2 = pair(8, 6)
    z1, z2 = -z1.abs() - 0.1, -z2.abs() - 0.1  # every unit dead after ReLU
    with pytest.raises(ValueError, match="z1 and z2 is dead"):
        InfoNCELoss(0.2, nonneg=mode, chunk_size=chunk_size)(z1, z2)
    # without the check: all similarities are 0, the softmax is uniform over 2N - 1 = 15 entries
    unchecked = InfoNCELoss(0.2, nonneg=mode, chunk_size=chunk_size, check_finite=False)
    loss, grad1, grad2 = loss_and_grads(unchecked, z1, z2)
    assert loss.item() == pytest.approx(math.log(15))
    assert not grad1.any() and not grad2.any()  # which is why the check raises


def test_batch_with_one_live_view_does_not_raise():
    z1, z2 = pair(4, 6)
    z1, z2 = -z1.abs() - 0.1, -z2.abs() - 0.1
    z2[3, 0] = 1.0
    assert torch.isfinite(InfoNCELoss(0.2, nonneg="relu")(z1, z2))


def test_dead_row_gets_a_bounded_gradient_with_256_samples():
    # One sample with every unit dead in a batch of 256: F.normalize's 1 / eps Jacobian gave it a
    # gradient norm ~1e6 times the live rows' under rep_relu; it must stay within 10x their median.
    z1, z2 = pair(256, 128, dtype=torch.float32, seed=8)
    z1[0] = -z1[0].abs() - 0.1
    for mode in ("rep_relu", "relu"):
        _, grad1, grad2 = loss_and_grads(InfoNCELoss(0.2, nonneg=mode), z1, z2)
        norms = torch.cat([grad1, grad2]).norm(dim=1)
        assert norms[0] <= 10 * norms[1:].median(), mode
        assert norms[1:].median() > 0


@pytest.mark.parametrize("chunk_size", [None, 5])
def test_dead_row_gets_no_gradient_and_live_rows_match_lightly(chunk_size):
    z1, z2 = pair(16, 32, dtype=torch.float32, seed=9)
    z1[0] = -z1[0].abs() - 0.1  # sample 0's first view: every unit dead
    z2[5] = -z2[5].abs() - 0.1  # sample 5's second view too
    dead = [0, 16 + 5]
    relu_loss, *relu_grads = loss_and_grads(InfoNCELoss(0.2, nonneg="relu", chunk_size=chunk_size), z1, z2)
    rep_loss, *rep_grads = loss_and_grads(InfoNCELoss(0.2, nonneg="rep_relu", chunk_size=chunk_size), z1, z2)
    relu1, relu2 = F.relu(z1).requires_grad_(), F.relu(z2).requires_grad_()
    reference = NTXentLoss(0.2)(relu1, relu2)  # a dead row is the zero vector there too
    reference.backward()
    reference_grad = torch.cat([relu1.grad, relu2.grad])
    live = torch.ones(32, dtype=torch.bool)
    live[dead] = False
    for loss, grads, factor in ((relu_loss, relu_grads, (torch.cat([z1, z2]) > 0).float()),
                                (rep_loss, rep_grads, gelu_derivative(torch.cat([z1, z2])))):
        grad = torch.cat(grads)
        assert loss.item() == pytest.approx(reference.item(), rel=1e-6)
        torch.testing.assert_close(grad[live], (reference_grad * factor)[live], rtol=1e-5, atol=1e-7)
        assert not grad[dead].any()
        assert (grad[live].norm(dim=1) > 0).all()


def test_row_below_the_norm_threshold_counts_as_dead():
    z1, z2 = pair(8, 6)
    z1[2] = 1e-8 * z1[2].abs()  # live signs, norm far below 1e-6
    zeroed = z1.clone()
    zeroed[2] = 0.0
    loss, grad1, _ = loss_and_grads(InfoNCELoss(0.2, nonneg="rep_relu"), z1, z2)
    assert loss.item() == pytest.approx(ntxent(zeroed.numpy(), z2.numpy(), 0.2, "relu"), rel=1e-12)
    assert not grad1[2].any()


LOW_PRECISION = [torch.float16, torch.bfloat16]


@pytest.mark.parametrize("dtype", LOW_PRECISION)
@pytest.mark.parametrize("mode", [None, "relu"])
@pytest.mark.parametrize("chunk_size", [None, 5])
def test_low_precision_inputs_are_computed_in_float32(dtype, mode, chunk_size):
    z1, z2 = pair(32, 64, dtype=torch.float32, seed=10)
    low1, low2 = z1.to(dtype), z2.to(dtype)
    loss, grad1, grad2 = loss_and_grads(InfoNCELoss(0.2, nonneg=mode, chunk_size=chunk_size), low1, low2)
    assert loss.dtype == torch.float32
    assert grad1.dtype == grad2.dtype == dtype  # gradients arrive in the inputs' dtype
    # float32 arithmetic on the rounded inputs, and within 1e-2 of the float32 inputs' loss
    rounded = ntxent(low1.double().numpy(), low2.double().numpy(), 0.2, mode)
    assert loss.item() == pytest.approx(rounded, rel=1e-5)
    assert loss.item() == pytest.approx(ntxent(z1.double().numpy(), z2.double().numpy(), 0.2, mode), rel=1e-2)
    # gradients: lightly's in float64 on the rounded inputs, up to the rounding of the 16-bit result
    nonneg = F.relu if mode else (lambda x: x)
    reference = loss_and_grads(lambda a, b: NTXentLoss(0.2)(nonneg(a), nonneg(b)), low1.double(), low2.double())
    for mine, theirs in zip((grad1, grad2), reference[1:], strict=True):
        torch.testing.assert_close(mine.double(), theirs, rtol=1e-2, atol=1e-2 * theirs.abs().max().item())


def autocast_devices():
    cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
    return ["cpu", pytest.param("cuda", marks=cuda)]


@pytest.mark.parametrize("device", autocast_devices())
@pytest.mark.parametrize("dtype", LOW_PRECISION)
def test_inside_autocast_the_loss_is_float32(device, dtype, seed_and_one_thread):
    z1, z2 = pair(32, 64, dtype=torch.float32, seed=11)
    z1, z2 = z1.to(device), z2.to(device)
    encoder = torch.nn.Linear(64, 64).to(device)
    loss_fn = InfoNCELoss(0.2, nonneg="relu", chunk_size=7)
    with torch.autocast(device, dtype=dtype):
        features = encoder(z1), encoder(z2)  # autocast makes these 16-bit
        features[0].retain_grad()
        loss = loss_fn(*features)
        # float32 features met inside autocast are not demoted to 16-bit matrix products
        exact = loss_fn(z1, z2)
    assert features[0].dtype == dtype and loss.dtype == exact.dtype == torch.float32
    rounded = ntxent(*(f.detach().double().cpu().numpy() for f in features), 0.2, "relu")
    assert loss.item() == pytest.approx(rounded, rel=1e-5)
    full = ntxent(z1.double().cpu().numpy(), z2.double().cpu().numpy(), 0.2, "relu")
    assert exact.item() == pytest.approx(full, rel=1e-5)
    loss.backward()
    assert features[0].grad.dtype == dtype and encoder.weight.grad.dtype == torch.float32


@pytest.mark.parametrize("chunk_size", [None, 7])
def test_backward_inside_autocast_stays_float32(chunk_size):
    z1, z2 = pair(32, 64, dtype=torch.float32, seed=12)
    leaves = z1.clone().requires_grad_(), z2.clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        InfoNCELoss(0.2, nonneg="relu", chunk_size=chunk_size)(*leaves).backward()
    reference = loss_and_grads(lambda a, b: NTXentLoss(0.2)(F.relu(a), F.relu(b)), z1.double(), z2.double())
    for leaf, theirs in zip(leaves, reference[1:], strict=True):
        torch.testing.assert_close(leaf.grad.double(), theirs, rtol=1e-4, atol=1e-7)


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
