"""Image-caption pairs for CLIP training: HF ``datasets``, CSV files, caption folders, offline digits.

Every source becomes an :class:`ImageTextDataset`: item ``i`` is ``(image, captions,
label)`` with a PIL RGB image (decoded lazily), one or more captions (COCO-style data has
several per image; training draws one at random, evaluation uses the first) and a class
index (``-1`` without labels). With labels, ``classes`` names them, which is what
zero-shot classification prompts with.

Sources (:func:`load_pairs` picks one by name):

- ``hf``: a Hugging Face ``datasets`` dataset with an image and a text column, in memory
  (:func:`from_hf_dataset`), saved with ``save_to_disk``, a local data folder or a hub
  name (:func:`load_hf_dataset`);
- ``csv``: a CSV file of ``(image path, caption[, label])`` rows, paths relative to the
  file (:func:`load_csv`);
- ``folder``: images each with a same-named ``.txt`` caption beside it, the layout
  img2dataset writes (:func:`load_folder`);
- ``digits``: the offline default, scikit-learn's 1,797 real 8x8 handwritten digits
  captioned from varied templates ("a photo of the digit seven", "a handwritten 7", ...)
  (:func:`load_digit_captions`). Zero-shot classification of the held-out test digits
  prompts with :data:`DIGIT_PROMPT_TEMPLATES`, phrasings no caption uses.

:class:`ImageTextCollate` turns items into ``(pixels, tokens, labels)`` batches for a
``DataLoader``, with any image transform and any tokenizer (open_clip's, or a Hugging
Face one returning ``input_ids``).

Examples:
    >>> splits = load_digit_captions()
    >>> len(splits.train), len(splits.test), splits.train.classes[7]
    (1437, 360, 'seven')
    >>> image, captions, label = splits.test[0]
    >>> image.size, isinstance(captions[0], str), 0 <= label < 10
    ((8, 8), True, True)
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

__all__ = [
    "DATASETS",
    "DIGIT_CAPTION_TEMPLATES",
    "DIGIT_NAMES",
    "DIGIT_PROMPT_TEMPLATES",
    "IMAGE_EXTENSIONS",
    "ImageTextCollate",
    "ImageTextDataset",
    "ImageTextSplits",
    "from_hf_dataset",
    "load_csv",
    "load_digit_captions",
    "load_folder",
    "load_hf_dataset",
    "load_pairs",
    "split_pairs",
    "to_pil_image",
]

#: The source names :func:`load_pairs` knows.
DATASETS: tuple[str, ...] = ("digits", "csv", "folder", "hf")
IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")

DIGIT_NAMES: tuple[str, ...] = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
#: Caption templates of the digits pairs; ``{name}`` is the word, ``{digit}`` the numeral.
DIGIT_CAPTION_TEMPLATES: tuple[str, ...] = (
    "a photo of the digit {name}",
    "a handwritten {digit}",
    "the number {name}, written by hand",
    "a scan of a handwritten {name}",
    "a small grayscale image of the number {digit}",
    "a hand-drawn digit {name}",
    "a blurry picture of a {digit}",
    "the digit {digit}",
    "a pixelated {name}",
    "someone wrote the number {name}",
)
#: Zero-shot prompts for the digits (``{}`` is the class name): held out, no caption is phrased like them.
DIGIT_PROMPT_TEMPLATES: tuple[str, ...] = (
    "a picture of the digit {}.",
    "a handwritten number {}.",
    "an image of a {}.",
)

PathLike = str | os.PathLike


class ImageTextDataset(torch.utils.data.Dataset):
    """Image-caption pairs; item ``i`` is ``(PIL RGB image, captions tuple, label)``.

    Args:
        images: one entry per pair: PIL images, file paths, ``uint8`` arrays / tensors
            (``(H, W)``, ``(C, H, W)`` or ``(H, W, C)``), or HF-style ``{"bytes", "path"}``
            dicts; any sequence, decoded only when an item is read.
        captions: one caption, or a non-empty sequence of captions, per pair.
        labels: optional class index per pair (``-1`` for unlabelled pairs).
        classes: class names, ``classes[label]``; required with ``labels``.
    """

    def __init__(
        self,
        images: Sequence[Any],
        captions: Sequence[str | Sequence[str]],
        labels: Sequence[int] | None = None,
        classes: Sequence[str] | None = None,
    ) -> None:
        if len(images) != len(captions):
            raise ValueError(f"images and captions must pair up, got {len(images)} images and {len(captions)} captions")
        self.images = images
        self.captions = [_caption_tuple(caption, row) for row, caption in enumerate(captions)]
        if labels is not None:
            labels = [int(label) for label in labels]
            if len(labels) != len(captions):
                raise ValueError(f"labels must have one entry per pair ({len(captions)}), got {len(labels)}")
            if not classes or any(not -1 <= label < len(classes) for label in labels):
                raise ValueError("labels must be indices into classes (or -1), and classes must name them")
        self.labels = labels
        self.classes = list(classes) if classes is not None else None

    def __len__(self) -> int:
        return len(self.captions)

    def __getitem__(self, index: int) -> tuple[Any, tuple[str, ...], int]:
        label = self.labels[index] if self.labels is not None else -1
        return to_pil_image(self.images[index]), self.captions[index], label

    @property
    def has_labels(self) -> bool:
        return self.labels is not None and any(label >= 0 for label in self.labels)

    def subset(self, indices: Sequence[int]) -> ImageTextDataset:
        """The pairs at ``indices``, in that order (images stay lazy)."""
        indices = [int(i) for i in indices]
        labels = [self.labels[i] for i in indices] if self.labels is not None else None
        return ImageTextDataset(_Rows(self.images, indices), [self.captions[i] for i in indices], labels, self.classes)


class ImageTextSplits(NamedTuple):
    """Training and test pairs, with the zero-shot prompt templates that suit them (``{}`` = class name)."""

    train: ImageTextDataset
    test: ImageTextDataset
    prompt_templates: tuple[str, ...] = ()


class _Rows:
    """A lazy view of ``items[indices]``."""

    def __init__(self, items: Sequence[Any], indices: Sequence[int]) -> None:
        self.items, self.indices = items, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> Any:
        return self.items[self.indices[index]]


class _Column:
    """One column of a HF dataset, read row by row (so images are decoded only when used)."""

    def __init__(self, dataset: Any, column: str) -> None:
        self.dataset, self.column = dataset, column

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Any:
        return self.dataset[int(index)][self.column]


def _caption_tuple(caption: Any, row: int) -> tuple[str, ...]:
    captions = (caption,) if isinstance(caption, str) else tuple(caption) if isinstance(caption, Sequence) else ()
    if not captions or not all(isinstance(c, str) and c.strip() for c in captions):
        raise ValueError(f"pair {row}: captions must be a non-empty string or a list of them, got {caption!r}")
    return captions


def to_pil_image(image: Any) -> Any:
    """A PIL RGB image from a PIL image, a file path, a ``uint8`` array / tensor, or a ``{"bytes", "path"}`` dict."""
    from PIL import Image

    if isinstance(image, dict):
        image = io.BytesIO(image["bytes"]) if image.get("bytes") is not None else image.get("path")
    if isinstance(image, (str, os.PathLike, io.BytesIO)):
        if not isinstance(image, io.BytesIO) and not Path(image).is_file():
            raise FileNotFoundError(f"image file {os.fspath(image)} does not exist")
        with Image.open(image) as opened:
            return opened.convert("RGB")
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if isinstance(image, (torch.Tensor, np.ndarray)):
        array = image.cpu().numpy() if isinstance(image, torch.Tensor) else image
        if array.dtype != np.uint8 or array.ndim not in (2, 3):
            raise ValueError(
                f"image arrays must be uint8 (H, W), (C, H, W) or (H, W, C), got {array.dtype} {array.shape}"
            )
        if array.ndim == 3 and array.shape[0] in (1, 3) and array.shape[-1] not in (1, 3):
            array = array.transpose(1, 2, 0)  # channels first -> last
        array = array[..., 0] if array.ndim == 3 and array.shape[-1] == 1 else array
        return Image.fromarray(np.ascontiguousarray(array)).convert("RGB")
    raise ValueError(
        f"cannot read an image from a {type(image).__name__}; expected a PIL image, a path or a uint8 array"
    )


# ------------------------------------------------------------------ sources


def load_digit_captions(seed: int = 0, test_fraction: float = 0.2) -> ImageTextSplits:
    """scikit-learn's 8x8 handwritten digits as image-caption pairs, offline.

    The split is :func:`ncl_ext.data.load_digits`' (stratified, 1,437 train / 360 test
    with the defaults). Each training image carries every caption of
    :data:`DIGIT_CAPTION_TEMPLATES` (training draws one per step); each test image one,
    drawn with ``seed``. Classes are the words ``zero`` ... ``nine``; the zero-shot prompts
    are :data:`DIGIT_PROMPT_TEMPLATES`.
    """
    from ncl_ext.data.images import load_digits

    digits = load_digits(test_fraction=test_fraction, seed=seed)

    def captions(label: int) -> tuple[str, ...]:
        return tuple(t.format(name=DIGIT_NAMES[label], digit=label) for t in DIGIT_CAPTION_TEMPLATES)

    train_labels = digits.train.labels.tolist()
    test_labels = digits.test.labels.tolist()
    choice = np.random.default_rng(seed).integers(len(DIGIT_CAPTION_TEMPLATES), size=len(test_labels))
    train = ImageTextDataset(digits.train.images, [captions(y) for y in train_labels], train_labels, DIGIT_NAMES)
    test = ImageTextDataset(
        digits.test.images, [captions(y)[c] for y, c in zip(test_labels, choice)], test_labels, DIGIT_NAMES
    )
    return ImageTextSplits(train, test, DIGIT_PROMPT_TEMPLATES)


def from_hf_dataset(
    dataset: Any, image_column: str = "image", caption_column: str = "caption", label_column: str | None = None
) -> ImageTextDataset:
    """Pairs from a Hugging Face ``datasets.Dataset`` (in memory or loaded).

    ``image_column`` holds images (the ``Image`` feature, paths or bytes); ``caption_column``
    a caption or a list of captions per row; ``label_column`` (optional) a ``ClassLabel``
    or class names.

    Examples:
        >>> import datasets
        >>> from PIL import Image
        >>> table = datasets.Dataset.from_dict({"image": [Image.new("RGB", (4, 4))] * 2,
        ...                                     "caption": ["a black square", "nothing at all"]})
        >>> pairs = from_hf_dataset(table)
        >>> pairs[1][1]
        ('nothing at all',)
    """
    columns = list(dataset.column_names)
    named = (("image_column", image_column), ("caption_column", caption_column), ("label_column", label_column))
    for argument, column in named:
        if column is not None and column not in columns:
            raise ValueError(f"{argument}={column!r} is not a column of the dataset; its columns are {columns}")
    labels, classes = None, None
    if label_column is not None:
        names = getattr(dataset.features[label_column], "names", None)
        values = list(dataset[label_column])
        labels, classes = (values, list(names)) if names is not None else _encode_labels(values)
    return ImageTextDataset(_Column(dataset, image_column), list(dataset[caption_column]), labels, classes)


def load_hf_dataset(
    source: str,
    split: str = "train",
    image_column: str = "image",
    caption_column: str = "caption",
    label_column: str | None = None,
) -> ImageTextDataset:
    """Pairs from a dataset folder written by ``save_to_disk``, a local data folder, or a hub name.

    A folder saved by ``save_to_disk`` (holding a ``DatasetDict``) is read with
    ``datasets.load_from_disk`` and indexed by ``split``; anything else goes to
    ``datasets.load_dataset(source, split=split)`` (a folder of images with a
    ``metadata.csv``, a hub name when the hub is reachable).
    """
    import datasets

    path = Path(source)
    if (path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file():
        dataset = datasets.load_from_disk(source)
        if isinstance(dataset, datasets.DatasetDict):
            if split not in dataset:
                raise ValueError(f"split={split!r} is not in {source}; its splits are {list(dataset)}")
            dataset = dataset[split]
    else:
        try:
            dataset = datasets.load_dataset(source, split=split)
        except (FileNotFoundError, ConnectionError, OSError) as error:
            raise FileNotFoundError(
                f"cannot load the HF dataset {source!r} (split {split!r}): {error}. Point --data-root at a folder "
                "saved with Dataset.save_to_disk, a local data folder, or a hub name reachable from here"
            ) from error
    return from_hf_dataset(dataset, image_column, caption_column, label_column)


def load_csv(
    path: PathLike, image_column: str = "image", caption_column: str = "caption", label_column: str | None = None
) -> ImageTextDataset:
    """Pairs from a CSV file with a header row; image paths are relative to the file's folder.

    Examples:
        >>> import tempfile
        >>> from PIL import Image
        >>> folder = Path(tempfile.mkdtemp())
        >>> Image.new("RGB", (4, 4), "red").save(folder / "red.png")
        >>> _ = (folder / "pairs.csv").write_text("image,caption,label\\nred.png,a red square,red\\n")
        >>> pairs = load_csv(folder / "pairs.csv", label_column="label")
        >>> pairs[0][1], pairs.classes
        (('a red square',), ['red'])
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"CSV file {path} does not exist; point --data-root at a CSV of (image, caption) rows")
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    header = list(rows[0]) if rows else []
    named = (("image_column", image_column), ("caption_column", caption_column), ("label_column", label_column))
    for argument, column in named:
        if column is not None and column not in header:
            raise ValueError(f"{argument}={column!r} is not a column of {path}; its header is {header}")
    images = [path.parent / row[image_column] for row in rows]
    missing = [str(image) for image in images if not image.is_file()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} image(s) listed in {path} do not exist, e.g. {missing[0]}")
    labels, classes = _encode_labels([row[label_column] for row in rows]) if label_column else (None, None)
    return ImageTextDataset(images, [row[caption_column] for row in rows], labels, classes)


def load_folder(root: PathLike) -> ImageTextDataset:
    """Pairs from a folder tree of images, each captioned by the ``.txt`` file of the same name."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"folder {root} does not exist; point --data-root at a folder of images and captions")
    images = sorted(
        p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.with_suffix(".txt").is_file()
    )
    if not images:
        raise ValueError(f"{root} holds no image with a caption; expected e.g. 0001.jpg next to 0001.txt")
    return ImageTextDataset(images, [p.with_suffix(".txt").read_text(encoding="utf-8").strip() for p in images])


def _encode_labels(values: Sequence[Any]) -> tuple[list[int], list[str]]:
    """Class names -> (indices into the sorted names, sorted names); empty values are unlabelled (-1)."""
    names = [str(v) if v is not None else "" for v in values]
    classes = sorted({name for name in names if name})
    index = {name: i for i, name in enumerate(classes)}
    return [index.get(name, -1) for name in names], classes


def split_pairs(
    dataset: ImageTextDataset, test_fraction: float, seed: int = 0
) -> tuple[ImageTextDataset, ImageTextDataset]:
    """A random ``(train, test)`` split of the pairs, the test part ``test_fraction`` of them."""
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction={test_fraction!r}; expected a fraction in (0, 1)")
    order = np.random.default_rng(seed).permutation(len(dataset))
    test_size = max(1, round(test_fraction * len(dataset)))
    if test_size >= len(dataset):
        raise ValueError(f"{len(dataset)} pairs are too few to hold out test_fraction={test_fraction}")
    return dataset.subset(sorted(order[test_size:])), dataset.subset(sorted(order[:test_size]))


def load_pairs(
    dataset: str,
    data_root: PathLike | None = None,
    *,
    split: str = "train",
    test_split: str | None = None,
    test_fraction: float = 0.2,
    seed: int = 0,
    image_column: str = "image",
    caption_column: str = "caption",
    label_column: str | None = None,
) -> ImageTextSplits:
    """Train and test pairs of ``dataset`` (one of :data:`DATASETS`) found at ``data_root``.

    ``hf`` datasets evaluate on ``test_split`` when given; otherwise (and for ``csv`` and
    ``folder``) a seeded ``test_fraction`` of the pairs is held out. ``digits`` needs no root.
    """
    if dataset not in DATASETS:
        raise ValueError(f"dataset={dataset!r} is unknown; expected one of {DATASETS}")
    if dataset == "digits":
        return load_digit_captions(seed=seed, test_fraction=test_fraction)
    if data_root is None:
        raise ValueError(f"dataset={dataset!r} needs --data-root: the CSV file, caption folder or HF dataset to read")
    columns = dict(image_column=image_column, caption_column=caption_column, label_column=label_column)
    if dataset == "hf":
        pairs = load_hf_dataset(os.fspath(data_root), split=split, **columns)
        if test_split is not None:
            return ImageTextSplits(pairs, load_hf_dataset(os.fspath(data_root), split=test_split, **columns))
    else:
        pairs = load_csv(data_root, **columns) if dataset == "csv" else load_folder(data_root)
    return ImageTextSplits(*split_pairs(pairs, test_fraction, seed))


class ImageTextCollate:
    """``DataLoader`` collate: ``(image, captions, label)`` items -> ``(pixels, tokens, labels)``.

    Args:
        transform: PIL image -> ``(C, H, W)`` tensor (e.g. open_clip's preprocess).
        tokenizer: list of strings -> ``LongTensor`` of token ids (open_clip's tokenizer, or
            a function returning a Hugging Face tokenizer's ``input_ids``).
        random_caption: draw one of each image's captions at random (training, from
            torch's random generator); otherwise use the first (evaluation).
    """

    def __init__(
        self,
        transform: Callable[[Any], torch.Tensor],
        tokenizer: Callable[[list[str]], torch.Tensor],
        random_caption: bool = False,
    ) -> None:
        self.transform, self.tokenizer, self.random_caption = transform, tokenizer, random_caption

    def __call__(
        self, items: Sequence[tuple[Any, tuple[str, ...], int]]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        pixels = torch.stack([self.transform(image) for image, _, _ in items])
        if self.random_caption:
            picks = [int(torch.randint(len(captions), ())) for _, captions, _ in items]
        else:
            picks = [0] * len(items)
        texts = [captions[pick] for (_, captions, _), pick in zip(items, picks)]
        labels = torch.tensor([label for _, _, label in items], dtype=torch.long)
        return pixels, self.tokenizer(texts), labels
