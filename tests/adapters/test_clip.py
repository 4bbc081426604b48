"""CLIP with NCL, the adapter: nonneg_clip on open_clip models and HFCLIPView on Hugging Face ones.

Everything runs on tiny open_clip / Hugging Face models built offline from configs. The
reference for a non-negative model is the same weights unwrapped (a deep copy made before
wrapping) passed through torch.relu and F.normalize; checkpoints are checked with
open_clip's own loaders and transformers' save_pretrained.
"""

from __future__ import annotations

import copy
import pickle

import open_clip
import pytest
import torch
import torch.nn.functional as F

import ncl_ext
from ncl_ext.adapters.clip import HFCLIPView, NonNegativeCLIP, nonneg_clip
from ncl_ext.losses import ClipLoss
from tests._tiny_models import tiny_hf

VISION_VIT = dict(image_size=8, patch_size=4, width=16, layers=1, head_width=8, mlp_ratio=2.0)
VISION_RESNET = dict(image_size=32, layers=(1, 1, 1, 1), width=8)
TEXT = dict(context_length=8, vocab_size=100, width=16, heads=2, layers=1, mlp_ratio=2.0)
ARCHITECTURES = {
    "clip_vit": lambda: open_clip.CLIP(embed_dim=16, vision_cfg=VISION_VIT, text_cfg=TEXT),
    "clip_resnet": lambda: open_clip.CLIP(embed_dim=16, vision_cfg=VISION_RESNET, text_cfg=TEXT),
    "custom_text_with_bias": lambda: open_clip.CustomTextCLIP(
        embed_dim=16, vision_cfg=VISION_VIT, text_cfg=TEXT, init_logit_bias=-10.0
    ),
}


pytestmark = pytest.mark.usefixtures("seed_and_one_thread")


def inputs_for(model: torch.nn.Module, batch: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    size = model.visual.image_size
    size = size[0] if isinstance(size, tuple) else size
    return torch.randn(batch, 3, size, size), torch.randint(1, TEXT["vocab_size"], (batch, TEXT["context_length"]))


def wrapped_and_reference(name: str) -> tuple[NonNegativeCLIP, torch.nn.Module]:
    model = ARCHITECTURES[name]().eval()
    reference = copy.deepcopy(model)
    return nonneg_clip(model, mode="relu"), reference


# ------------------------------------------------------------------ nonneg_clip


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_embeddings_are_relu_of_the_original_through_every_entry_point(name):
    model, reference = wrapped_and_reference(name)
    images, texts = inputs_for(reference)
    with torch.no_grad():
        ref_image, ref_text = torch.relu(reference.encode_image(images)), torch.relu(reference.encode_text(texts))
        ref_logits = reference.logit_scale.exp() * F.normalize(ref_image, dim=-1) @ F.normalize(ref_text, dim=-1).T
        if reference.logit_bias is not None:
            ref_logits = ref_logits + reference.logit_bias
        exact = dict(rtol=0, atol=0)
        torch.testing.assert_close(model.encode_image(images), ref_image, **exact)
        torch.testing.assert_close(model.encode_text(texts), ref_text, **exact)
        torch.testing.assert_close(model.encode_image(images, normalize=True), F.normalize(ref_image, dim=-1), **exact)
        torch.testing.assert_close(model.encode_text(texts, normalize=True), F.normalize(ref_text, dim=-1), **exact)

        as_tuple = model(images, texts)
        model.output_dict = True
        as_dict = model(images, texts)
        logits_per_image, logits_per_text = model.get_logits(images, texts)
        intermediates = model.forward_intermediates(images, texts, output_logits=True)

    assert (ref_image == 0).any() and (ref_text == 0).any()  # the head really cuts something
    for image_features, text_features in (
        as_tuple[:2],
        (as_dict["image_features"], as_dict["text_features"]),
        (intermediates["image_features"], intermediates["text_features"]),
    ):
        for features in (image_features, text_features):
            assert (features >= 0).all()
            torch.testing.assert_close(features.norm(dim=-1), torch.ones(len(features)))
        torch.testing.assert_close(image_features, F.normalize(ref_image, dim=-1))
        torch.testing.assert_close(text_features, F.normalize(ref_text, dim=-1))
    torch.testing.assert_close(as_tuple[2], reference.logit_scale.exp())
    torch.testing.assert_close(as_dict["logit_scale"], reference.logit_scale.exp())
    torch.testing.assert_close(logits_per_image, ref_logits)
    torch.testing.assert_close(logits_per_text, ref_logits.T)
    torch.testing.assert_close(intermediates["image_logits"], ref_logits)
    has_bias = reference.logit_bias is not None
    assert len(as_tuple) == (4 if has_bias else 3) and ("logit_bias" in as_dict) == has_bias
    if has_bias:
        torch.testing.assert_close(as_tuple[3], reference.logit_bias)


def test_gradients_are_those_of_relu_on_the_original():
    model, reference = wrapped_and_reference("clip_vit")
    images, texts = inputs_for(reference)
    (model.encode_image(images).square().sum() + model.encode_text(texts).sum()).backward()
    image_part = torch.relu(reference.encode_image(images)).square().sum()
    expected = image_part + torch.relu(reference.encode_text(texts)).sum()
    expected.backward()
    for (name, param), ref_param in zip(model.model.named_parameters(), reference.parameters()):
        if ref_param.grad is None:
            assert param.grad is None, name
        else:
            torch.testing.assert_close(param.grad, ref_param.grad, msg=name)


def test_plain_loss_on_the_nonneg_model_equals_the_nonneg_loss_on_the_plain_model():
    # The two designs the recipe chooses between give the same NCL objective.
    model, reference = wrapped_and_reference("clip_vit")
    images, texts = inputs_for(reference)
    with torch.no_grad():
        image_features, text_features, scale = model(images, texts)
        plain_image, plain_text, plain_scale = reference(images, texts)
    expected = ClipLoss(nonneg="relu")(plain_image, plain_text, plain_scale)
    torch.testing.assert_close(ClipLoss()(image_features, text_features, scale), expected)
    torch.testing.assert_close(
        ClipLoss()(image_features, text_features, scale), open_clip.ClipLoss()(image_features, text_features, scale)
    )


def test_state_dict_has_open_clip_keys_and_checkpoints_load_both_ways(tmp_path):
    from safetensors.torch import save_file

    model, reference = wrapped_and_reference("custom_text_with_bias")
    images, texts = inputs_for(reference)
    state = model.state_dict()
    assert list(state) == list(reference.state_dict())

    fresh = nonneg_clip(ARCHITECTURES["custom_text_with_bias"]().eval())
    fresh.load_state_dict(state)  # wrapper -> wrapper
    torch.testing.assert_close(fresh(images, texts), model(images, texts), rtol=0, atol=0)

    save_file({k: v.contiguous() for k, v in state.items()}, tmp_path / "ncl.safetensors")
    plain = ARCHITECTURES["custom_text_with_bias"]().eval()
    open_clip.load_checkpoint(plain, str(tmp_path / "ncl.safetensors"))  # wrapper checkpoint -> open_clip
    torch.testing.assert_close(plain.encode_image(images), reference.encode_image(images), rtol=0, atol=0)

    torch.save(reference.state_dict(), tmp_path / "plain.pt")
    again = nonneg_clip(ARCHITECTURES["custom_text_with_bias"]().eval())
    open_clip.load_checkpoint(again, str(tmp_path / "plain.pt"))  # open_clip checkpoint -> wrapper
    torch.testing.assert_close(again.encode_text(texts), model.encode_text(texts), rtol=0, atol=0)


def test_the_interface_of_the_wrapped_model_stays_available():
    model, _ = wrapped_and_reference("clip_vit")
    assert model.visual is model.model.visual and model.logit_scale is model.model.logit_scale
    assert model.context_length == TEXT["context_length"] and model.mode == "relu"
    model.lock_image_tower()
    assert not any(p.requires_grad for p in model.model.visual.parameters())
    parameter_names = {name for name, _ in model.named_parameters()}
    assert model.no_weight_decay() and model.no_weight_decay() <= parameter_names

    copied = copy.deepcopy(model)
    pickled = pickle.loads(pickle.dumps(model))
    images, texts = inputs_for(model.model)
    for other in (copied, pickled):
        torch.testing.assert_close(other(images, texts), model(images, texts), rtol=0, atol=0)
    assert nonneg_clip(model, mode="relu") is model


def test_bad_arguments_name_what_was_expected():
    with pytest.raises(ValueError, match="open_clip CLIP or CustomTextCLIP"):
        nonneg_clip(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="mode='nope'"):
        nonneg_clip(ARCHITECTURES["clip_vit"](), mode="nope")
    with pytest.raises(ValueError, match="already a NonNegativeCLIP with mode='relu'"):
        nonneg_clip(nonneg_clip(ARCHITECTURES["clip_vit"]()), mode="softplus")
    with pytest.raises(ValueError, match="needs both image and text"):
        nonneg_clip(ARCHITECTURES["clip_vit"]()).forward_intermediates(torch.randn(1, 3, 8, 8), output_logits=True)


# ------------------------------------------------------------------ Hugging Face models


def embedding(output):
    return output if isinstance(output, torch.Tensor) else output.pooler_output


@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_hf_view_speaks_open_clip_and_is_non_negative_once_patched(kind):
    model = tiny_hf(kind)
    reference = copy.deepcopy(model)
    view = HFCLIPView(ncl_ext.patch(model))
    images, texts = torch.randn(3, 3, 16, 16), torch.randint(2, 80, (3, 16))
    texts[:, -1] = 1  # end of text
    with torch.no_grad():
        expected_image = F.normalize(torch.relu(embedding(reference.get_image_features(pixel_values=images))), dim=-1)
        expected_text = F.normalize(torch.relu(embedding(reference.get_text_features(input_ids=texts))), dim=-1)
        output = view(images, texts)
    torch.testing.assert_close(output[0], expected_image)
    torch.testing.assert_close(output[1], expected_text)
    assert (output[0] >= 0).all() and (output[1] >= 0).all()
    torch.testing.assert_close(output[2], reference.logit_scale.exp())
    assert len(output) == (4 if kind == "siglip" else 3)

    view.lock_image_tower(unlocked_groups=1)
    view.lock_text_tower(unlocked_layers=0)
    trainable = {name for name, p in view.named_parameters() if p.requires_grad}
    assert trainable and all("vision_model.encoder" not in n and "text_model" not in n for n in trainable)
    assert any("visual_projection" in n or "vision_model.head" in n for n in trainable)
    with pytest.raises(ValueError, match="Hugging Face dual encoder"):
        HFCLIPView(torch.nn.Linear(2, 2))
