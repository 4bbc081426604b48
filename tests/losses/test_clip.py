"""ClipLoss and SigLipLoss: open_clip's losses, numpy references, gradients, tiling, precision, dead rows, bad input."""

import math

import open_clip.loss
import pytest
import torch
import torch.nn.functional as F

from ncl_ext.losses import ClipLoss, SigLipLoss
from tests._reference import MODES, clip, siglip

BATCH_SIZES = [1, 2, 3, 8, 64]


def embeddings(batch_size, dim, seed=0, dtype=torch.float64):
    """L2-normalised image / text embeddings with matching pairs more similar, as open_clip passes them."""
    generator = torch.Generator().manual_seed(seed)
    image = torch.randn(batch_size, dim, generator=generator, dtype=dtype)
    text = image + torch.randn(batch_size, dim, generator=generator, dtype=dtype)
    return F.normalize(image, dim=1), F.normalize(text, dim=1)


def loss_and_grads(loss_fn, *inputs):
    """Loss value and the gradient with respect to every tensor input."""
    leaves = [x.detach().clone().requires_grad_() if isinstance(x, torch.Tensor) else x for x in inputs]
    loss = loss_fn(*leaves)
    tensors = [x for x in leaves if isinstance(x, torch.Tensor)]
    return (loss.detach(), *torch.autograd.grad(loss, tensors))


@pytest.mark.parametrize("batch_size", BATCH_SIZES)
@pytest.mark.parametrize("dim", [2, 16])
@pytest.mark.parametrize("logit_scale", [1.0, 14.3, 100.0])
def test_clip_matches_numpy_reference(batch_size, dim, logit_scale):
    image, text = embeddings(batch_size, dim, seed=batch_size)
    expected = clip(image.numpy(), text.numpy(), logit_scale)
    assert ClipLoss()(image, text, logit_scale).item() == pytest.approx(expected, rel=1e-10, abs=1e-10)


@pytest.mark.parametrize("batch_size", BATCH_SIZES)
@pytest.mark.parametrize("mode", MODES)
def test_clip_nonneg_modes_match_numpy_reference(batch_size, mode):
    generator = torch.Generator().manual_seed(batch_size)
    image, text = torch.randn(2, batch_size, 12, generator=generator, dtype=torch.float64)
    expected = clip(image.numpy(), text.numpy(), 10.0, mode=mode)
    loss = ClipLoss(nonneg=mode)(image, text, torch.tensor(10.0, dtype=torch.float64))
    assert loss.item() == pytest.approx(expected, rel=1e-10, abs=1e-10)


@pytest.mark.parametrize("batch_size", [1, 2, 16, 64])
@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("chunk_size", [None, 5])
def test_clip_equals_open_clip_in_value_and_gradient(batch_size, with_bias, chunk_size):
    image, text = embeddings(batch_size, 32, seed=1, dtype=torch.float32)
    scale_and_bias = [torch.tensor(14.3)] + ([torch.tensor(-2.0)] if with_bias else [])
    ours = loss_and_grads(ClipLoss(chunk_size=chunk_size), image, text, *scale_and_bias)
    theirs = loss_and_grads(open_clip.loss.ClipLoss(), image, text, *scale_and_bias)
    for mine, reference in zip(ours, theirs, strict=True):
        torch.testing.assert_close(mine, reference, rtol=1e-5, atol=1e-5)


def test_clip_relu_equals_open_clip_on_renormalised_relu_features():
    image, text = embeddings(16, 32, seed=2, dtype=torch.float32)
    scale = torch.tensor(20.0)
    ours = loss_and_grads(ClipLoss(nonneg="relu"), image, text, scale)

    def reference(image, text, scale):
        image, text = F.normalize(F.relu(image), dim=1), F.normalize(F.relu(text), dim=1)
        return open_clip.loss.ClipLoss()(image, text, scale)

    for mine, theirs in zip(ours, loss_and_grads(reference, image, text, scale), strict=True):
        torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-5)


def test_clip_output_dict():
    image, text = embeddings(4, 8)
    out = ClipLoss()(image, text, 10.0, output_dict=True)
    assert list(out) == ["contrastive_loss"]
    assert out["contrastive_loss"].item() == pytest.approx(ClipLoss()(image, text, 10.0).item())


@pytest.mark.parametrize(("batch_size", "chunk_size"), [(1, 1), (2, 1), (7, 3), (7, 6), (64, 48), (64, 1000)])
@pytest.mark.parametrize("mode", [None, "relu"])
@pytest.mark.parametrize("logit_scale", [30.0, 1000.0])  # logits within / beyond the shift-by-bound range
def test_clip_tiled_equals_untiled(batch_size, chunk_size, mode, logit_scale):
    image, text = embeddings(batch_size, 24, seed=3)
    scale, bias = torch.tensor(logit_scale, dtype=torch.float64), torch.tensor(1.5, dtype=torch.float64)
    untiled = loss_and_grads(ClipLoss(nonneg=mode), image, text, scale, bias)
    tiled = loss_and_grads(ClipLoss(nonneg=mode, chunk_size=chunk_size), image, text, scale, bias)
    for a, b in zip(tiled, untiled, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-9)


@pytest.mark.parametrize("mode", [None, "relu", "exp"])
@pytest.mark.parametrize("chunk_size", [None, 2])
def test_clip_gradcheck(mode, chunk_size):
    image, text = embeddings(3, 4, seed=4)
    scale, bias = torch.tensor(5.0, dtype=torch.float64), torch.tensor(0.5, dtype=torch.float64)
    loss_fn = ClipLoss(nonneg=mode, chunk_size=chunk_size)
    inputs = tuple(x.requires_grad_() for x in (image, text, scale, bias))
    assert torch.autograd.gradcheck(loss_fn, inputs)


@pytest.mark.parametrize("batch_size", BATCH_SIZES)
@pytest.mark.parametrize("mode", MODES)
def test_siglip_matches_numpy_reference(batch_size, mode):
    image, text = embeddings(batch_size, 12, seed=batch_size)
    expected = siglip(image.numpy(), text.numpy(), 10.0, -10.0, mode)
    loss = SigLipLoss(nonneg=mode)(image, text, 10.0, -10.0)
    assert loss.item() == pytest.approx(expected, rel=1e-10, abs=1e-10)


@pytest.mark.parametrize("batch_size", [1, 2, 16, 64])
def test_siglip_equals_open_clip_in_value_and_gradient(batch_size):
    image, text = embeddings(batch_size, 32, seed=5, dtype=torch.float32)
    scale, bias = torch.tensor(10.0), torch.tensor(-10.0)
    ours = loss_and_grads(SigLipLoss(), image, text, scale, bias)
    theirs = loss_and_grads(open_clip.loss.SigLipLoss(), image, text, scale, bias)
    for mine, reference in zip(ours, theirs, strict=True):
        torch.testing.assert_close(mine, reference, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mode", [None, "relu", "sigmoid"])
def test_siglip_gradcheck(mode):
    image, text = embeddings(3, 4, seed=6)
    scale, bias = torch.tensor(5.0, dtype=torch.float64), torch.tensor(-2.0, dtype=torch.float64)
    inputs = tuple(x.requires_grad_() for x in (image, text, scale, bias))
    assert torch.autograd.gradcheck(SigLipLoss(nonneg=mode), inputs)


def open_clip_reference(loss_class, mode):
    """open_clip's loss on the features as ours uses them: as given for ``mode=None``, else
    ``F.normalize(nonneg(x))`` (``"identity"``: normalised only; F.normalize makes a zero row zero too)."""

    def loss_fn(image, text, *scale_and_bias):
        if mode is not None:
            nonneg = F.relu if mode == "relu" else (lambda x: x)
            image, text = F.normalize(nonneg(image), dim=1), F.normalize(nonneg(text), dim=1)
        return loss_class()(image, text, *scale_and_bias)

    return loss_fn


LOSSES = [(ClipLoss, open_clip.loss.ClipLoss, clip), (SigLipLoss, open_clip.loss.SigLipLoss, siglip)]
SCALE_AND_BIAS = (14.3, -2.0)


def dead_features(batch_size, dim, seed=0):
    """Unnormalised image / text features with every unit negative: all dead after ReLU."""
    image, text = embeddings(batch_size, dim, seed)
    return -image.abs() - 0.1, -text.abs() - 0.1


@pytest.mark.parametrize(("ours", "theirs", "reference"), LOSSES)
@pytest.mark.parametrize("side", ["image", "text"])
@pytest.mark.parametrize("mode", ["relu", "rep_relu"])
def test_all_dead_side_raises(ours, theirs, reference, side, mode):
    image, text = embeddings(6, 8)
    dead_image, dead_text = dead_features(6, 8)
    image, text = (dead_image, text) if side == "image" else (image, dead_text)
    with pytest.raises(ValueError, match=f"{side}_features is dead"):
        ours(nonneg=mode)(image, text, *SCALE_AND_BIAS)
    # without the check the features get no gradient at all, which is why it raises
    loss, image_grad, text_grad = loss_and_grads(ours(nonneg=mode, check_finite=False), image, text, *SCALE_AND_BIAS)
    assert loss.item() == pytest.approx(reference(image.numpy(), text.numpy(), *SCALE_AND_BIAS, mode="relu"))
    assert not image_grad.any() and not text_grad.any()


@pytest.mark.parametrize(("ours", "theirs", "reference"), LOSSES)
@pytest.mark.parametrize("mode", ["relu", "rep_relu"])
def test_dead_rows_get_no_gradient_and_live_rows_match_open_clip(ours, theirs, reference, mode):
    generator = torch.Generator().manual_seed(7)
    image, text = torch.randn(2, 64, 32, generator=generator)
    text = text + image
    image[0] = -image[0].abs() - 0.1  # every unit of image 0 and text 9 dead after ReLU
    text[9] = -text[9].abs() - 0.1
    loss, image_grad, text_grad = loss_and_grads(ours(nonneg=mode), image, text, *SCALE_AND_BIAS)
    # The gradient through the map: ReLU's for relu, GELU's derivative for rep_relu.
    relu_image, relu_text = F.relu(image).requires_grad_(), F.relu(text).requires_grad_()
    expected = open_clip_reference(theirs, "identity")(relu_image, relu_text, *SCALE_AND_BIAS)
    expected.backward()
    derivative = (lambda x: (x > 0).float()) if mode == "relu" else gelu_derivative
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    sides = ((image_grad, relu_image.grad, image, 0), (text_grad, relu_text.grad, text, 9))
    for grad, relu_grad, features, dead in sides:
        norms = grad.norm(dim=1)
        live = torch.arange(64) != dead
        assert norms[dead] == 0 and norms[dead] <= 10 * norms[live].median() and (norms[live] > 0).all()
        torch.testing.assert_close(grad[live], (relu_grad * derivative(features))[live], rtol=1e-5, atol=1e-7)


def test_clip_dead_row_gradient_under_rep_relu_with_256_samples():
    # F.normalize's 1 / eps Jacobian gave a dead row a gradient ~1e6 times the live rows' here.
    image, text = embeddings(256, 128, seed=8, dtype=torch.float32)
    image[0] = -image[0].abs() - 0.1
    _, image_grad, _, _ = loss_and_grads(ClipLoss(nonneg="rep_relu"), image, text, torch.tensor(14.3))
    norms = image_grad.norm(dim=1)
    assert norms[0] <= 10 * norms[1:].median() and norms[1:].median() > 0


def gelu_derivative(x):
    return 0.5 * (1 + torch.erf(x / math.sqrt(2))) + x * torch.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)


LOW_PRECISION = [torch.float16, torch.bfloat16]


@pytest.mark.parametrize(("ours", "theirs", "reference"), LOSSES)
@pytest.mark.parametrize("dtype", LOW_PRECISION)
@pytest.mark.parametrize("mode", [None, "relu"])
def test_low_precision_inputs_are_computed_in_float32(ours, theirs, reference, dtype, mode):
    image, text = embeddings(32, 64, seed=9, dtype=torch.float32)
    low_image, low_text = image.to(dtype), text.to(dtype)
    scale, bias = torch.tensor(14.3, dtype=dtype), torch.tensor(-2.0, dtype=dtype)
    loss, *grads = loss_and_grads(ours(nonneg=mode), low_image, low_text, scale, bias)
    assert loss.dtype == torch.float32
    assert [g.dtype for g in grads] == [dtype] * 4  # every gradient arrives in its input's dtype
    rounded = [x.double().numpy() for x in (low_image, low_text)]
    rounded_scale_and_bias = scale.item(), bias.item()
    assert loss.item() == pytest.approx(reference(*rounded, *rounded_scale_and_bias, mode=mode), rel=1e-5, abs=1e-6)
    full = reference(image.double().numpy(), text.double().numpy(), *SCALE_AND_BIAS, mode=mode)
    assert loss.item() == pytest.approx(full, rel=1e-2)
    doubles = [x.double() for x in (low_image, low_text, scale, bias)]
    _, *expected = loss_and_grads(open_clip_reference(theirs, mode), *doubles)
    for mine, theirs_grad in zip(grads, expected, strict=True):  # up to the rounding of the 16-bit result
        atol = 1e-2 * theirs_grad.abs().max().item() + 1e-6  # the bias cancels in ClipLoss: its gradient is ~0
        torch.testing.assert_close(mine.double(), theirs_grad, rtol=1e-2, atol=atol)


def autocast_devices():
    cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
    return ["cpu", pytest.param("cuda", marks=cuda)]


@pytest.mark.parametrize(("ours", "theirs", "reference"), LOSSES)
@pytest.mark.parametrize("device", autocast_devices())
@pytest.mark.parametrize("dtype", LOW_PRECISION)
def test_inside_autocast_the_loss_is_float32(ours, theirs, reference, device, dtype, seed_and_one_thread):
    image, text = (x.to(device) for x in embeddings(32, 64, seed=10, dtype=torch.float32))
    towers = torch.nn.Linear(64, 64).to(device), torch.nn.Linear(64, 64).to(device)
    log_scale = torch.nn.Parameter(torch.tensor(math.log(14.3), device=device))
    loss_fn = ours(nonneg="relu", chunk_size=5) if ours is ClipLoss else ours(nonneg="relu")
    with torch.autocast(device, dtype=dtype):
        features = towers[0](image), towers[1](text)
        loss = loss_fn(*features, log_scale.exp(), -2.0)
        exact = loss_fn(image, text, 14.3, -2.0)  # float32 features are not demoted to 16-bit products
    assert features[0].dtype == dtype and loss.dtype == exact.dtype == torch.float32
    rounded = [f.detach().double().cpu().numpy() for f in features]
    assert loss.item() == pytest.approx(reference(*rounded, log_scale.exp().item(), -2.0, mode="relu"), rel=1e-5)
    full = reference(image.double().cpu().numpy(), text.double().cpu().numpy(), 14.3, -2.0, mode="relu")
    assert exact.item() == pytest.approx(full, rel=1e-5)
    loss.backward()
    assert towers[0].weight.grad.dtype == log_scale.grad.dtype == torch.float32


def test_single_process_rank_and_world_size_come_from_the_process_group():
    image, text = embeddings(4, 8)
    # no process group: rank 0 of 1, the same value as given explicitly
    assert ClipLoss()(image, text, 5.0).item() == pytest.approx(ClipLoss(rank=0, world_size=1)(image, text, 5.0).item())


@pytest.mark.parametrize("loss_class", [ClipLoss, SigLipLoss])
@pytest.mark.parametrize(
    ("image", "text", "scale", "argument"),
    [
        (torch.randn(8), torch.randn(4, 8), 1.0, "image_features"),
        (torch.randn(4, 8), torch.randn(3, 8), 1.0, "batch size"),
        (torch.randn(4, 8), torch.randn(4, 7), 1.0, "feature dim"),
        (torch.full((4, 8), float("nan")), torch.randn(4, 8), 1.0, "image_features"),
        (torch.randn(4, 8), torch.randn(4, 8), torch.tensor(float("inf")), "logit_scale"),
        (torch.randn(4, 8), torch.randn(4, 8), torch.ones(2), "logit_scale"),
    ],
)
def test_bad_inputs_name_the_argument(loss_class, image, text, scale, argument):
    with pytest.raises(ValueError, match=argument):
        loss_class()(image, text, scale, None)


def test_bad_arguments_name_the_argument():
    image, text = embeddings(4, 8)
    with pytest.raises(ValueError, match="nonneg"):
        ClipLoss(nonneg="square")
    with pytest.raises(ValueError, match="chunk_size"):
        ClipLoss(chunk_size=-1)
    with pytest.raises(ValueError, match="logit_bias"):
        ClipLoss()(image, text, 1.0, float("nan"))
    with pytest.raises(ValueError, match="world_size"):
        ClipLoss(rank=0, world_size=2)(image, text, 1.0)
    with pytest.raises(ValueError, match="rank"):
        SigLipLoss(rank=3, world_size=1)(image, text, 1.0, 0.0)
