"""CLIP with NCL: ncl_ext.adapters.clip, ncl_ext.data.image_text and the clip-finetune recipe.

Everything runs on tiny open_clip / Hugging Face models built offline from configs. The
reference for a non-negative model is the same weights unwrapped (a deep copy made before
wrapping) passed through torch.relu and F.normalize; checkpoints are checked with
open_clip's own loaders and transformers' save_pretrained; recall has a closed-form case.
"""

from __future__ import annotations

import copy
import csv
import json
import logging
import pickle

import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import ncl_ext
from ncl_ext.adapters.clip import HFCLIPView, NonNegativeCLIP, nonneg_clip
from ncl_ext.checkpoint import load_checkpoint
from ncl_ext.data import image_text
from ncl_ext.losses import ClipLoss
from ncl_ext.recipes import clip_finetune, run_recipe

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


def tiny_hf(kind: str) -> torch.nn.Module:
    from transformers import CLIPConfig, CLIPModel, SiglipConfig, SiglipModel

    tiny = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37)
    text = dict(tiny, vocab_size=80, max_position_embeddings=16, bos_token_id=0, eos_token_id=1, pad_token_id=1)
    vision = dict(tiny, image_size=16, patch_size=8)
    if kind == "clip":
        return CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)).eval()
    return SiglipModel(SiglipConfig(text_config=text, vision_config=vision)).eval()


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


# ------------------------------------------------------------------ data


def test_digit_captions_vary_and_zero_shot_prompts_are_held_out():
    splits = image_text.load_digit_captions(seed=0)
    assert (len(splits.train), len(splits.test)) == (1437, 360)
    assert splits.train.classes == list(image_text.DIGIT_NAMES)
    image, captions, label = splits.train[5]
    assert image.mode == "RGB" and image.size == (8, 8)
    assert len(set(captions)) == len(image_text.DIGIT_CAPTION_TEMPLATES)
    assert all(image_text.DIGIT_NAMES[label] in c or str(label) in c for c in captions)
    every_caption = {c for pair in splits.train.captions + splits.test.captions for c in pair}
    prompts = {t.format(name) for t in splits.prompt_templates for name in image_text.DIGIT_NAMES}
    assert not prompts & every_caption
    assert len({c for (c,) in splits.test.captions}) > 50  # test captions use many templates


def write_pairs(folder, count=30, size=12):
    """Coloured squares: class = colour; returns the CSV path and the pixel arrays."""
    colours = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}
    rows, pixels = [], []
    rng = np.random.default_rng(0)
    for i in range(count):
        name = list(colours)[i % 3]
        array = np.clip(np.array(colours[name]) + rng.integers(-25, 25, (size, size, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(array).save(folder / f"{i:03d}.png")
        (folder / f"{i:03d}.txt").write_text(f"a {name} square number {i}")
        rows.append({"image": f"{i:03d}.png", "caption": f"a {name} square", "label": name})
        pixels.append(array)
    path = folder / "pairs.csv"
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["image", "caption", "label"])
        writer.writeheader()
        writer.writerows(rows)
    return path, pixels


def test_csv_folder_and_hf_sources_read_the_same_pairs(tmp_path):
    import datasets

    path, pixels = write_pairs(tmp_path, count=6)
    from_csv = image_text.load_csv(path, label_column="label")
    assert from_csv.classes == ["blue", "green", "red"] and from_csv.labels[:3] == [2, 1, 0]
    from_folder = image_text.load_folder(tmp_path)
    assert from_folder[4][1] == ("a green square number 4",) and from_folder.labels is None

    table = datasets.Dataset.from_dict(
        {"image": [Image.fromarray(p) for p in pixels], "text": [["first", "second"]] * 6, "label": [0, 1, 2] * 2},
        features=datasets.Features(
            {"image": datasets.Image(), "text": datasets.Sequence(datasets.Value("string")),
             "label": datasets.ClassLabel(names=["red", "green", "blue"])}
        ),
    )
    in_memory = image_text.from_hf_dataset(table, caption_column="text", label_column="label")
    table.save_to_disk(str(tmp_path / "saved"))
    from_disk = image_text.load_hf_dataset(str(tmp_path / "saved"), caption_column="text", label_column="label")
    for pairs in (from_csv, from_folder, in_memory, from_disk):
        for i in (0, 5):
            np.testing.assert_array_equal(np.asarray(pairs[i][0]), pixels[i])
    assert in_memory[1][1:] == (("first", "second"), 1) and in_memory.classes == ["red", "green", "blue"]
    assert from_disk[2][1:] == in_memory[2][1:]

    train, test = image_text.split_pairs(from_csv, test_fraction=0.5, seed=1)
    assert sorted(train.captions + test.captions) == sorted(from_csv.captions) and len(test) == 3


def test_bad_sources_say_what_was_expected(tmp_path):
    path, _ = write_pairs(tmp_path, count=3)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        image_text.load_csv(tmp_path / "missing.csv")
    with pytest.raises(ValueError, match="caption_column='text' is not a column"):
        image_text.load_csv(path, caption_column="text")
    (tmp_path / "001.png").unlink()
    with pytest.raises(FileNotFoundError, match="001.png"):
        image_text.load_csv(path)
    with pytest.raises(ValueError, match="--data-root"):
        image_text.load_pairs("csv", None)
    with pytest.raises(ValueError, match="dataset='imagenet' is unknown"):
        image_text.load_pairs("imagenet")
    with pytest.raises(ValueError, match="pair 1: captions must be"):
        image_text.ImageTextDataset([np.zeros((2, 2), np.uint8)] * 2, ["fine", ""])
    with pytest.raises(FileNotFoundError, match="folder of images"):
        image_text.load_folder(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no image with a caption"):
        image_text.load_folder(tmp_path / "empty")


def test_collate_draws_training_captions_and_evaluates_the_first():
    pairs = image_text.ImageTextDataset(
        [np.full((4, 4), 9 * i, np.uint8) for i in range(4)], [("a", "b", "c")] * 4, [0, 1, 0, 1], ["x", "y"]
    )
    seen = []
    to_tensor = lambda image: torch.tensor(np.array(image), dtype=torch.float32)  # noqa: E731
    collate = image_text.ImageTextCollate(to_tensor, seen.extend, True)
    for _ in range(20):
        collate([pairs[i] for i in range(4)])
    assert set(seen) == {"a", "b", "c"}
    pixels, tokens, labels = image_text.ImageTextCollate(
        lambda image: torch.tensor(np.array(image), dtype=torch.float32), lambda texts: texts
    )([pairs[i] for i in range(4)])
    assert pixels.shape == (4, 4, 4, 3) and tokens == ["a"] * 4 and labels.tolist() == [0, 1, 0, 1]


# ------------------------------------------------------------------ the recipe

TINY_RUN = {"epochs": 2, "batch_size": 8, "eval_batch_size": 16, "warmup_epochs": 0.0, "lr": 1e-3}
METRICS = [
    "zero_shot_acc", "i2t_recall@1", "t2i_recall@1", "i2t_recall@5", "t2i_recall@5", "i2t_recall@10",
    "t2i_recall@10", "sparsity_image", "sparsity_text", "semantic_consistency_image",
]


def check_runs(runs: dict) -> None:
    assert set(runs) == {"cl", "ncl"}
    for metrics in runs.values():
        assert set(METRICS) <= set(metrics)
        for direction in ("i2t", "t2i"):
            recalls = [metrics[f"{direction}_recall@{k}"] for k in (1, 5, 10)]
            assert 0 <= recalls[0] <= recalls[1] <= recalls[2] <= 1
        assert 0 <= metrics["zero_shot_acc"] <= 1
    assert runs["cl"]["sparsity_image"] < 0.01 and runs["ncl"]["sparsity_image"] > 0.2


def test_recipe_on_a_csv_of_pairs_resumes_and_exports_an_open_clip_folder(tmp_path, caplog):
    path, _ = write_pairs(tmp_path, count=30)
    overrides = dict(TINY_RUN, dataset="csv", label_column="label", test_fraction=1 / 3)
    output = tmp_path / "out"
    caplog.set_level(logging.INFO, logger="ncl_ext")
    results = run_recipe("clip-finetune", overrides=overrides, data_root=str(path), output=output, device="cpu")
    check_runs(results["runs"])
    # 10 test pairs: the 10 nearest items are all of them, so every query finds its class.
    assert results["runs"]["ncl"]["i2t_recall@10"] == 1.0 == results["runs"]["cl"]["t2i_recall@10"]
    assert "| ncl |" in caplog.text
    assert json.loads((output / "results.json").read_text())["runs"] == results["runs"]
    for name in ("top_activating_images.png", "top_activating_captions.md", "feature_report_image.json"):
        assert (output / "ncl" / name).is_file()

    # The exported folder is an open_clip checkpoint holding the trained weights.
    exported = open_clip.create_model(f"local-dir:{output / 'ncl' / 'model'}")
    trained = clip_finetune.build_clip(clip_finetune.Config(), nonneg="relu").model
    load_checkpoint(output / "ncl" / "checkpoints", trained)
    images = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(nonneg_clip(exported).encode_image(images), trained.encode_image(images), rtol=0, atol=0)
    assert json.loads((output / "ncl" / "model" / "open_clip_config.json").read_text())["ncl_nonneg"] == "relu"

    # Re-running the same command resumes: training is skipped, the metrics are the same.
    step_files = sorted(p.name for p in (output / "cl" / "checkpoints").iterdir())
    again = run_recipe("clip-finetune", overrides=overrides, data_root=str(path), output=output, device="cpu")
    assert again["runs"] == results["runs"]
    assert sorted(p.name for p in (output / "cl" / "checkpoints").iterdir()) == step_files


def test_recipe_on_an_in_memory_hf_dataset(tmp_path):
    import datasets

    _, pixels = write_pairs(tmp_path, count=24)
    names = ["red", "green", "blue"]
    table = datasets.Dataset.from_dict(
        {"image": [Image.fromarray(p) for p in pixels], "caption": [f"a {names[i % 3]} square" for i in range(24)],
         "label": [i % 3 for i in range(24)]},
        features=datasets.Features(
            {"image": datasets.Image(), "caption": datasets.Value("string"), "label": datasets.ClassLabel(names=names)}
        ),
    )
    pairs = image_text.from_hf_dataset(table, label_column="label")
    data = image_text.ImageTextSplits(*image_text.split_pairs(pairs, test_fraction=10 / 24), ("a photo of {}",))
    config = clip_finetune.Config(**TINY_RUN, device="cpu")
    context = clip_finetune.prepare(config, tmp_path / "out", data=data)  # in-memory pairs instead of the settings'
    runs = {}
    for name in config.runs:
        trained = clip_finetune.train(config, name, context, tmp_path / "out" / name)
        runs[name] = clip_finetune.evaluate(config, name, trained, context, tmp_path / "out" / name)
    check_runs(runs)


def write_tiny_hf_clip(folder) -> None:
    from transformers import CLIPImageProcessor, CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for suffix in ("", "</w>"):
        for char in "abcdefghijklmnopqrstuvwxyz0123456789,.":
            vocab[char + suffix] = len(vocab)
    try:
        tokenizer = CLIPTokenizer(vocab=vocab, merges=[])  # transformers 5
    except TypeError:  # transformers 4 reads the vocabulary from files
        (folder / "vocab.json").write_text(json.dumps(vocab))
        (folder / "merges.txt").write_text("#version: 0.2\n")
        tokenizer = CLIPTokenizer(vocab_file=str(folder / "vocab.json"), merges_file=str(folder / "merges.txt"))
    tiny_hf("clip").save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16}).save_pretrained(folder)


def test_hf_clip_preset_exports_a_checkpoint_that_from_pretrained_reproduces(tmp_path):
    from transformers import CLIPModel

    write_tiny_hf_clip(tmp_path / "hf")
    path, _ = write_pairs(tmp_path, count=30)
    overrides = dict(
        TINY_RUN, dataset="csv", label_column="label", test_fraction=1 / 3, model=str(tmp_path / "hf"),
        mixed_precision="no", num_workers=0,
    )
    output = tmp_path / "out"
    results = run_recipe("clip-finetune", "hf-clip", overrides, str(path), output, device="cpu")
    check_runs(results["runs"])

    loaded = ncl_ext.from_pretrained(output / "ncl" / "model").eval()
    assert loaded.config.ncl_nonneg["mode"] == "relu"
    trained = HFCLIPView(ncl_ext.patch(CLIPModel(loaded.config).eval()))
    load_checkpoint(output / "ncl" / "checkpoints", trained)
    images, texts = torch.randn(2, 3, 16, 16), torch.randint(2, 80, (2, 16))
    with torch.no_grad():
        for got, want in zip(HFCLIPView(loaded)(images, texts), trained(images, texts)):
            torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_presets_without_their_model_say_what_to_pass(tmp_path):
    with pytest.raises(ValueError, match="pretrained=/path/open_clip_pytorch_model.bin"):
        run_recipe("clip-finetune", "openclip", {"epochs": 1}, output=tmp_path, device="cpu")
    with pytest.raises(ValueError, match="source=hf needs model=/path"):
        run_recipe("clip-finetune", "hf-clip", {"epochs": 1}, output=tmp_path, device="cpu")
    with pytest.raises(ValueError, match="runs="):
        clip_finetune.Config(runs=("cl", "both"))
    with pytest.raises(ValueError, match="source='jax'"):
        clip_finetune.Config(source="jax")
