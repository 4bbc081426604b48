"""ncl_ext.models: contrastive models and (non-negative) classifiers on real torchvision, timm and HF models."""

import copy

import numpy as np
import pytest
import torch
from torch import nn

from ncl_ext.models import (
    ContrastiveModel,
    NonNegativeClassifier,
    SmallCNN,
    build_backbone,
    extract_features,
    resnet18_cifar,
    resnet18_imagenet,
)

DIGITS = (1, 8, 8)


def variant_options(variant, projector_dims=(2048, 512)):
    """The paper's supervised table rows (as the supervised recipe builds them)."""
    nce = variant.startswith("nce")
    return {"nonneg": "relu" if nce else None, "nonneg_weights": nce,
            "projector_dims": projector_dims if variant.endswith("_mlp") else None}


CLASSIFIER_VARIANTS = ("ce", "nce", "ce_mlp", "nce_mlp")


def digits_batch(n=6, seed=0):
    return torch.randn(n, *DIGITS, generator=torch.Generator().manual_seed(seed))


def numpy_projector(features, projector):
    """Independent eval-mode Linear-BN-ReLU-Linear in numpy, from the module's weights."""
    first, norm, _, last = projector
    hidden = features @ first.weight.detach().numpy().T
    hidden = (hidden - norm.running_mean.numpy()) / np.sqrt(norm.running_var.numpy() + norm.eps)
    hidden = np.maximum(hidden * norm.weight.detach().numpy() + norm.bias.detach().numpy(), 0)
    return hidden @ last.weight.detach().numpy().T + last.bias.detach().numpy()


# ------------------------------------------------------------------ ContrastiveModel


def test_contrastive_model_shapes_and_projector_match_a_numpy_reference():
    model = ContrastiveModel(SmallCNN(), projector_dims=(64, 32)).eval()
    assert (model.feature_dim, model.projection_dim) == (128, 32)
    x = digits_batch()
    with torch.no_grad():
        out = model(x)
        backbone_features = model.backbone(x)
    assert out.features.shape == (6, 128) and out.projections.shape == (6, 32)
    torch.testing.assert_close(out.features, backbone_features)
    expected = numpy_projector(out.features.numpy().astype(np.float64), model.projector)
    np.testing.assert_allclose(out.projections.numpy(), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("mode", ["relu", "rep_relu"])
def test_ncl_projections_are_the_non_negative_map_of_cl_projections(mode):
    cl = ContrastiveModel(SmallCNN(), projector_dims=(64, 32), nonneg=None).eval()
    ncl = ContrastiveModel(SmallCNN(), projector_dims=(64, 32), nonneg=mode).eval()
    ncl.load_state_dict(cl.state_dict())  # the head has no parameters: CL and NCL share keys
    x = digits_batch(16)
    with torch.no_grad():
        z_cl, z_ncl = cl(x).projections, ncl(x).projections
    assert (z_cl < 0).float().mean() > 0.2  # CL features are dense and signed
    assert (z_ncl >= 0).all()
    np.testing.assert_allclose(z_ncl.numpy(), np.maximum(z_cl.numpy(), 0), atol=1e-6)


@pytest.mark.parametrize("nonneg", [None, "relu"])
def test_gradients_reach_every_backbone_parameter(nonneg):
    model = ContrastiveModel(SmallCNN(), projector_dims=(64, 32), nonneg=nonneg).train()
    out = model(digits_batch(8))
    (out.projections - 0.1).square().sum().backward()
    for name, parameter in model.backbone.named_parameters():
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), name
    assert model.backbone.layers[0].weight.grad.abs().sum() > 0


def test_contrastive_state_dict_round_trip_through_safetensors(tmp_path):
    from safetensors.torch import load_model, save_model

    model = ContrastiveModel(SmallCNN(), projector_dims=(64, 32), nonneg="relu")
    model.train()
    model(digits_batch(8))  # moves the BatchNorm running statistics away from their init
    model.eval()
    save_model(model, str(tmp_path / "model.safetensors"))
    restored = ContrastiveModel(SmallCNN(), projector_dims=(64, 32), nonneg="relu")
    load_model(restored, str(tmp_path / "model.safetensors"))
    restored.eval()
    x = digits_batch(4, seed=1)
    with torch.no_grad():
        for expected, actual in zip(model(x), restored(x), strict=True):
            torch.testing.assert_close(actual, expected, rtol=0, atol=0)


def test_resnet18_cifar_and_imagenet_stems():
    backbone = resnet18_cifar()
    assert backbone.conv1.kernel_size == (3, 3) and backbone.conv1.stride == (1, 1)
    assert isinstance(backbone.maxpool, nn.Identity) and isinstance(backbone.fc, nn.Identity)
    model = ContrastiveModel(backbone, projector_dims=(2048, 256), nonneg="rep_relu").eval()
    assert model.feature_dim == 512
    with torch.no_grad():
        out = model(torch.randn(2, 3, 32, 32))
    assert out.features.shape == (2, 512) and out.projections.shape == (2, 256)

    imagenet = resnet18_imagenet()
    assert imagenet.conv1.kernel_size == (7, 7) and imagenet.conv1.stride == (2, 2)
    assert isinstance(imagenet.maxpool, nn.MaxPool2d) and isinstance(imagenet.fc, nn.Identity)
    named = build_backbone("resnet18_cifar", in_channels=1)
    assert named.conv1.in_channels == 1 and named.conv1.kernel_size == (3, 3)


@pytest.mark.parametrize(
    "name, kwargs, shape",
    [("timm:resnet10t", {}, (3, 32, 32)), ("timm:vit_tiny_patch16_224", {"img_size": 32, "depth": 1}, (3, 32, 32))],
)
def test_timm_backbones(name, kwargs, shape):
    backbone = build_backbone(name, **kwargs)
    model = ContrastiveModel(backbone, projector_dims=(64, 16), nonneg="relu").eval()
    assert model.feature_dim == backbone.num_features  # timm's own attribute, not the dry pass
    with torch.no_grad():
        out = model(torch.randn(2, *shape))
    assert out.projections.shape == (2, 16) and (out.projections >= 0).all()


def tiny_vit_config(**extra):
    from transformers import ViTConfig

    return ViTConfig(
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        image_size=16,
        patch_size=8,
        **extra,
    )


def tiny_hf_resnet_config(**extra):
    from transformers import ResNetConfig

    return ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic", **extra)


def test_hf_vision_models_use_pooler_output_or_mean_hidden_state(tmp_path):
    from transformers import ResNetModel, ViTModel

    x = torch.randn(2, 3, 16, 16)
    vit = ViTModel(tiny_vit_config()).eval()
    model = ContrastiveModel(vit, projector_dims=(16, 8)).eval()
    assert model.feature_dim == 32
    with torch.no_grad():
        torch.testing.assert_close(model(x).features, vit(x).pooler_output)

    no_pooler = ViTModel(tiny_vit_config(), add_pooling_layer=False).eval()
    with torch.no_grad():
        expected = no_pooler(x).last_hidden_state.mean(dim=1)
        torch.testing.assert_close(ContrastiveModel(no_pooler, projector_dims=(8,))(x).features, expected)

    resnet = ResNetModel(tiny_hf_resnet_config()).eval()
    with torch.no_grad():
        features = ContrastiveModel(resnet, projector_dims=(8,))(torch.randn(2, 3, 32, 32)).features
    assert features.shape == (2, 16)

    vit.save_pretrained(tmp_path / "vit")
    loaded = build_backbone(f"hf:{tmp_path / 'vit'}", in_channels=3).eval()
    with pytest.raises(ValueError, match="takes 3-channel images"):
        build_backbone(f"hf:{tmp_path / 'vit'}", in_channels=1)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x).pooler_output, vit(x).pooler_output)


class TupleBackbone(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(5, 3)

    def forward(self, x):
        return self.linear(x), self.linear(x).sum()


def test_backbones_without_findable_features_give_one_line_errors():
    cases = [
        (nn.Conv2d(3, 4, 3), "pool"),  # returns a spatial feature map
        (TupleBackbone(), "output_field"),  # a tuple: which item?
        (nn.Linear(5, 3), "feature_dim"),  # no image shape it accepts
    ]
    for backbone, hint in cases:
        with pytest.raises(ValueError, match=hint) as error:
            ContrastiveModel(
                backbone, projector_dims=(8,), input_shape=(5,) if isinstance(backbone, TupleBackbone) else None
            )
        assert "\n" not in str(error.value)
    model = ContrastiveModel(TupleBackbone(), projector_dims=(4,), output_field=0, input_shape=(5,))
    assert model.feature_dim == 3
    assert ContrastiveModel(nn.Linear(5, 3), feature_dim=3, projector_dims=(4,))(
        torch.randn(2, 5)
    ).projections.shape == (2, 4)
    with pytest.raises(ValueError, match="output_field='missing'"):
        extract_features({"pooler_output": torch.ones(2, 3)}, "missing")


def test_bad_arguments_and_backbone_names_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="nonneg='tanh'"):
        ContrastiveModel(SmallCNN(), nonneg="tanh")
    with pytest.raises(ValueError, match="projector_dims"):
        ContrastiveModel(SmallCNN(), projector_dims=(64, 0))
    with pytest.raises(ValueError, match="backbone must be a torch.nn.Module"):
        ContrastiveModel("resnet18")
    with pytest.raises(ValueError, match="is unknown"):
        build_backbone("resnet19_cifar")
    with pytest.raises(ValueError, match="timm has no model"):
        build_backbone("timm:not_a_model_name")
    with pytest.raises(FileNotFoundError, match="config.json"):
        build_backbone(f"hf:{tmp_path / 'missing'}")


# ------------------------------------------------------------------ NonNegativeClassifier


def signed_cnn():
    return SmallCNN(final_relu=False)  # pooled features of both signs


def test_nce_features_are_non_negative_and_ce_features_unchanged():
    ce = NonNegativeClassifier(signed_cnn(), num_classes=10, nonneg=None).eval()
    nce = NonNegativeClassifier(signed_cnn(), num_classes=10, nonneg="relu").eval()
    nce.load_state_dict(ce.state_dict())
    assert ce.classifier.bias is None and nce.classifier.bias is None
    assert NonNegativeClassifier(SmallCNN(), 10, bias=True).classifier.bias is not None
    x = digits_batch(16)
    with torch.no_grad():
        backbone_features = ce.backbone(x).numpy()
        ce_out, nce_out = ce(x, return_features=True), nce(x, return_features=True)
        torch.testing.assert_close(nce(x), nce_out.logits)
    np.testing.assert_array_equal(ce_out.features.numpy(), backbone_features)
    np.testing.assert_allclose(nce_out.features.numpy(), np.maximum(backbone_features, 0), atol=0)
    weight = nce.classifier.weight.detach().numpy()
    np.testing.assert_allclose(
        nce_out.logits.numpy(), np.maximum(backbone_features, 0) @ weight.T, rtol=1e-5, atol=1e-5
    )
    assert (backbone_features < 0).any() and (nce_out.features >= 0).all()


def test_nce_without_projector_equals_ce_on_a_relu_ended_backbone():
    ce = NonNegativeClassifier(SmallCNN(), num_classes=10).eval()
    nce = NonNegativeClassifier(SmallCNN(), num_classes=10, nonneg="relu").eval()
    nce.load_state_dict(ce.state_dict())
    x = digits_batch(8)
    with torch.no_grad():
        assert (ce.penultimate(x) >= 0).all()  # ReLU then average pooling
        torch.testing.assert_close(nce(x), ce(x), rtol=0, atol=0)


def test_nce_with_non_negative_class_weights_matches_a_numpy_reference():
    """The paper's NCE: logits = relu(f(x)) relu(W)^T; on a ReLU-ended backbone this differs from CE."""
    ce = NonNegativeClassifier(SmallCNN(), num_classes=10).eval()
    nce = NonNegativeClassifier(SmallCNN(), num_classes=10, nonneg="relu", nonneg_weights=True).eval()
    assert (nce.classifier.weight >= 0).all()  # initialised as |W|: no class weight starts dead
    nce.load_state_dict(ce.state_dict())  # signed weights, so the map on them is visible
    x = digits_batch(8)
    with torch.no_grad():
        features = nce.backbone(x).numpy()
        logits = nce(x)
    weight = ce.classifier.weight.detach().numpy()
    expected = np.maximum(features, 0) @ np.maximum(weight, 0).T
    np.testing.assert_allclose(logits.numpy(), expected, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(logits, ce(x).detach())
    torch.testing.assert_close(nce.class_weights(), ce.classifier.weight.clamp_min(0))

    trained = NonNegativeClassifier(SmallCNN(), 10, nonneg="relu", nonneg_weights=True).train()
    nn.functional.cross_entropy(trained(digits_batch(8)), torch.arange(8)).backward()
    assert trained.backbone.layers[0].weight.grad.abs().sum() > 0
    assert trained.classifier.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="nonneg_weights=True needs a nonneg mode"):
        NonNegativeClassifier(SmallCNN(), 10, nonneg_weights=True)


def test_classifier_gradients_and_state_dict_round_trip(tmp_path):
    model = NonNegativeClassifier(SmallCNN(), num_classes=10, nonneg="relu", projector_dims=(64, 32)).train()
    loss = nn.functional.cross_entropy(model(digits_batch(8)), torch.arange(8))
    loss.backward()
    assert all(p.grad is not None for p in model.backbone.parameters())
    assert model.backbone.layers[0].weight.grad.abs().sum() > 0
    torch.save(model.state_dict(), tmp_path / "model.pt")
    restored = NonNegativeClassifier(SmallCNN(), num_classes=10, nonneg="relu", projector_dims=(64, 32))
    restored.load_state_dict(torch.load(tmp_path / "model.pt", weights_only=True))
    model.eval(), restored.eval()
    x = digits_batch(4, seed=2)
    with torch.no_grad():
        torch.testing.assert_close(restored(x), model(x), rtol=0, atol=0)


def test_the_four_variants_of_the_paper_table():
    x = digits_batch(16)
    for variant in CLASSIFIER_VARIANTS:
        model = NonNegativeClassifier(signed_cnn(), 10, **variant_options(variant, projector_dims=(64, 32))).eval()
        with torch.no_grad():
            logits, features = model(x, return_features=True)
        assert logits.shape == (16, 10)
        assert model.classifier.in_features == (32 if variant.endswith("_mlp") else 128)
        assert isinstance(model.projector, nn.Sequential) == variant.endswith("_mlp")
        assert (model.nonneg == "relu") == variant.startswith("nce")
        if variant.startswith("nce"):
            assert (features >= 0).all()
        else:
            assert (features < 0).any()


def _torchvision_classifier():
    import torchvision
    from torchvision.models.feature_extraction import create_feature_extractor

    model = torchvision.models.resnet18(num_classes=7).eval()
    extractor = create_feature_extractor(copy.deepcopy(model), {"flatten": "features"})
    return model, (3, 32, 32), lambda x: extractor(x)["features"], 512


def _timm_classifier():
    import timm

    model = timm.create_model("resnet10t", pretrained=False, num_classes=7).eval()
    reference = copy.deepcopy(model)
    return model, (3, 32, 32), lambda x: reference.forward_head(reference.forward_features(x), pre_logits=True), 512


def _hf_vit_classifier():
    from transformers import ViTForImageClassification

    model = ViTForImageClassification(tiny_vit_config(num_labels=7)).eval()
    reference = copy.deepcopy(model)
    return model, (3, 16, 16), lambda x: reference.vit(x).last_hidden_state[:, 0], 32


def _hf_resnet_classifier():
    from transformers import ResNetForImageClassification

    model = ResNetForImageClassification(tiny_hf_resnet_config(num_labels=7)).eval()
    reference = copy.deepcopy(model)
    return model, (3, 32, 32), lambda x: reference.resnet(x).pooler_output.flatten(1), 16


@pytest.mark.parametrize(
    "source", [_torchvision_classifier, _timm_classifier, _hf_vit_classifier, _hf_resnet_classifier]
)
def test_from_classifier_replaces_the_head_for_every_variant(source):
    original, shape, reference_features, dim = source()
    x = torch.randn(3, *shape)
    with torch.no_grad():
        expected = reference_features(x)
    for variant in CLASSIFIER_VARIANTS:
        classifier = copy.deepcopy(original)
        model = NonNegativeClassifier.from_classifier(classifier, **variant_options(variant, projector_dims=(32, 16)))
        model.eval()
        assert model.feature_dim == dim and model.classifier.out_features == 7 and model.classifier.bias is None
        with torch.no_grad():
            logits, features = model(x, return_features=True)
        assert logits.shape == (3, 7)
        if variant == "ce":
            torch.testing.assert_close(features, expected)
        if variant == "nce":
            torch.testing.assert_close(features, expected.clamp_min(0))
        if variant.startswith("nce"):
            assert (features >= 0).all()


def test_from_classifier_without_a_head_is_a_clear_error():
    headless = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    with pytest.raises(ValueError, match="cannot find the classification head of Sequential"):
        NonNegativeClassifier.from_classifier(headless)
    with pytest.raises(ValueError, match="num_classes=0"):
        NonNegativeClassifier(SmallCNN(), num_classes=0)


def test_small_cnn_signed_is_the_small_cnn_without_its_last_relu():
    images = torch.randn(16, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    plain = build_backbone("small_cnn")
    torch.manual_seed(0)
    signed = build_backbone("small_cnn_signed")
    assert signed.load_state_dict(plain.state_dict()) is not None  # same parameters, same names
    plain.eval(), signed.eval()
    assert bool((plain(images) >= 0).all()) and bool((signed(images) < 0).any())
