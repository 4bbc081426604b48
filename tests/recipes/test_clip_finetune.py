"""The clip-finetune recipe end to end: CSV pairs, in-memory HF datasets, HF CLIP folders, resume and export."""

import json
import logging

import open_clip
import pytest
import torch
from PIL import Image

import ncl_ext
from ncl_ext.adapters.clip import HFCLIPView, nonneg_clip
from ncl_ext.checkpoint import load_checkpoint
from ncl_ext.data import image_text
from ncl_ext.recipes import clip_finetune, run_recipe
from tests._tiny_models import tiny_hf
from tests.fake_data import write_pairs

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
