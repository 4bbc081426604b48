"""Image datasets for the vision recipes, and the device-resident batch source that trains on them.

Small datasets (scikit-learn's 8x8 digits, CIFAR-10/100) load as :class:`ResidentImages`:
``uint8`` tensors ``(N, C, H, W)`` + labels + class names, small enough to live on the
accelerator whole. :class:`ResidentBatches` then serves augmented two-view batches
straight from device memory (the airbench approach), reproducibly: the order of epoch
``e`` and the augmentation of step ``s`` depend only on ``(seed, e)`` and
``(seed, e, s)``, so a run resumed at any step equals the uninterrupted run. Image
folders (ImageNet-100, any ``ImageFolder`` tree) load as torchvision datasets, for an
ordinary DataLoader with per-image transforms, or, when they fit in memory, are decoded
once at the training size by :func:`decode_image_folder` into :class:`ResidentImages`.

These are the benchmarks of Wang, Zhang, Guo, Wang, "Non-negative Contrastive
Learning", ICLR 2024 (arXiv:2403.12459): CIFAR-10, CIFAR-100 and ImageNet-100; the
digits are the offline stand-in.

Examples:
    >>> import torch
    >>> from ncl_ext.data import ResidentBatches, digits_batch_augmentation, load_digits
    >>> data = load_digits()
    >>> data.train.images.shape, data.train.classes[:3]
    (torch.Size([1437, 1, 8, 8]), ['0', '1', '2'])
    >>> batches = ResidentBatches(data.train, 256, digits_batch_augmentation(data.train.mean, data.train.std))
    >>> view1, view2, labels = next(batches.batches(epoch=0))
    >>> view1.shape, len(batches)
    (torch.Size([256, 1, 8, 8]), 5)
"""

from __future__ import annotations

import functools
import os
import pickle
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from ncl_ext._checks import check_int
from ncl_ext.data.augment import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    CIFAR100_MEAN,
    CIFAR100_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    BatchAugmentation,
    _host_to_device,
    decode_transform,
    normalize_images,
)
from ncl_ext.data.imagenet100 import IMAGENET100_WNIDS
from ncl_ext.log import progress

__all__ = [
    "stratified_holdout",
    "DATASETS",
    "DatasetSplits",
    "ResidentBatches",
    "ResidentImages",
    "decode_image_folder",
    "load_cifar",
    "load_dataset",
    "load_digits",
    "load_image_folder",
    "load_imagenet100",
]

#: The dataset names :func:`load_dataset` knows.
DATASETS: tuple[str, ...] = ("digits", "cifar10", "cifar100", "imagenet100", "imagefolder")

PathLike = str | os.PathLike


@dataclass
class ResidentImages:
    """A small image dataset held as tensors (on the CPU or on an accelerator).

    Attributes:
        images: ``uint8`` ``(N, C, H, W)``.
        labels: ``int64`` ``(N,)`` class indices.
        classes: class names, ``classes[label]``.
        mean, std: per-channel normalisation statistics (of pixels scaled to [0, 1]).
    """

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __post_init__(self) -> None:
        if not isinstance(self.images, torch.Tensor) or self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise ValueError("images must be a uint8 tensor of shape (N, C, H, W)")
        if self.labels.dtype != torch.int64 or self.labels.shape != (len(self.images),):
            raise ValueError(f"labels must be an int64 tensor of shape ({len(self.images)},)")
        if len(self.mean) != self.images.shape[1] or len(self.std) != self.images.shape[1]:
            raise ValueError(f"mean and std need one value per channel ({self.images.shape[1]})")

    def __len__(self) -> int:
        return len(self.images)

    def to(self, device: torch.device | str) -> ResidentImages:
        """The same dataset with its tensors on ``device``."""
        return ResidentImages(self.images.to(device), self.labels.to(device), self.classes, self.mean, self.std)

    def subset(self, indices: torch.Tensor) -> ResidentImages:
        """The images at ``indices`` (same classes and normalisation statistics)."""
        indices = indices.to(self.images.device)
        return ResidentImages(self.images[indices], self.labels[indices], self.classes, self.mean, self.std)

    def eval_batches(self, batch_size: int, size: int | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Normalised, un-augmented ``(images, labels)`` batches in dataset order (for features / probes).

        ``size`` resizes the images, to match training views of another size.
        """
        check_int(batch_size, "batch_size")
        for start in range(0, len(self), batch_size):
            chunk = self.images[start : start + batch_size]
            yield normalize_images(chunk, self.mean, self.std, size), self.labels[start : start + batch_size]


def stratified_holdout(labels: Any, fraction: float, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``(kept, held_out)`` indices: ``fraction`` of each class held out at random (seeded), both sorted.

    The validation split of the image recipes: settings are chosen on the held-out training
    images, so the test images are touched once, by the reported run.

    Examples:
        >>> kept, held = stratified_holdout(torch.tensor([0, 0, 0, 0, 1, 1, 1, 1]), 0.25, seed=0)
        >>> len(kept), len(held), sorted(torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])[held].tolist())
        (6, 2, [0, 1])
    """
    if not 0 < fraction < 1:
        raise ValueError(f"holdout={fraction!r}; expected a fraction in (0, 1)")
    labels = torch.as_tensor(labels).cpu()
    generator = torch.Generator().manual_seed(seed)
    held = []
    for label in labels.unique():
        members = torch.nonzero(labels == label).flatten()
        count = round(fraction * len(members))
        held.append(members[torch.randperm(len(members), generator=generator)[:count]])
    held_out = torch.cat(held).sort().values
    kept = torch.ones(len(labels), dtype=torch.bool)
    kept[held_out] = False
    return torch.nonzero(kept).flatten(), held_out


class DatasetSplits(NamedTuple):
    """A dataset's train and test splits (:class:`ResidentImages` or torchvision datasets)."""

    train: Any
    test: Any



# ------------------------------------------------------------------ digits


def load_digits(test_fraction: float = 0.2, seed: int = 0) -> DatasetSplits:
    """scikit-learn's handwritten digits: 1,797 real 8x8 grayscale images of 10 classes, offline.

    Pixel intensities 0..16 are rescaled to ``uint8`` 0..255. The split is stratified by
    class and fixed by ``seed`` (0.2 gives 1,437 train / 360 test); ``mean``/``std`` are
    the training split's.
    """
    from sklearn.datasets import load_digits as sklearn_digits
    from sklearn.model_selection import train_test_split

    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction={test_fraction!r}; expected a fraction in (0, 1)")
    digits = sklearn_digits()
    images = np.rint(digits.images * (255 / 16)).astype(np.uint8)[:, None]  # (N, 1, 8, 8)
    train_index, test_index = train_test_split(
        np.arange(len(images)), test_size=test_fraction, stratify=digits.target, random_state=seed
    )
    classes = [str(name) for name in digits.target_names]
    pixels = images[train_index].astype(np.float64) / 255
    mean, std = (float(pixels.mean()),), (float(pixels.std()),)

    def split(index: np.ndarray) -> ResidentImages:
        return ResidentImages(
            torch.from_numpy(images[index]), torch.from_numpy(digits.target[index].astype(np.int64)), classes, mean, std
        )

    return DatasetSplits(split(train_index), split(test_index))


# ------------------------------------------------------------------ CIFAR


@dataclass(frozen=True)
class _CifarLayout:
    title: str
    folder: str
    train_files: tuple[str, ...]
    test_file: str
    meta_file: str
    label_key: str
    names_key: str
    mean: tuple[float, ...]
    std: tuple[float, ...]


_CIFAR = {
    "cifar10": _CifarLayout(
        "CIFAR-10",
        "cifar-10-batches-py",
        tuple(f"data_batch_{i}" for i in range(1, 6)),
        "test_batch",
        "batches.meta",
        "labels",
        "label_names",
        CIFAR10_MEAN,
        CIFAR10_STD,
    ),
    "cifar100": _CifarLayout(
        "CIFAR-100",
        "cifar-100-python",
        ("train",),
        "test",
        "meta",
        "fine_labels",
        "fine_label_names",
        CIFAR100_MEAN,
        CIFAR100_STD,
    ),
}


def load_cifar(root: PathLike, name: str = "cifar10", download: bool = False) -> DatasetSplits:
    """CIFAR-10 or CIFAR-100 from its python-batch files under ``root``, as :class:`ResidentImages`.

    Expects the python version of https://www.cs.toronto.edu/~kriz/cifar.html, unpacked:
    ``root/cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}`` or
    ``root/cifar-100-python/{train, test, meta}`` (``root`` may also be that folder
    itself). The files are read directly (no checksum, so a subset in the same format
    also loads); ``download=True`` fetches the archive with torchvision first.

    The pickles are read with a restricted unpickler that accepts only what CIFAR batches
    contain (numpy arrays, lists, strings, numbers), so a crafted file cannot run code.

    Raises:
        FileNotFoundError: files missing (the message gives the expected layout).
        ValueError: unknown ``name``, a file that is not a CIFAR python batch, or one that
            refers to anything else (e.g. a function to call), refused unread.
    """
    if name not in _CIFAR:
        raise ValueError(f"name={name!r}; expected 'cifar10' or 'cifar100'")
    layout = _CIFAR[name]
    root = Path(root).expanduser()
    if download:
        import torchvision

        dataset_class = torchvision.datasets.CIFAR10 if name == "cifar10" else torchvision.datasets.CIFAR100
        dataset_class(str(root), train=True, download=True)
    folder = root if (root / layout.meta_file).is_file() else root / layout.folder
    needed = [*layout.train_files, layout.test_file, layout.meta_file]
    missing = [file for file in needed if not (folder / file).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{layout.title} not found: expected {root / layout.folder}/{{{', '.join(needed)}}} (the python version, "
            f"unpacked), missing {', '.join(missing)}; point --data-root at the folder containing {layout.folder} "
            "or pass download=True"
        )
    classes = [
        str(c) for c in _read_pickle(folder / layout.meta_file, [layout.names_key], layout.title)[layout.names_key]
    ]

    def split(files: Sequence[str]) -> ResidentImages:
        images, labels = [], []
        for file in files:
            batch = _read_pickle(folder / file, ["data", layout.label_key], layout.title)
            data = np.asarray(batch["data"], dtype=np.uint8)
            if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(batch[layout.label_key]) != len(data):
                raise ValueError(
                    f"{folder / file} is not a {layout.title} python batch: expected 'data' of shape (N, 3072) "
                    f"and N '{layout.label_key}', got {data.shape} and {len(batch[layout.label_key])}"
                )
            images.append(data.reshape(-1, 3, 32, 32))  # rows are 1024 red, 1024 green, 1024 blue values
            labels.append(np.asarray(batch[layout.label_key], dtype=np.int64))
        labels_t = torch.from_numpy(np.concatenate(labels))
        if len(labels_t) and not 0 <= int(labels_t.min()) <= int(labels_t.max()) < len(classes):
            raise ValueError(f"{layout.title} labels under {folder} are outside 0..{len(classes) - 1}")
        return ResidentImages(torch.from_numpy(np.concatenate(images)), labels_t, classes, layout.mean, layout.std)

    return DatasetSplits(split(layout.train_files), split([layout.test_file]))


def _read_pickle(path: Path, keys: Sequence[str], title: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as file:
            content = _CifarUnpickler(file, encoding="latin1").load()
    except _ForbiddenGlobal as error:
        raise ValueError(
            f"{path} is not a {title} python batch: it refers to {error.args[0]}, which a CIFAR batch never needs "
            "(only numpy arrays, lists, strings and numbers); refused without running it"
        ) from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, ImportError, KeyError) as error:
        raise ValueError(f"{path} is not a {title} python batch (unreadable pickle: {error})") from None
    if not isinstance(content, dict) or any(key not in content for key in keys):
        raise ValueError(f"{path} is not a {title} python batch: expected a pickled dict with keys {list(keys)}")
    return content


class _ForbiddenGlobal(pickle.UnpicklingError):
    """A pickle asked for a global outside what CIFAR batches use."""


def _latin1_encode(text: str, encoding: str = "utf-8") -> bytes:
    # Python 3 writes bytes into protocol-2 pickles as _codecs.encode(text, "latin1").
    if encoding not in ("latin1", "latin-1"):
        raise _ForbiddenGlobal(f"_codecs.encode with encoding {encoding!r}")
    return text.encode("latin1")


#: The only globals a CIFAR python batch refers to. The published files (Python 2, numpy 1.x)
#: name ``numpy.core.multiarray._reconstruct``, ``numpy.ndarray`` and ``numpy.dtype``; copies
#: re-saved by Python 3 with numpy 2 name ``numpy._core.multiarray._reconstruct`` and write
#: their bytes through ``_codecs.encode(text, "latin1")``. Dicts, lists, strings and numbers
#: are pickle opcodes, not globals.
_CIFAR_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): np.ndarray((0,)).__reduce__()[0],
    ("numpy._core.multiarray", "_reconstruct"): np.ndarray((0,)).__reduce__()[0],
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _latin1_encode,
}


class _CifarUnpickler(pickle.Unpickler):
    """Unpickles CIFAR python batches and nothing else: any other global is refused before it is looked up.

    ``pickle.load`` would import and call whatever a file names (``os.system``, ``builtins.exec``, ...),
    so a crafted ``batches.meta`` could run code; here it raises instead.
    """

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _CIFAR_GLOBALS[module, name]
        except KeyError:
            raise _ForbiddenGlobal(f"the global {module}.{name}") from None


# ------------------------------------------------------------------ ImageFolder trees


def load_image_folder(
    root: PathLike,
    train_transform: Callable[[Any], Any] | None = None,
    test_transform: Callable[[Any], Any] | None = None,
    classes: Sequence[str] | None = None,
) -> DatasetSplits:
    """An image-classification tree as torchvision ``ImageFolder`` datasets.

    Expects ``root/train/<class>/<image>`` and ``root/val/<class>/<image>`` (or
    ``root/test/...``). ``classes`` restricts both splits to those class folders (all of
    which must exist); otherwise the classes are the train split's folders. Class
    indices follow the sorted class names, identical in both splits.

    Raises:
        FileNotFoundError: missing root, split or class folders, or no images.
    """
    root = Path(root).expanduser()
    layout = "ROOT/train/<class>/<image> and ROOT/val/<class>/<image> (or ROOT/test/...)"
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist; expected {layout}; point --data-root at ROOT")
    train_dir = root / "train"
    test_dir = next((root / name for name in ("val", "test") if (root / name).is_dir()), None)
    if not train_dir.is_dir() or test_dir is None:
        raise FileNotFoundError(f"{root} lacks a train/ or val/ (test/) folder; expected {layout}")
    if classes is None:
        classes = sorted(entry.name for entry in train_dir.iterdir() if entry.is_dir())
        if not classes:
            raise FileNotFoundError(f"{train_dir} has no class folders; expected {layout}")
    return DatasetSplits(
        _class_subset_folder(train_dir, classes, train_transform, layout),
        _class_subset_folder(test_dir, classes, test_transform, layout),
    )


def _class_subset_folder(
    directory: Path, classes: Sequence[str], transform: Callable[[Any], Any] | None, layout: str
) -> Any:
    missing = [name for name in sorted(classes) if not (directory / name).is_dir()]
    if missing:
        shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise FileNotFoundError(
            f"{directory} lacks {len(missing)} of the {len(classes)} expected class folders ({shown}); "
            f"expected {layout}"
        )
    try:
        return _class_subset_folder_type()(str(directory), classes, transform=transform)
    except FileNotFoundError as error:  # torchvision: a class folder without any image
        raise FileNotFoundError(f"{directory}: {str(error).splitlines()[0]}; expected {layout}") from None


@functools.cache
def _class_subset_folder_type() -> type:
    from torchvision.datasets import ImageFolder

    class ClassSubsetFolder(ImageFolder):
        """``ImageFolder`` reading only the given class folders (indices follow their sorted names)."""

        def __init__(self, root: str, classes: Sequence[str], **kwargs: Any) -> None:
            self.wanted_classes = sorted(classes)
            super().__init__(root, **kwargs)

        def find_classes(self, directory: str) -> tuple[list[str], dict[str, int]]:
            return self.wanted_classes, {name: index for index, name in enumerate(self.wanted_classes)}

    ClassSubsetFolder.__module__, ClassSubsetFolder.__qualname__ = __name__, "ClassSubsetFolder"
    return ClassSubsetFolder


def __getattr__(name: str) -> Any:
    # The ImageFolder subclass is created on first use, so importing this module does not
    # import torchvision; a module attribute keeps its instances picklable (DataLoader workers).
    if name == "ClassSubsetFolder":
        return _class_subset_folder_type()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def load_imagenet100(
    root: PathLike,
    train_transform: Callable[[Any], Any] | None = None,
    test_transform: Callable[[Any], Any] | None = None,
) -> DatasetSplits:
    """ImageNet-100 (the 100 classes of :data:`~ncl_ext.data.imagenet100.IMAGENET100_WNIDS`).

    ``root`` is an ImageNet-style tree, ``root/train/<wnid>/*.JPEG`` and
    ``root/val/<wnid>/*.JPEG`` (validation images sorted into class folders); it may hold
    all 1,000 classes, only the 100 are used. Labels follow the sorted wnids.
    """
    return load_image_folder(root, train_transform, test_transform, classes=IMAGENET100_WNIDS)


def decode_image_folder(
    dataset: Any,
    size: int,
    num_workers: int = 0,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    desc: str = "decode images",
) -> ResidentImages:
    """Every image of an ``ImageFolder`` dataset, decoded once, as ``uint8`` ``(N, 3, size, size)`` ResidentImages.

    Each image is read by the dataset's own loader (PIL, RGB) and shaped by
    :func:`~ncl_ext.data.augment.decode_transform` (shorter side resized, centre crop), so
    un-augmented batches of the result equal what :func:`~ncl_ext.data.augment.eval_transform`
    makes of the files. Training views are then cropped from these ``size``-pixel images on
    the device (:class:`ResidentBatches`), not from the full-resolution files. Images are
    decoded by ``num_workers`` DataLoader workers (0: in this process), with a progress bar.
    Memory: ``N * 3 * size * size`` bytes.

    Examples:
        >>> import tempfile, pathlib
        >>> from PIL import Image
        >>> root = pathlib.Path(tempfile.mkdtemp())
        >>> for split in ("train", "val"):
        ...     (root / split / "cat").mkdir(parents=True)
        ...     Image.new("RGB", (40, 30)).save(root / split / "cat" / "0.png")
        >>> decode_image_folder(load_image_folder(root).train, size=16).images.shape
        torch.Size([1, 3, 16, 16])
    """
    check_int(size, "size")
    check_int(num_workers, "num_workers", minimum=0)
    samples = list(getattr(dataset, "samples", ()))
    if not samples or not callable(getattr(dataset, "loader", None)):
        raise ValueError(f"dataset must be a non-empty torchvision ImageFolder, got {type(dataset).__name__}")
    images = torch.empty(len(samples), 3, size, size, dtype=torch.uint8)
    loader = torch.utils.data.DataLoader(
        _DecodedImages(samples, dataset.loader, decode_transform(size)), batch_size=64, num_workers=num_workers
    )
    done = 0
    with progress(desc=desc, total=len(samples), unit="image") as bar:
        for batch in loader:
            images[done : done + len(batch)] = batch
            done += len(batch)
            bar.update(len(batch))
    labels = torch.tensor([label for _, label in samples], dtype=torch.int64)
    return ResidentImages(images, labels, list(dataset.classes), tuple(mean), tuple(std))


class _DecodedImages(torch.utils.data.Dataset):
    """The images of ``(path, label)`` samples, read by ``loader`` and shaped by ``transform`` (DataLoader workers)."""

    def __init__(self, samples: Sequence[tuple[str, int]], loader: Callable[[str], Any], transform: Callable) -> None:
        self.samples, self.loader, self.transform = samples, loader, transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> torch.Tensor:
        image = self.transform(self.loader(self.samples[index][0]))
        if image.shape[0] != 3:
            raise ValueError(f"{self.samples[index][0]}: decoded to {image.shape[0]} channels, expected 3 (RGB)")
        return image


def load_dataset(
    name: str,
    root: PathLike | None = None,
    *,
    download: bool = False,
    train_transform: Callable[[Any], Any] | None = None,
    test_transform: Callable[[Any], Any] | None = None,
    seed: int = 0,
) -> DatasetSplits:
    """Load dataset ``name`` (one of :data:`DATASETS`) from ``root`` (the ``--data-root``).

    ``digits`` needs no root (``seed`` fixes its split); ``cifar10``/``cifar100`` return
    :class:`ResidentImages`; ``imagenet100``/``imagefolder`` return ImageFolder datasets
    with the given transforms.
    """
    if name not in DATASETS:
        raise ValueError(f"dataset={name!r} is unknown; expected one of {DATASETS}")
    if name == "digits":
        return load_digits(seed=seed)
    if root is None:
        raise ValueError(f"dataset {name!r} needs a data root: pass --data-root DIR (root=DIR)")
    if name in _CIFAR:
        return load_cifar(root, name, download=download)
    if name == "imagenet100":
        return load_imagenet100(root, train_transform, test_transform)
    return load_image_folder(root, train_transform, test_transform)


# ------------------------------------------------------------------ resident batches


def _mixed_seed(*values: int) -> int:
    """A well-mixed 63-bit seed from several integers (NumPy's SeedSequence hashing)."""
    low, high = np.random.SeedSequence([int(v) for v in values]).generate_state(2, dtype=np.uint32)
    return (int(high) << 31 | int(low)) & (2**63 - 1)


class ResidentBatches:
    """Augmented mini-batches drawn from a :class:`ResidentImages` on its device.

    Epoch ``e`` visits the images in a permutation seeded by ``(seed, e)``; step ``s`` of
    it augments its images with a generator seeded by ``(seed, e, s, rank)``. So
    ``batches(e, start=s)`` yields exactly what the uninterrupted epoch yields from step
    ``s`` on: resuming mid-epoch reproduces the run. Implements the ``BatchSource``
    protocol of :class:`ncl_ext.training.Trainer` (``len()`` and ``batches(epoch, start)``).

    Args:
        data: the dataset; moved to ``device`` once (default: where it is).
        batch_size: images per batch **per process**.
        augmentation: the :class:`~ncl_ext.data.augment.BatchAugmentation` applied to each view.
        seed: the run's seed.
        num_views: 2 yields ``(view1, view2, labels)`` (contrastive), 1 yields ``(view, labels)``.
        drop_last: drop the last incomplete batch (required when ``world_size > 1``).
        rank, world_size: this process's share of each global batch of
            ``batch_size * world_size`` images (all ranks use the same permutation).
        device: where the images live and the batches are made.
    """

    def __init__(
        self,
        data: ResidentImages,
        batch_size: int,
        augmentation: BatchAugmentation,
        seed: int = 0,
        num_views: int = 2,
        drop_last: bool = True,
        rank: int = 0,
        world_size: int = 1,
        device: torch.device | str | None = None,
    ) -> None:
        if not isinstance(data, ResidentImages):
            raise ValueError(f"data must be ResidentImages, got {type(data).__name__}")
        if not isinstance(augmentation, BatchAugmentation):
            raise ValueError(f"augmentation must be a BatchAugmentation, got {type(augmentation).__name__}")
        if num_views not in (1, 2):
            raise ValueError(f"num_views={num_views!r}; expected 1 or 2")
        check_int(batch_size, "batch_size")
        check_int(world_size, "world_size")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank={rank!r}; expected 0 <= rank < world_size={world_size}")
        if world_size > 1 and not drop_last:
            raise ValueError("drop_last=False is not supported with world_size > 1 (ranks need equal batches)")
        self.data = data.to(device) if device is not None else data
        self.batch_size, self.augmentation, self.seed = batch_size, augmentation, seed
        self.num_views, self.drop_last, self.rank, self.world_size = num_views, drop_last, rank, world_size
        if len(self) == 0:
            raise ValueError(
                f"{len(data)} images make no batch of {batch_size * world_size} (batch_size x world_size); "
                "lower batch_size"
            )

    def __len__(self) -> int:
        global_batch = self.batch_size * self.world_size
        return len(self.data) // global_batch if self.drop_last else -(-len(self.data) // global_batch)

    def batches(self, epoch: int, start: int = 0) -> Iterator[tuple[torch.Tensor, ...]]:
        """Yield the batches of ``epoch`` from step ``start`` on."""
        if not 0 <= start <= len(self):
            raise ValueError(f"start={start!r}; expected 0 <= start <= {len(self)} (batches per epoch)")
        order = torch.randperm(len(self.data), generator=torch.Generator().manual_seed(_mixed_seed(self.seed, epoch)))
        order = _host_to_device(order, self.data.images.device)
        global_batch = self.batch_size * self.world_size
        for step in range(start, len(self)):
            first = step * global_batch + self.rank * self.batch_size
            rows = order[first : first + self.batch_size]
            generator = torch.Generator().manual_seed(_mixed_seed(self.seed, epoch, step, self.rank))
            images = self.data.images[rows]
            views = tuple(self.augmentation(images, generator) for _ in range(self.num_views))
            yield (*views, self.data.labels[rows])
