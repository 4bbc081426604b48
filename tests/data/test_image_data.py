"""ImageData: image folders kept resident when they fit the memory budget, streamed otherwise; same inputs both ways."""

from types import SimpleNamespace

import pytest
import torch

from ncl_ext.data.augment import BatchAugmentation, eval_transform
from ncl_ext.data.image_data import DEFAULT_RESIDENT_BUDGET_MB, ImageData
from ncl_ext.data.images import ResidentBatches, load_image_folder
from tests.fake_data import write_png_tree

CLASSES = ["cat", "dog", "emu"]


def folder_settings(root, **extra):
    values = dict(dataset="imagefolder", data_root=str(root), download=False, seed=0, image_size=16, batch_size=4,
                  eval_batch_size=5, num_workers=0)
    return SimpleNamespace(**{**values, **extra})


@pytest.fixture
def tree(tmp_path):
    write_png_tree(tmp_path, ["train", "val"], CLASSES, per_class=3, size=(18, 14))
    return tmp_path


def evaluation_inputs(data, split):
    images, labels = zip(*data.evaluation_batches(split))
    return torch.cat(images), torch.cat(labels)


def test_small_folder_is_resident_and_feeds_the_model_what_the_dataloader_path_does(tree, seed_and_one_thread):
    resident = ImageData(folder_settings(tree))  # no resident_budget_mb: the default budget
    streamed = ImageData(folder_settings(tree, resident_budget_mb=0))
    assert resident.resident and not streamed.resident
    assert resident.train.images.shape == (9, 3, 16, 16) and resident.classes == sorted(CLASSES) == streamed.classes
    assert (resident.channels, resident.size, resident.mean) == (streamed.channels, streamed.size, streamed.mean)
    assert resident.raw_test_images().shape == (9, 3, 16, 16) and streamed.raw_test_images() is None

    for split in ("train", "test"):
        images, labels = evaluation_inputs(resident, split)
        expected_images, expected_labels = evaluation_inputs(streamed, split)
        torch.testing.assert_close(images, expected_images, rtol=0, atol=1e-6)
        assert torch.equal(labels, expected_labels)
    files = load_image_folder(tree).test  # and both equal the evaluation transform of each file
    reference = torch.stack([eval_transform(16)(files.loader(path)) for path, _ in files.samples])
    torch.testing.assert_close(evaluation_inputs(resident, "test")[0], reference, rtol=0, atol=1e-6)

    batches = resident.training_batches()
    assert isinstance(batches, ResidentBatches) and len(batches) == 2
    view1, view2, labels = next(batches.batches(epoch=0))
    assert view1.shape == view2.shape == (4, 3, 16, 16) and not torch.equal(view1, view2)
    assert isinstance(batches.augmentation, BatchAugmentation) and batches.augmentation.size == 16
    single = ImageData(folder_settings(tree), num_views=1).training_batches()
    assert len(next(single.batches(epoch=0))) == 2
    assert isinstance(streamed.training_batches(), torch.utils.data.DataLoader)


def test_the_budget_decides_between_resident_and_streamed(tree):
    needed_mb = 18 * 3 * 16 * 16 / 2**20  # 9 train + 9 test images, 3 x 16 x 16 bytes each
    assert ImageData(folder_settings(tree, resident_budget_mb=needed_mb)).resident
    assert not ImageData(folder_settings(tree, resident_budget_mb=needed_mb * 0.99)).resident
    assert DEFAULT_RESIDENT_BUDGET_MB >= 1024
    with pytest.raises(ValueError, match="resident_budget_mb=-1"):
        ImageData(folder_settings(tree, resident_budget_mb=-1))


def test_holdout_replaces_the_test_images_by_held_out_training_images():
    from types import SimpleNamespace

    from ncl_ext.data.image_data import ImageData
    from ncl_ext.data.images import load_digits

    settings = SimpleNamespace(dataset="digits", data_root=None, download=False, seed=0, image_size=None,
                               batch_size=64, eval_batch_size=256, num_workers=0, holdout=0.2)
    data = ImageData(settings)
    full = load_digits().train
    assert len(data.train) + len(data.test) == len(full) and abs(len(data.test) - 0.2 * len(full)) < 10
    # Every held-out image is a training image, none of them is trained on, and each class is held out alike.
    rows = {bytes(image.numpy()) for image in full.images}
    assert all(bytes(image.numpy()) in rows for image in data.test.images)
    assert not {bytes(i.numpy()) for i in data.train.images} & {bytes(i.numpy()) for i in data.test.images}
    per_class = torch.bincount(data.test.labels, minlength=10).float()
    assert float(per_class.min()) >= 0.8 * float(per_class.max())
