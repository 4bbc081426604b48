"""Image-caption pairs: the offline digits, CSV files, caption folders, HF datasets, and the collate function."""


import numpy as np
import pytest
import torch
from PIL import Image

from ncl_ext.data import image_text
from tests.fake_data import write_pairs


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
