"""Image data: loaders on real digits and on tiny copies in the on-disk formats, augmentations, resident batches."""

import os
import pickle
import pickletools
import re

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as TF

from ncl_ext.data import (
    IMAGENET100_WNIDS,
    BatchAugmentation,
    ResidentBatches,
    ResidentImages,
    TwoViews,
    digits_batch_augmentation,
    eval_transform,
    load_cifar,
    load_dataset,
    load_digits,
    load_image_folder,
    load_imagenet100,
    simclr_batch_augmentation,
    simclr_transform,
)
from ncl_ext.data.augment import AugmentationParams, blur_kernel_size, decode_transform, normalize_images
from ncl_ext.data.images import decode_image_folder
from tests.fake_data import python2_cifar_pickle, write_cifar, write_png_tree

PLAIN = {"scale": (1.0, 1.0), "ratio": (1.0, 1.0), "flip_p": 0.0, "jitter_p": 0.0, "grayscale_p": 0.0}


def random_uint8(shape, seed=0):
    return torch.randint(0, 256, shape, dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def identity_params(n, jitter=None, jitter_mask=None, gray=None, theta=None):
    return AugmentationParams(
        theta if theta is not None else torch.tensor([[1.0, 0, 0], [0, 1.0, 0]]).repeat(n, 1, 1),
        jitter if jitter is not None else torch.tensor([[1.0, 1.0, 1.0, 0.0]]).repeat(n, 1),
        jitter_mask if jitter_mask is not None else torch.zeros(n, dtype=torch.bool),
        gray if gray is not None else torch.zeros(n, dtype=torch.bool),
    )


# ------------------------------------------------------------------ digits


def test_digits_are_sklearns_images_in_a_stratified_deterministic_split():
    from sklearn.datasets import load_digits as sklearn_digits

    splits = load_digits(test_fraction=0.2, seed=0)
    train, test = splits
    assert train.images.shape == (1437, 1, 8, 8) and test.images.shape == (360, 1, 8, 8)
    assert train.images.dtype == torch.uint8 and train.labels.dtype == torch.int64
    assert train.classes == [str(d) for d in range(10)]

    reference = sklearn_digits()
    expected = np.rint(reference.images * 255 / 16).astype(np.uint8)

    def multiset(images):
        return sorted(map(bytes, images.reshape(len(images), -1)))

    assert multiset(np.concatenate([train.images.numpy(), test.images.numpy()])[:, 0]) == multiset(expected)
    per_class_share = np.bincount(test.labels.numpy()) - np.bincount(reference.target) * 0.2
    assert np.abs(per_class_share).max() <= 1  # stratified: each class keeps its share, up to rounding

    pixels = train.images.numpy() / 255
    np.testing.assert_allclose(train.mean, [pixels.mean()], rtol=1e-12)
    np.testing.assert_allclose(train.std, [pixels.std()], rtol=1e-12)
    again = load_digits(test_fraction=0.2, seed=0)
    assert torch.equal(again.train.images, train.images) and torch.equal(again.test.labels, test.labels)
    assert not torch.equal(load_digits(seed=1).train.labels, train.labels)
    with pytest.raises(ValueError, match="test_fraction"):
        load_digits(test_fraction=1.5)


# ------------------------------------------------------------------ CIFAR (python-batch format)


@pytest.mark.parametrize("name, num_classes", [("cifar10", 10), ("cifar100", 100)])
def test_cifar_loader_reads_the_python_batch_format(tmp_path, name, num_classes):
    sizes = [3, 4, 2, 3, 5] if name == "cifar10" else [7]
    folder, written, train_files, names = write_cifar(tmp_path, name, sizes, 4, num_classes)
    train, test = load_cifar(tmp_path, name)
    expected_train = np.concatenate([written[f][0] for f in train_files])
    assert train.images.shape == (sum(sizes), 3, 32, 32) and test.images.shape == (4, 3, 32, 32)
    np.testing.assert_array_equal(train.images.permute(0, 2, 3, 1).numpy(), expected_train)
    np.testing.assert_array_equal(train.labels.numpy(), [label for f in train_files for label in written[f][1]])
    test_file = "test_batch" if name == "cifar10" else "test"
    np.testing.assert_array_equal(test.images.permute(0, 2, 3, 1).numpy(), written[test_file][0])
    assert train.classes == names and len(train.mean) == 3
    direct = load_dataset(name, folder)  # the batches folder itself is accepted as root
    assert torch.equal(direct.train.images, train.images)


def test_cifar_missing_or_malformed_files_give_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="cifar-10-batches-py.*--data-root") as error:
        load_cifar(tmp_path / "nowhere")
    assert "\n" not in str(error.value)
    folder, *_ = write_cifar(tmp_path, "cifar10", [2] * 5, 2, 10)
    (folder / "data_batch_3").write_bytes(b"this is not a pickle")
    with pytest.raises(ValueError, match="data_batch_3 is not a CIFAR-10 python batch"):
        load_cifar(tmp_path)
    with open(folder / "data_batch_3", "wb") as handle:
        pickle.dump({"data": np.zeros((2, 100), np.uint8), "labels": [0, 1]}, handle)
    with pytest.raises(ValueError, match=r"shape \(N, 3072\)"):
        load_cifar(tmp_path)
    with open(folder / "data_batch_3", "wb") as handle:
        pickle.dump({"pixels": []}, handle)
    with pytest.raises(ValueError, match="keys \\['data', 'labels'\\]"):
        load_cifar(tmp_path)
    (folder / "test_batch").unlink()
    with pytest.raises(FileNotFoundError, match="missing test_batch"):
        load_cifar(tmp_path)
    with pytest.raises(ValueError, match="name='svhn'"):
        load_cifar(tmp_path, "svhn")
    with pytest.raises(ValueError, match="--data-root"):
        load_dataset("cifar10")
    with pytest.raises(ValueError, match="dataset='mnist' is unknown"):
        load_dataset("mnist")


class _RunsCode:
    """Unpickling this calls ``function(*arguments)``: what a crafted CIFAR file would do."""

    def __init__(self, function, *arguments):
        self.function, self.arguments = function, arguments

    def __reduce__(self):
        return self.function, self.arguments


@pytest.mark.parametrize("target", ["batches.meta", "data_batch_2"])
@pytest.mark.parametrize("attack", ["os.system", "exec"])
def test_crafted_cifar_pickles_run_no_code_and_are_refused(tmp_path, target, attack):
    folder, *_ = write_cifar(tmp_path / "data", "cifar10", [2] * 5, 2, 10)
    marker = tmp_path / "marker"
    if attack == "os.system":
        payload = _RunsCode(os.system, f"touch {marker}")
    else:
        payload = _RunsCode(exec, f"open({str(marker)!r}, 'w').write('ran')")
    content = {"label_names": [payload]} if target == "batches.meta" else {"data": payload, "labels": [0, 1]}
    with open(folder / target, "wb") as handle:
        pickle.dump(content, handle, protocol=2)
    expected = r"(posix|nt|os)\.system" if attack == "os.system" else r"(__builtin__|builtins)\.exec"
    with pytest.raises(ValueError, match=rf"{target} is not a CIFAR-10 python batch: it refers to the global "
                                         rf"{expected}, .*refused without running it") as error:
        load_cifar(tmp_path / "data")
    assert not marker.exists()
    assert "\n" not in str(error.value)


def test_only_latin1_byte_strings_are_decoded(tmp_path):
    folder, *_ = write_cifar(tmp_path, "cifar10", [2] * 5, 2, 10)
    import codecs

    with open(folder / "batches.meta", "wb") as handle:
        pickle.dump({"label_names": [_RunsCode(codecs.encode, "abc", "rot13")]}, handle, protocol=2)
    with pytest.raises(ValueError, match="encoding 'rot13'.*refused without running it"):
        load_cifar(tmp_path)


def test_cifar_in_the_published_python2_layout_loads(tmp_path):
    # The published batches are Python 2 pickles naming numpy.core.multiarray._reconstruct, numpy.ndarray
    # and numpy.dtype, with byte strings for text and pixels; the standard unpickler is the reference.
    rng = np.random.default_rng(3)
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    written = {}
    for file, size in (("train", 5), ("test", 3)):
        batch = {
            "filenames": [f"{file}_{i}.png" for i in range(size)],
            "batch_label": f"{file} batch",
            "fine_labels": rng.integers(0, 100, size).tolist(),
            "coarse_labels": rng.integers(0, 20, size).tolist(),
            "data": rng.integers(0, 256, (size, 3072), dtype=np.uint8),
        }
        raw = python2_cifar_pickle(batch)
        (folder / file).write_bytes(raw)
        written[file] = pickle.loads(raw, encoding="latin1")
    names = [f"fine {i}" for i in range(100)]
    (folder / "meta").write_bytes(python2_cifar_pickle({"fine_label_names": names, "coarse_label_names": names[:20]}))
    globals_named = {arg for op, arg, _ in pickletools.genops((folder / "train").read_bytes()) if op.name == "GLOBAL"}
    assert globals_named == {"numpy.core.multiarray _reconstruct", "numpy ndarray", "numpy dtype"}

    train, test = load_cifar(tmp_path, "cifar100")
    np.testing.assert_array_equal(train.images.reshape(5, 3072).numpy(), written["train"]["data"])
    np.testing.assert_array_equal(train.labels.numpy(), written["train"]["fine_labels"])
    np.testing.assert_array_equal(test.images.reshape(3, 3072).numpy(), written["test"]["data"])
    assert train.classes == names


# ------------------------------------------------------------------ ImageFolder / ImageNet-100


def test_image_folder_with_two_views_and_eval_transform(tmp_path):
    write_png_tree(tmp_path, ["train", "val"], ["emu", "cat", "dog"], per_class=2)
    train, test = load_image_folder(tmp_path, TwoViews(simclr_transform(32)), eval_transform(32))
    assert train.classes == ["cat", "dog", "emu"] and test.class_to_idx == train.class_to_idx
    assert len(train) == 6 and len(test) == 6
    (view1, view2), label = train[4]
    assert view1.shape == view2.shape == (3, 32, 32) and view1.dtype == torch.float32
    assert not torch.equal(view1, view2) and label == 2
    image, label = test[0]
    assert image.shape == (3, 32, 32) and label == 0
    assert torch.equal(test[0][0], test[0][0])  # evaluation is deterministic
    restored = pickle.loads(pickle.dumps(test))  # DataLoader workers (spawn / forkserver) pickle the dataset
    assert restored.classes == test.classes and torch.equal(restored[5][0], test[5][0])

    alt = tmp_path / "alt"
    write_png_tree(alt, ["train", "test"], ["a", "b"])
    assert load_dataset("imagefolder", alt).test.classes == ["a", "b"]


def test_image_folder_errors_name_the_expected_layout(tmp_path):
    with pytest.raises(FileNotFoundError, match="ROOT/train/<class>/<image>") as error:
        load_image_folder(tmp_path / "missing")
    assert "\n" not in str(error.value)
    write_png_tree(tmp_path, ["train"], ["a", "b"])
    with pytest.raises(FileNotFoundError, match="lacks a train/ or val/"):
        load_image_folder(tmp_path)
    (tmp_path / "val" / "a").mkdir(parents=True)
    (tmp_path / "val" / "b").mkdir()
    with pytest.raises(FileNotFoundError, match="ROOT/train"):  # class folders without any image
        load_image_folder(tmp_path)
    empty = tmp_path / "empty"
    (empty / "train").mkdir(parents=True)
    (empty / "val").mkdir()
    with pytest.raises(FileNotFoundError, match="has no class folders"):
        load_image_folder(empty)


def test_imagenet100_list_is_the_cmc_list():
    assert len(IMAGENET100_WNIDS) == 100 and len(set(IMAGENET100_WNIDS)) == 100
    assert all(re.fullmatch(r"n\d{8}", wnid) for wnid in IMAGENET100_WNIDS)
    assert (IMAGENET100_WNIDS[0], IMAGENET100_WNIDS[-1]) == ("n02869837", "n02090622")
    assert {"n02123045", "n01558993", "n04485082"} <= set(IMAGENET100_WNIDS)  # tabby cat, robin, tripod
    assert "n01440764" not in IMAGENET100_WNIDS  # tench, class 0 of ImageNet-1k, is not in the subset


def test_imagenet100_keeps_exactly_the_100_classes(tmp_path):
    extra = ["n01440764", "n15075141"]
    write_png_tree(tmp_path, ["train", "val"], [*IMAGENET100_WNIDS, *extra], size=(4, 4))
    train, test = load_imagenet100(tmp_path, eval_transform(8), eval_transform(8))
    assert train.classes == sorted(IMAGENET100_WNIDS) and test.classes == train.classes
    assert len(train) == len(test) == 100
    assert {label for _, label in train.samples} == set(range(100))
    image, label = test[3]
    assert image.shape == (3, 8, 8) and train.classes[label] == sorted(IMAGENET100_WNIDS)[3]

    partial = tmp_path / "partial"
    write_png_tree(partial, ["train", "val"], IMAGENET100_WNIDS[:98], size=(4, 4))
    with pytest.raises(FileNotFoundError, match="lacks 2 of the 100 expected class folders"):
        load_imagenet100(partial)


def test_decoded_folder_equals_the_eval_transform_of_every_file(tmp_path):
    write_png_tree(tmp_path, ["train", "val"], ["emu", "cat", "dog"], per_class=3, size=(10, 13))
    write_png_tree(tmp_path / "big", ["train", "val"], ["a", "b"], per_class=2, size=(120, 100))
    for root, size in ((tmp_path, 16), (tmp_path / "big", 96)):  # 96 px and up: resize to 110, centre crop
        train = load_image_folder(root).train
        decoded = decode_image_folder(train, size)
        assert decoded.images.shape == (len(train), 3, size, size) and decoded.images.dtype == torch.uint8
        assert decoded.classes == train.classes and decoded.labels.tolist() == train.targets
        reference = eval_transform(size)  # what the DataLoader path feeds the model, file by file
        expected = torch.stack([reference(train.loader(path)) for path, _ in train.samples])
        torch.testing.assert_close(normalize_images(decoded.images, decoded.mean, decoded.std), expected,
                                   rtol=0, atol=1e-6)
    parallel = decode_image_folder(load_image_folder(tmp_path).train, 16, num_workers=2)
    assert torch.equal(parallel.images, decode_image_folder(load_image_folder(tmp_path).train, 16).images)
    assert decode_transform(8)(Image.new("L", (9, 9))).shape == (1, 8, 8)
    with pytest.raises(ValueError, match="ImageFolder"):
        decode_image_folder([], 16)
    with pytest.raises(ValueError, match="num_workers"):
        decode_image_folder(load_image_folder(tmp_path).train, 16, num_workers=-1)


# ------------------------------------------------------------------ per-image transforms


def test_simclr_transform_outputs_and_blur_only_for_large_images():
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8))
    small, large = simclr_transform(32), simclr_transform(96)
    assert small(image).shape == (3, 32, 32) and large(image).shape == (3, 96, 96)
    assert "GaussianBlur" in repr(large) and "GaussianBlur" not in repr(small)
    assert small(image).dtype == torch.float32
    with pytest.raises(ValueError, match="size=0"):
        simclr_transform(0)


# ------------------------------------------------------------------ batched augmentation


def test_batch_augmentation_output_shape_dtype_range_and_determinism():
    images = random_uint8((16, 3, 32, 32))
    augment = BatchAugmentation(size=24, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    first = augment(images, torch.Generator().manual_seed(3))
    assert first.shape == (16, 3, 24, 24) and first.dtype == torch.float32
    assert first.min() >= 0 and first.max() <= 1  # unnormalised pixels stay in [0, 1]
    assert torch.equal(first, augment(images, torch.Generator().manual_seed(3)))
    generator = torch.Generator().manual_seed(4)
    view1, view2 = augment(images, generator), augment(images, generator)
    assert not torch.equal(view1, view2) and not torch.equal(view1, first)


def test_batch_geometry_matches_exact_references():
    images = random_uint8((4, 3, 16, 16))
    pixels = images.float() / 255
    plain = BatchAugmentation(mean=(0.0,) * 3, std=(1.0,) * 3, **PLAIN)
    torch.testing.assert_close(plain(images, torch.Generator().manual_seed(0)), pixels, rtol=0, atol=1e-6)
    flipped = BatchAugmentation(mean=(0.0,) * 3, std=(1.0,) * 3, **{**PLAIN, "flip_p": 1.0})
    torch.testing.assert_close(flipped(images, torch.Generator()), pixels.flip(-1), rtol=0, atol=1e-6)

    # top-left quadrant at half resolution samples exactly the pixel centres of images[..., :8, :8]
    half = BatchAugmentation(size=8, mean=(0.0,) * 3, std=(1.0,) * 3, **PLAIN)
    quadrant = torch.tensor([[0.5, 0, -0.5], [0, 0.5, -0.5]]).repeat(4, 1, 1)
    torch.testing.assert_close(
        half.apply(images, identity_params(4, theta=quadrant)), pixels[..., :8, :8], rtol=0, atol=1e-6
    )
    quarter_turn = torch.tensor([[0.0, -1, 0], [1, 0, 0]]).repeat(4, 1, 1)
    torch.testing.assert_close(
        plain.apply(images, identity_params(4, theta=quarter_turn)),
        torch.rot90(pixels, 1, dims=(-2, -1)),
        rtol=0,
        atol=1e-6,
    )


def test_batch_colour_ops_match_torchvision_functional():
    images = random_uint8((6, 3, 8, 8), seed=1)
    augment = BatchAugmentation(mean=(0.0,) * 3, std=(1.0,) * 3, scale=(1.0, 1.0), ratio=(1.0, 1.0), flip_p=0.0)
    sampled = augment.sample(6, torch.Generator().manual_seed(5))
    mask = torch.tensor([True, True, True, True, False, True])
    gray = torch.tensor([False, False, True, False, False, False])
    params = identity_params(6, jitter=sampled.jitter, jitter_mask=mask, gray=gray)
    output = augment.apply(images, params)
    pixels = images.float() / 255
    for i in range(6):
        expected = pixels[i]
        if mask[i]:
            b, c, s, h = sampled.jitter[i].tolist()
            expected = TF.adjust_hue(
                TF.adjust_saturation(TF.adjust_contrast(TF.adjust_brightness(expected, b), c), s), h
            )
        if gray[i]:
            expected = TF.rgb_to_grayscale(expected, num_output_channels=3)
        torch.testing.assert_close(output[i], expected, rtol=0, atol=2e-6)
    assert ((sampled.jitter[:, :3] >= 0.6) & (sampled.jitter[:, :3] <= 1.4)).all() and sampled.jitter[
        :, 3
    ].abs().max() <= 0.1


def test_batch_blur_matches_torchvision_and_leaves_the_other_draws_alone():
    images = random_uint8((5, 3, 20, 20), seed=2)
    blur = BatchAugmentation(mean=(0.0,) * 3, std=(1.0,) * 3, **{**PLAIN, "blur_p": 1.0})
    params = blur.sample(5, torch.Generator().manual_seed(7))
    assert params.blur_mask.all() and ((params.blur_sigma >= 0.1) & (params.blur_sigma <= 2.0)).all()
    output = blur.apply(images, params)
    kernel = blur_kernel_size(20)
    for i in range(5):
        sigma = float(params.blur_sigma[i])
        expected = TF.gaussian_blur(images[i].float() / 255, [kernel, kernel], [sigma, sigma])
        torch.testing.assert_close(output[i], expected, rtol=0, atol=1e-6)
    wide = BatchAugmentation(mean=(0.0,) * 3, std=(1.0,) * 3, **{**PLAIN, "blur_p": 1.0, "blur_kernel": 7})
    expected = TF.gaussian_blur(images[0].float() / 255, [7, 7], [float(params.blur_sigma[0])] * 2)
    torch.testing.assert_close(wide.apply(images, params)[0], expected, rtol=0, atol=1e-6)

    # Blur draws come after the others: the crop, flip, jitter and grayscale of a seed do not change.
    without = BatchAugmentation().sample(64, torch.Generator().manual_seed(1))
    with_blur = BatchAugmentation(blur_p=0.5).sample(64, torch.Generator().manual_seed(1))
    for name in ("theta", "jitter", "jitter_mask", "grayscale_mask"):
        assert torch.equal(getattr(without, name), getattr(with_blur, name))
    assert without.blur_sigma is None and 0 < int(with_blur.blur_mask.sum()) < 64

    assert simclr_batch_augmentation(32, (0.5,) * 3, (0.5,) * 3).blur_p == 0
    large = simclr_batch_augmentation(96, (0.5,) * 3, (0.5,) * 3)
    assert large.blur_p == 0.5 and large.blur_sigma == (0.1, 2.0)
    assert f"kernel_size=({blur_kernel_size(96)}, {blur_kernel_size(96)})" in repr(simclr_transform(96))
    with pytest.raises(ValueError, match="blur_kernel=4"):
        BatchAugmentation(blur_kernel=4)
    with pytest.raises(ValueError, match="blur_sigma"):
        BatchAugmentation(blur_sigma=(0.0, 1.0))


def test_presets_and_validation():
    digits = digits_batch_augmentation((0.3,), (0.4,))
    assert digits.flip_p == 0 and digits.jitter_p == 0 and digits.grayscale_p == 0 and digits.rotation > 0
    images = random_uint8((8, 1, 8, 8))
    view = digits(images, torch.Generator().manual_seed(0))
    assert view.shape == (8, 1, 8, 8)
    assert digits_batch_augmentation((0.3,), (0.4,), size=32)(images, torch.Generator()).shape == (8, 1, 32, 32)
    simclr = simclr_batch_augmentation(32, (0.5,) * 3, (0.5,) * 3)
    assert simclr.scale == (0.08, 1.0) and simclr.jitter == (0.4, 0.4, 0.4, 0.1) and simclr.jitter_p == 0.8
    with pytest.raises(ValueError, match="uint8"):
        simclr(images.float(), torch.Generator())
    with pytest.raises(ValueError, match="channels"):
        simclr(images, torch.Generator())
    with pytest.raises(ValueError, match="scale="):
        BatchAugmentation(scale=(0.0, 1.0))
    with pytest.raises(ValueError, match="flip_p=1.5"):
        BatchAugmentation(flip_p=1.5)
    with pytest.raises(ValueError, match="generator"):
        simclr.sample(2, 0)


# ------------------------------------------------------------------ resident batches


def indexed_data(n=40, classes=4):
    """Image i is constant i (so a view reveals which image it is); label i % classes."""
    images = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 1, 4, 4).contiguous()
    return ResidentImages(images, torch.arange(n) % classes, [str(c) for c in range(classes)], (0.0,), (1.0 / 255,))


def rows_of(view):
    return view[:, 0, 0, 0].round().long()


def test_resident_batches_cover_the_epoch_with_matching_labels():
    data = indexed_data()
    batches = ResidentBatches(
        data, 8, BatchAugmentation(mean=(0.0,), std=(1.0 / 255,), **PLAIN), seed=0, drop_last=False
    )
    assert len(batches) == 5 and len(ResidentBatches(data, 12, digits_batch_augmentation((0.0,), (1.0,)))) == 3
    seen = []
    for view1, view2, labels in batches.batches(epoch=0):
        rows = rows_of(view1)
        assert torch.equal(rows, rows_of(view2)) and torch.equal(labels, rows % 4)
        seen += rows.tolist()
    assert sorted(seen) == list(range(40))
    next_epoch = [rows_of(v).tolist() for v, _, _ in batches.batches(epoch=1)]
    assert [row for rows in next_epoch for row in rows] != seen
    single = ResidentBatches(data, 8, BatchAugmentation(mean=(0.0,), std=(1.0 / 255,), **PLAIN), num_views=1)
    assert len(next(single.batches(0))) == 2


def test_resumed_iteration_equals_the_uninterrupted_one():
    data = load_digits().train
    augment = digits_batch_augmentation(data.mean, data.std)
    full = list(ResidentBatches(data, 128, augment, seed=7).batches(epoch=2))
    resumed = list(ResidentBatches(data, 128, augment, seed=7).batches(epoch=2, start=4))
    assert len(full) == 11 and len(resumed) == 7
    for expected, actual in zip(full[4:], resumed, strict=True):
        for a, b in zip(expected, actual, strict=True):
            assert torch.equal(a, b)
    view1, view2, _ = full[0]
    assert not torch.equal(view1, view2)
    other_seed = next(ResidentBatches(data, 128, augment, seed=8).batches(epoch=2))
    assert not torch.equal(other_seed[0], view1)


def test_ranks_share_the_global_batch_without_overlap():
    data = indexed_data(48)
    augment = BatchAugmentation(mean=(0.0,), std=(1.0 / 255,), **PLAIN)
    whole = [rows_of(v) for v, _, _ in ResidentBatches(data, 8, augment, seed=3).batches(0)]
    shards = [
        [rows_of(v) for v, _, _ in ResidentBatches(data, 4, augment, seed=3, rank=r, world_size=2).batches(0)]
        for r in (0, 1)
    ]
    assert len(shards[0]) == len(shards[1]) == len(whole) == 6
    for step, rows in enumerate(whole):
        assert torch.equal(torch.cat([shards[0][step], shards[1][step]]), rows)
    with pytest.raises(ValueError, match="drop_last=False"):
        ResidentBatches(data, 4, augment, world_size=2, drop_last=False)
    with pytest.raises(ValueError, match="no batch"):
        ResidentBatches(data, 64, augment)
    with pytest.raises(ValueError, match="start=9"):
        next(ResidentBatches(data, 8, augment).batches(0, start=9))


def test_eval_batches_are_normalised_in_order():
    data = load_digits().test
    batches = list(data.eval_batches(100))
    assert [len(y) for _, y in batches] == [100, 100, 100, 60]
    x = torch.cat([b for b, _ in batches])
    expected = (data.images.numpy() / 255 - data.mean[0]) / data.std[0]
    np.testing.assert_allclose(x.numpy(), expected, rtol=1e-5, atol=1e-5)
    assert next(data.eval_batches(4, size=32))[0].shape == (4, 1, 32, 32)
