"""ncl_ext.patch / unpatch / from_pretrained on tiny HuggingFace models built offline.

The reference for every patched output is the same weights, unpatched (a deep copy made
before patching), passed through torch.relu (or torch.nn.functional.softplus).
"""

import copy
import sys
import typing
import warnings

import pytest
import torch
import torch.nn.functional as F
from transformers import (
    AutoModel,
    BertConfig,
    BertForSequenceClassification,
    BertModel,
    CLIPConfig,
    CLIPModel,
    DistilBertConfig,
    DistilBertModel,
    GPT2Config,
    GPT2LMHeadModel,
    GPT2Model,
    RobertaConfig,
    RobertaModel,
    SiglipConfig,
    SiglipModel,
    T5Config,
    T5Model,
    ViTConfig,
    ViTModel,
)

import ncl_ext
from ncl_ext.adapters import hf

TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37)
TEXT = dict(TINY, vocab_size=99, pad_token_id=0, bos_token_id=1, eos_token_id=98)
VISION = dict(TINY, image_size=32, patch_size=8)

ENCODERS = {  # name -> (model builder, inputs)
    "bert": (lambda: BertModel(BertConfig(**TEXT)), "text"),
    "roberta": (lambda: RobertaModel(RobertaConfig(**TEXT, max_position_embeddings=40)), "text"),
    "distilbert": (
        lambda: DistilBertModel(DistilBertConfig(vocab_size=99, dim=32, n_layers=2, n_heads=2, hidden_dim=37)),
        "text",
    ),
    "vit": (lambda: ViTModel(ViTConfig(**VISION)), "image"),
}
DUAL_ENCODERS = {
    "clip": lambda: CLIPModel(CLIPConfig(text_config=TEXT, vision_config=VISION, projection_dim=16)),
    "siglip": lambda: SiglipModel(SiglipConfig(text_config=TEXT, vision_config=VISION)),
}


pytestmark = pytest.mark.usefixtures("seed_and_one_thread")


@pytest.fixture
def auto_restore():
    """Every loader restores recorded heads for the duration of one test."""
    ncl_ext.enable_auto_restore()
    yield
    ncl_ext.enable_auto_restore(False)


def text_inputs(batch: int = 3, length: int = 7) -> dict:
    input_ids = torch.randint(2, 98, (batch, length))
    input_ids[:, -1] = 98  # end-of-text token, pooled by CLIP
    return {"input_ids": input_ids}


def image_inputs(batch: int = 3) -> dict:
    return {"pixel_values": torch.randn(batch, 3, 32, 32)}


def inputs_for(kind: str) -> dict:
    return text_inputs() if kind == "text" else image_inputs()


def patched_and_reference(build, **patch_kwargs):
    model = build().eval()
    reference = copy.deepcopy(model)
    return ncl_ext.patch(model, **patch_kwargs), reference


def embedding(features):
    """get_*_features returns a tensor in transformers 4.x, an output with .pooler_output in 5.x."""
    return features if isinstance(features, torch.Tensor) else features.pooler_output


@pytest.mark.parametrize("name", ENCODERS)
def test_encoder_embeddings_become_relu_of_the_original_and_the_rest_is_unchanged(name):
    build, kind = ENCODERS[name]
    model, reference = patched_and_reference(build)
    inputs = inputs_for(kind)
    with torch.no_grad():
        out = model(**inputs, output_hidden_states=True)
        ref = reference(**inputs, output_hidden_states=True)
    torch.testing.assert_close(out.last_hidden_state, torch.relu(ref.last_hidden_state), rtol=0, atol=0)
    if ref.get("pooler_output") is not None:
        torch.testing.assert_close(out.pooler_output, torch.relu(ref.pooler_output), rtol=0, atol=0)
    for hidden, ref_hidden in zip(out.hidden_states, ref.hidden_states, strict=True):  # the layers' own outputs
        torch.testing.assert_close(hidden, ref_hidden, rtol=0, atol=0)
    assert (out.hidden_states[-1] < 0).any()
    assert (out.last_hidden_state >= 0).all()
    assert 0.2 < (out.last_hidden_state == 0).float().mean() < 0.8  # about half the units are off


def test_task_model_classifies_the_non_negative_pooled_embedding():
    model, reference = patched_and_reference(lambda: BertForSequenceClassification(BertConfig(**TEXT, num_labels=3)))
    inputs = text_inputs()
    with torch.no_grad():
        expected = reference.classifier(torch.relu(reference.bert(**inputs).pooler_output))
        torch.testing.assert_close(model(**inputs).logits, expected, rtol=0, atol=0)


def test_tuple_outputs_keep_their_layout():
    model, reference = patched_and_reference(ENCODERS["bert"][0])
    inputs = text_inputs()
    with torch.no_grad():
        out = model(**inputs, return_dict=False)
        ref = reference(**inputs, return_dict=False)
    assert isinstance(out, tuple) and len(out) == len(ref)
    torch.testing.assert_close(out[0], torch.relu(ref[0]), rtol=0, atol=0)
    torch.testing.assert_close(out[1], torch.relu(ref[1]), rtol=0, atol=0)


@pytest.mark.parametrize("name", DUAL_ENCODERS)
def test_dual_encoder_embeddings_are_non_negative_through_every_entry_point(name):
    model, reference = patched_and_reference(DUAL_ENCODERS[name])
    text, images = text_inputs(), image_inputs()
    with torch.no_grad():
        image_features = embedding(model.get_image_features(**images))
        text_features = embedding(model.get_text_features(**text))
        out = model(**text, **images)
        ref_image = embedding(reference.get_image_features(**images))
        ref_text = embedding(reference.get_text_features(**text))
        ref = reference(**text, **images)
    torch.testing.assert_close(image_features, torch.relu(ref_image), rtol=0, atol=0)
    torch.testing.assert_close(text_features, torch.relu(ref_text), rtol=0, atol=0)
    torch.testing.assert_close(out.image_embeds, F.normalize(torch.relu(ref_image), dim=-1))
    torch.testing.assert_close(out.text_embeds, F.normalize(torch.relu(ref_text), dim=-1))
    assert (out.image_embeds >= 0).all() and (out.text_embeds >= 0).all()
    assert (image_features == 0).any() and (text_features == 0).any()
    torch.testing.assert_close(  # the towers' own hidden states are not touched
        out.vision_model_output.last_hidden_state, ref.vision_model_output.last_hidden_state, rtol=0, atol=0
    )


def test_gradients_flow_through_the_head():
    model, reference = patched_and_reference(ENCODERS["bert"][0])
    inputs = text_inputs()
    model(**inputs).pooler_output.sum().backward()
    torch.relu(reference(**inputs).pooler_output).sum().backward()
    for (name, param), ref_param in zip(model.named_parameters(), reference.parameters(), strict=True):
        if ref_param.grad is not None:
            torch.testing.assert_close(param.grad, ref_param.grad, msg=name)
    assert model.embeddings.word_embeddings.weight.grad.abs().sum() > 0


def test_patching_twice_is_a_no_op_and_a_different_patch_is_refused():
    model, reference = patched_and_reference(ENCODERS["bert"][0], mode="softplus")
    assert ncl_ext.patch(model, mode="softplus") is model
    inputs = text_inputs()
    with torch.no_grad():  # softplus applied once, not twice
        torch.testing.assert_close(model(**inputs).pooler_output, F.softplus(reference(**inputs).pooler_output))
    with pytest.raises(ValueError, match="already patched.*unpatch"):
        ncl_ext.patch(model, mode="relu")


def test_unpatch_restores_the_original_outputs():
    bert, bert_reference = patched_and_reference(ENCODERS["bert"][0])
    clip, clip_reference = patched_and_reference(DUAL_ENCODERS["clip"])
    for model in (bert, clip):
        assert ncl_ext.unpatch(model) is model
        assert not hasattr(model.config, "ncl_nonneg")
    inputs = text_inputs()
    with torch.no_grad():
        torch.testing.assert_close(bert(**inputs).pooler_output, bert_reference(**inputs).pooler_output, rtol=0, atol=0)
        torch.testing.assert_close(
            embedding(clip.get_text_features(**inputs)),
            embedding(clip_reference.get_text_features(**inputs)),
            rtol=0,
            atol=0,
        )


SAVED_MODELS = {
    "bert-classifier": (lambda: BertForSequenceClassification(BertConfig(**TEXT, num_labels=3)), "text"),
    "vit": (ENCODERS["vit"][0], "image"),
    "clip": (DUAL_ENCODERS["clip"], "both"),
    "siglip": (DUAL_ENCODERS["siglip"], "both"),
}


def outputs_of(model, kind: str) -> list[torch.Tensor]:
    with torch.no_grad():
        if kind == "both":
            text, images = text_inputs(), image_inputs()
            out = model(**text, **images)
            return [
                out.image_embeds,
                out.text_embeds,
                embedding(model.get_image_features(**images)),
                embedding(model.get_text_features(**text)),
            ]
        out = model(**inputs_for(kind))
        return [value for value in out.values() if isinstance(value, torch.Tensor)]


@pytest.mark.parametrize("name", SAVED_MODELS)
def test_save_pretrained_then_from_pretrained_reproduces_the_outputs(name, tmp_path):
    build, kind = SAVED_MODELS[name]
    model = ncl_ext.patch(build().eval())
    torch.manual_seed(1)
    expected = outputs_of(model, kind)
    model.save_pretrained(tmp_path)
    loaded = ncl_ext.from_pretrained(tmp_path).eval()
    assert type(loaded) is type(model)
    assert loaded.config.ncl_nonneg == model.config.ncl_nonneg
    torch.manual_seed(1)
    for got, want in zip(outputs_of(loaded, kind), expected, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_plain_automodel_load_is_unpatched_until_patch_restores_the_recorded_head(tmp_path):
    classifier = ncl_ext.patch(BertForSequenceClassification(BertConfig(**TEXT, num_labels=3)).eval())
    classifier.save_pretrained(tmp_path)
    loaded = AutoModel.from_pretrained(tmp_path).eval()  # the backbone: a BertModel
    assert type(loaded) is BertModel and loaded.config.ncl_nonneg == classifier.config.ncl_nonneg
    inputs = text_inputs()
    with torch.no_grad():
        assert (loaded(**inputs).last_hidden_state < 0).any()  # no hook restores the head unasked
        assert ncl_ext.patch(loaded) is loaded  # the recorded patch: its head comes back
        torch.testing.assert_close(loaded(**inputs).pooler_output, classifier.bert(**inputs).pooler_output)
        assert (loaded(**inputs).last_hidden_state >= 0).all()


def test_enable_auto_restore_lets_plain_automodel_restore_the_head(tmp_path, auto_restore):
    classifier = ncl_ext.patch(BertForSequenceClassification(BertConfig(**TEXT, num_labels=3)).eval())
    clip = ncl_ext.patch(DUAL_ENCODERS["clip"]().eval())
    classifier.save_pretrained(tmp_path / "bert")
    clip.save_pretrained(tmp_path / "clip")

    backbone = AutoModel.from_pretrained(tmp_path / "bert").eval()  # a BertModel, not the classifier
    assert type(backbone) is BertModel
    inputs = text_inputs()
    with torch.no_grad():
        torch.testing.assert_close(backbone(**inputs).pooler_output, classifier.bert(**inputs).pooler_output)
        assert (backbone(**inputs).last_hidden_state >= 0).all()

    loaded_clip = AutoModel.from_pretrained(tmp_path / "clip").eval()
    images = image_inputs()
    with torch.no_grad():
        features = embedding(loaded_clip.get_image_features(**images))
        torch.testing.assert_close(features, embedding(clip.get_image_features(**images)), rtol=0, atol=0)
    assert (features >= 0).all() and (features == 0).any()

    ncl_ext.enable_auto_restore(False)
    with torch.no_grad():
        assert (AutoModel.from_pretrained(tmp_path / "bert")(**inputs).last_hidden_state < 0).any()


def test_a_model_built_from_a_patched_config_has_the_head_only_with_auto_restore():
    model = ncl_ext.patch(ENCODERS["bert"][0]().eval())

    def rebuilt() -> BertModel:
        built = BertModel(copy.deepcopy(model.config)).eval()
        built.load_state_dict(model.state_dict())
        return built

    inputs = text_inputs()
    with torch.no_grad():
        expected = model(**inputs).last_hidden_state
        assert (rebuilt()(**inputs).last_hidden_state < 0).any()
        ncl_ext.enable_auto_restore()
        try:
            restored = rebuilt()
        finally:
            ncl_ext.enable_auto_restore(False)
        torch.testing.assert_close(restored(**inputs).last_hidden_state, expected, rtol=0, atol=0)


def test_patch_leaves_a_config_shared_with_other_models_untouched(tmp_path, auto_restore):
    config = BertConfig(**TEXT)
    patched, sibling = BertModel(config).eval(), BertModel(config).eval()
    ncl_ext.patch(patched)
    assert not hasattr(config, "ncl_nonneg") and sibling.config is config
    assert patched.config is not config and patched.config.ncl_nonneg["mode"] == "relu"
    assert not any(vars(module).get("config") is config for module in patched.modules())
    inputs = text_inputs()
    with torch.no_grad():
        later = BertModel(config).eval()  # built from the shared config after the patch, auto restore on
        assert (later(**inputs).last_hidden_state < 0).any()
        sibling.save_pretrained(tmp_path)
        with pytest.warns(UserWarning, match="records no non-negative head"):
            reloaded = ncl_ext.from_pretrained(tmp_path).eval()
        assert (reloaded(**inputs).last_hidden_state < 0).any()

        # unpatch edits only its own model's config too
        twin = BertModel(patched.config).eval()  # shares the patched model's config (and record)
        ncl_ext.unpatch(ncl_ext.patch(twin))
        assert patched.config.ncl_nonneg["mode"] == "relu" and (patched(**inputs).last_hidden_state >= 0).all()
        assert not hasattr(twin.config, "ncl_nonneg") and (twin(**inputs).last_hidden_state < 0).any()


def test_patch_keeps_the_sub_configs_of_a_dual_encoder_consistent():
    config = CLIPConfig(text_config=TEXT, vision_config=VISION, projection_dim=16)
    clip = CLIPModel(config)
    shared_vision = clip.vision_model.config is clip.config.vision_config
    ncl_ext.patch(clip)
    assert clip.config is not config and not hasattr(config, "ncl_nonneg")
    assert (clip.vision_model.config is clip.config.vision_config) == shared_vision
    assert clip.vision_model.config is not config.vision_config


def test_a_record_the_model_does_not_carry_is_replaced_with_a_warning():
    model = ncl_ext.patch(ENCODERS["bert"][0]().eval())
    built = BertModel(model.config).eval()  # carries the record, not the head
    with pytest.warns(UserWarning, match="does not carry"):
        ncl_ext.patch(built, mode="softplus")
    assert built.config.ncl_nonneg["mode"] == "softplus" and model.config.ncl_nonneg["mode"] == "relu"


def test_from_pretrained_of_an_unpatched_checkpoint_warns(tmp_path):
    ENCODERS["bert"][0]().save_pretrained(tmp_path)
    with pytest.warns(UserWarning, match="records no non-negative head"):
        model = ncl_ext.from_pretrained(tmp_path)
    assert not hasattr(model.config, "ncl_nonneg")


def test_explicit_targets_field_and_submodule():
    model, reference = patched_and_reference(ENCODERS["bert"][0], target="pooler_output")
    inputs = text_inputs()
    with torch.no_grad():
        out, ref = model(**inputs), reference(**inputs)
    torch.testing.assert_close(out.last_hidden_state, ref.last_hidden_state, rtol=0, atol=0)
    torch.testing.assert_close(out.pooler_output, torch.relu(ref.pooler_output), rtol=0, atol=0)

    # a submodule named relative to the backbone ("pooler") is stored relative to the model
    classifier = BertForSequenceClassification(BertConfig(**TEXT)).eval()
    reference = copy.deepcopy(classifier)
    ncl_ext.patch(classifier, target=["pooler"])
    assert classifier.config.ncl_nonneg["targets"] == [{"module": "bert.pooler", "fields": None}]
    assert classifier.config.ncl_nonneg["base_model"] == "bert"
    with torch.no_grad():
        torch.testing.assert_close(
            classifier.bert(**inputs).pooler_output, torch.relu(reference.bert(**inputs).pooler_output)
        )


def test_a_submodule_outside_the_backbone_is_a_valid_target(tmp_path):
    model, reference = patched_and_reference(
        lambda: BertForSequenceClassification(BertConfig(**TEXT, num_labels=3)), target="classifier"
    )
    assert model.config.ncl_nonneg["targets"] == [{"module": "classifier", "fields": None}]
    inputs = text_inputs()
    with torch.no_grad():
        torch.testing.assert_close(model(**inputs).logits, torch.relu(reference(**inputs).logits), rtol=0, atol=0)
        model.save_pretrained(tmp_path)
        torch.testing.assert_close(ncl_ext.from_pretrained(tmp_path)(**inputs).logits, model(**inputs).logits)


def test_from_pretrained_builds_the_model_class_asked_for(tmp_path):
    classifier = ncl_ext.patch(BertForSequenceClassification(BertConfig(**TEXT, num_labels=3)).eval())
    classifier.save_pretrained(tmp_path)
    inputs = text_inputs()
    for model_class in (BertModel, AutoModel):
        backbone = ncl_ext.from_pretrained(tmp_path, model_class=model_class).eval()
        assert type(backbone) is BertModel
        with torch.no_grad():
            out, expected = backbone(**inputs), classifier.bert(**inputs)
        torch.testing.assert_close(out.last_hidden_state, expected.last_hidden_state, rtol=0, atol=0)
        assert (out.last_hidden_state >= 0).all()
    with pytest.raises(ValueError, match="model_class must be a transformers model class"):
        ncl_ext.from_pretrained(tmp_path, model_class="BertModel")


def test_from_pretrained_of_a_missing_path_says_so(tmp_path):
    for missing in (tmp_path / "missing", str(tmp_path / "missing"), "./missing-folder"):
        with pytest.raises(FileNotFoundError, match="does not exist; pass the folder written by save_pretrained"):
            ncl_ext.from_pretrained(missing)
    with pytest.raises(FileNotFoundError, match="neither a local folder nor a model id"):
        ncl_ext.from_pretrained("no-such-model-anywhere")  # a valid hub id; the tests run offline


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("pooled", r"neither a tensor output field nor a submodule.*'pooler_output'.*'embeddings', 'encoder'"),
        ("hidden_states", r"'hidden_states' is not a tensor field.*\['last_hidden_state', 'pooler_output'\]"),
        (["pooler_output", "attentions"], r"'attentions' is not a tensor field"),
        (["pooler_output", 3], r"target must be None, an output field"),
    ],
)
def test_a_wrong_target_names_what_to_pass(target, message):
    model = BertForSequenceClassification(BertConfig(**TEXT))
    with pytest.raises(ValueError, match=message):
        ncl_ext.patch(model, target=target)
    assert not hasattr(model.config, "ncl_nonneg")


GPT2 = dict(n_embd=32, n_layer=2, n_head=2, vocab_size=99, bos_token_id=1, eos_token_id=98)


def test_unsupported_models_and_modes_are_refused():
    t5 = T5Model(T5Config(vocab_size=99, d_model=32, d_kv=16, d_ff=37, num_layers=2, num_heads=2))
    with pytest.raises(ValueError, match=r"encoder-decoder.*no single embedding output.*target=.*'encoder'"):
        ncl_ext.patch(t5)
    for language_model in (GPT2LMHeadModel(GPT2Config(**GPT2)), GPT2Model(GPT2Config(**GPT2))):
        with pytest.raises(ValueError, match=r"is a language model.*pass target=.*'last_hidden_state'"):
            ncl_ext.patch(language_model)
        assert not hasattr(language_model.config, "ncl_nonneg") and not hf._carries_heads(language_model)
    with pytest.raises(ValueError, match="PreTrainedModel.*make_nonneg"):
        ncl_ext.patch(torch.nn.Linear(4, 4))
    with pytest.raises(ValueError, match="mode='tanh' is not a known mode"):
        ncl_ext.patch(ENCODERS["bert"][0](), mode="tanh")


def test_a_language_model_accepts_an_explicit_target():
    model, reference = patched_and_reference(lambda: GPT2Model(GPT2Config(**GPT2)), target="last_hidden_state")
    inputs = text_inputs()
    with torch.no_grad():
        expected = torch.relu(reference(**inputs).last_hidden_state)
        torch.testing.assert_close(model(**inputs).last_hidden_state, expected, rtol=0, atol=0)


def test_make_nonneg_refuses_a_transformers_model_and_points_to_patch():
    with pytest.raises(ValueError, match=r"transformers BertModel.*\.config.*ncl_ext\.patch\(model, mode='relu'\)"):
        ncl_ext.make_nonneg(ENCODERS["bert"][0]())
    wrapped = ncl_ext.make_nonneg(torch.nn.Linear(4, 3))  # every other module still wraps
    assert (wrapped(torch.randn(5, 4)) >= 0).all()


def test_an_encoder_decoder_model_accepts_an_explicit_target():
    t5 = T5Model(T5Config(vocab_size=99, d_model=32, d_kv=16, d_ff=37, num_layers=2, num_heads=2)).eval()
    reference = copy.deepcopy(t5)
    ncl_ext.patch(t5, target="encoder")
    inputs = text_inputs()
    with torch.no_grad():
        out = t5(**inputs, decoder_input_ids=inputs["input_ids"])
        ref = reference.encoder(**inputs).last_hidden_state
    torch.testing.assert_close(out.encoder_last_hidden_state, torch.relu(ref), rtol=0, atol=0)


def test_copies_of_a_patched_model_keep_the_head():
    model, reference = patched_and_reference(ENCODERS["bert"][0])
    duplicate = copy.deepcopy(model)
    inputs = text_inputs()
    with torch.no_grad():
        torch.testing.assert_close(duplicate(**inputs).pooler_output, torch.relu(reference(**inputs).pooler_output))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ncl_ext.unpatch(duplicate)  # removing the copy's head leaves the original patched
    with torch.no_grad():
        assert (model(**inputs).last_hidden_state >= 0).all()
        assert (duplicate(**inputs).last_hidden_state < 0).any()


def test_patch_unpatch_and_from_pretrained_preserve_the_model_class_in_their_types():
    for function in (ncl_ext.patch, ncl_ext.unpatch):
        hints = typing.get_type_hints(function)
        assert hints["model"] is hints["return"] is hf.ModelT
        assert hf.ModelT.__bound__ is torch.nn.Module
    if sys.version_info >= (3, 11):  # typing.get_overloads
        with_class = typing.get_overloads(hf.from_pretrained)[0].__annotations__
        assert with_class["model_class"] == "type[ModelT]" and with_class["return"] == "ModelT"
