"""ncl_ext.patch finds the embeddings of every CLIP-like class, in transformers 4.x and 5.x layouts.

Each class is built tiny from a small config (offline). The user-facing embeddings
(``image_embeds`` / ``text_embeds`` / ``pooler_output``, and ``get_*_features`` where the
class has them) must equal the unpatched model's, passed through torch.relu (and
re-normalised where the class normalises them), before and after ``save_pretrained`` +
``ncl_ext.from_pretrained``.
"""

import copy
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
import transformers

import ncl_ext

TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37)
TEXT = dict(TINY, vocab_size=99, pad_token_id=0, bos_token_id=1, eos_token_id=98)
VISION = dict(TINY, image_size=32, patch_size=8)
CLAP_AUDIO = dict(
    hidden_size=32,
    spec_size=64,
    num_mel_bins=64,
    window_size=4,
    patch_size=4,
    patch_stride=(4, 4),
    depths=[1, 1],
    num_attention_heads=[2, 2],
    patch_embeds_hidden_size=16,
    projection_dim=16,
    enable_fusion=False,
)

pytestmark = pytest.mark.usefixtures("seed_and_one_thread")


def text_inputs() -> dict:
    input_ids = torch.randint(2, 98, (3, 7))
    input_ids[:, -1] = 98  # end-of-text token, pooled by CLIP
    return {"input_ids": input_ids}


def image_inputs() -> dict:
    return {"pixel_values": torch.randn(3, 3, 32, 32)}


def patch_inputs() -> dict:
    """SigLIP 2 takes images as flattened 8x8 patches with a mask and a 4x4 grid shape."""
    return {
        "pixel_values": torch.randn(3, 16, 3 * 8 * 8),
        "pixel_attention_mask": torch.ones(3, 16, dtype=torch.long),
        "spatial_shapes": torch.tensor([[4, 4]] * 3),
    }


def audio_inputs() -> dict:
    return {"input_features": torch.randn(3, 1, 64, 64)}


@dataclass
class Case:
    build: Callable[[], torch.nn.Module]
    inputs: dict[str, Callable[[], dict]]  # modality -> input builder
    fields: dict[str, bool]  # forward output field -> whether the class L2-normalises it
    normalised_features: tuple[str, ...] = ()  # modalities whose get_*_features the class L2-normalises


def clip_like(config_class: str, **config) -> Callable[[], torch.nn.Module]:
    model_class = config_class.replace("Config", "Model")
    return lambda: getattr(transformers, model_class)(getattr(transformers, config_class)(**config))


DUAL = {"image_embeds": True, "text_embeds": True}
CASES = {
    "CLIPModel": Case(
        clip_like("CLIPConfig", text_config=TEXT, vision_config=VISION, projection_dim=16),
        {"image": image_inputs, "text": text_inputs},
        DUAL,
    ),
    "CLIPVisionModelWithProjection": Case(
        lambda: transformers.CLIPVisionModelWithProjection(transformers.CLIPVisionConfig(**VISION, projection_dim=16)),
        {"image": image_inputs},
        {"image_embeds": False},
    ),
    "CLIPTextModelWithProjection": Case(
        lambda: transformers.CLIPTextModelWithProjection(transformers.CLIPTextConfig(**TEXT, projection_dim=16)),
        {"text": text_inputs},
        {"text_embeds": False},
    ),
    "SiglipModel": Case(
        clip_like("SiglipConfig", text_config=TEXT, vision_config=VISION),
        {"image": image_inputs, "text": text_inputs},
        DUAL,
    ),
    "SiglipVisionModel": Case(
        lambda: transformers.SiglipVisionModel(transformers.SiglipVisionConfig(**VISION)),
        {"image": image_inputs},
        {"pooler_output": False},
    ),
    "SiglipTextModel": Case(
        lambda: transformers.SiglipTextModel(transformers.SiglipTextConfig(**TEXT)),
        {"text": text_inputs},
        {"pooler_output": False},
    ),
    "Siglip2Model": Case(
        clip_like("Siglip2Config", text_config=TEXT, vision_config=dict(TINY, patch_size=8, num_patches=16)),
        {"image": patch_inputs, "text": text_inputs},
        DUAL,
    ),
    "AltCLIPModel": Case(
        clip_like(
            "AltCLIPConfig",
            text_config=dict(TINY, vocab_size=99, project_dim=16, pad_token_id=0),
            vision_config=VISION,
            projection_dim=16,
        ),
        {"image": image_inputs, "text": text_inputs},
        DUAL,
    ),
    "ChineseCLIPModel": Case(
        clip_like("ChineseCLIPConfig", text_config=dict(TINY, vocab_size=99), vision_config=VISION, projection_dim=16),
        {"image": image_inputs, "text": text_inputs},
        DUAL,
    ),
    "ClapModel": Case(
        clip_like(
            "ClapConfig",
            text_config=dict(TINY, vocab_size=99, pad_token_id=1, max_position_embeddings=40),
            audio_config=CLAP_AUDIO,
            projection_dim=16,
        ),
        {"audio": audio_inputs, "text": text_inputs},
        {"audio_embeds": True, "text_embeds": True},
        ("audio", "text"),
    ),
}


def as_embedding(features) -> torch.Tensor:
    """get_*_features returns a tensor in transformers 4.x, an output with .pooler_output in 5.x."""
    return features if isinstance(features, torch.Tensor) else features.pooler_output


def user_facing_embeddings(model, case: Case, inputs: dict[str, dict]) -> dict[str, tuple[torch.Tensor, bool]]:
    """Every embedding the class exposes: name -> (tensor, normalised by the class)."""
    with torch.no_grad():
        out = model(**{key: value for modality in inputs.values() for key, value in modality.items()})
        embeddings = {field: (out[field], normalised) for field, normalised in case.fields.items()}
        for modality, modality_inputs in inputs.items():
            get_features = getattr(model, f"get_{modality}_features", None)
            if get_features is not None:
                features = as_embedding(get_features(**modality_inputs))
                embeddings[f"get_{modality}_features"] = (features, modality in case.normalised_features)
    return embeddings


@pytest.mark.parametrize("name", CASES)
def test_the_user_facing_embeddings_are_non_negative_before_and_after_reloading(name, tmp_path):
    case = CASES[name]
    model = case.build().eval()
    reference = copy.deepcopy(model)
    assert ncl_ext.patch(model) is model
    inputs = {modality: build() for modality, build in case.inputs.items()}

    patched = user_facing_embeddings(model, case, inputs)
    unpatched = user_facing_embeddings(reference, case, inputs)
    assert patched.keys() == unpatched.keys()
    for key, (embedding, normalised) in patched.items():
        expected = torch.relu(unpatched[key][0])
        torch.testing.assert_close(embedding, F.normalize(expected, dim=-1) if normalised else expected, msg=key)
        assert (embedding >= 0).all() and (embedding == 0).any(), key

    model.save_pretrained(tmp_path)
    loaded = ncl_ext.from_pretrained(tmp_path).eval()
    assert type(loaded) is type(model) and loaded.config.ncl_nonneg == model.config.ncl_nonneg
    for key, (embedding, _) in user_facing_embeddings(loaded, case, inputs).items():
        torch.testing.assert_close(embedding, patched[key][0], rtol=0, atol=0, msg=key)
        assert (embedding >= 0).all(), key


@pytest.mark.parametrize("name", ["CLIPVisionModelWithProjection", "CLIPModel"])
def test_an_explicit_projection_target_makes_that_embedding_non_negative(name, tmp_path):
    case = CASES[name]
    model = case.build().eval()
    reference = copy.deepcopy(model)
    ncl_ext.patch(model, target="visual_projection")
    assert model.config.ncl_nonneg["targets"] == [{"module": "visual_projection", "fields": None}]
    inputs = {modality: build() for modality, build in case.inputs.items()}
    patched = user_facing_embeddings(model, case, inputs)
    unpatched = user_facing_embeddings(reference, case, inputs)
    image_embeds, normalised = patched["image_embeds"]
    expected = torch.relu(unpatched["image_embeds"][0])
    torch.testing.assert_close(image_embeds, F.normalize(expected, dim=-1) if normalised else expected)
    if "text_embeds" in patched:  # the text side was not asked for
        torch.testing.assert_close(patched["text_embeds"][0], unpatched["text_embeds"][0], rtol=0, atol=0)

    model.save_pretrained(tmp_path)
    reloaded = user_facing_embeddings(ncl_ext.from_pretrained(tmp_path).eval(), case, inputs)
    torch.testing.assert_close(reloaded["image_embeds"][0], image_embeds, rtol=0, atol=0)


def test_a_multi_tower_model_with_unknown_embedding_modules_is_refused():
    xclip = transformers.XCLIPModel(transformers.XCLIPConfig(text_config=TEXT, vision_config=VISION, projection_dim=16))
    with pytest.raises(ValueError, match=r"cannot find the text and video embedding modules of XCLIPModel.*target="):
        ncl_ext.patch(xclip)
    assert not hasattr(xclip.config, "ncl_nonneg")
