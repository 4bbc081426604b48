"""ClipLoss and SigLipLoss: open_clip's losses, numpy references, gradients, tiling, bad input."""

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


@pytest.mark.parametrize("loss_fn", [ClipLoss(nonneg="relu"), SigLipLoss(nonneg="rep_relu")])
def test_all_dead_batch_gives_finite_loss_and_gradients(loss_fn):
    image, text = embeddings(6, 8)
    image, text = -image.abs() - 0.1, -text.abs() - 0.1
    loss, *grads = loss_and_grads(loss_fn, image, text, torch.tensor(10.0), torch.tensor(-1.0))
    assert torch.isfinite(loss)
    assert all(torch.isfinite(grad).all() for grad in grads)


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
