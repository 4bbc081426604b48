"""Image data for the vision recipes: datasets, loaders and augmentations.

- :mod:`ncl_ext.data.images`: scikit-learn digits (offline default), CIFAR-10/100 from
  their python batches (read with a restricted unpickler), ImageNet-100 and any
  ``ImageFolder`` tree (decoded once and kept resident when it fits a memory budget,
  :func:`decode_image_folder`); device-resident augmented batches (:class:`ResidentBatches`)
  with exact resume;
- :mod:`ncl_ext.data.image_data`: :class:`~ncl_ext.data.image_data.ImageData`, the training
  and evaluation batches the image recipes read;
- :mod:`ncl_ext.data.image_text`, :mod:`ncl_ext.data.text_pairs`, :mod:`ncl_ext.data.graphs`:
  image-caption pairs, sentence pairs, graphs.
- :mod:`ncl_ext.data.augment`: SimCLR augmentations, per image (torchvision v2) and
  batched on the device (:class:`BatchAugmentation`).
- :mod:`ncl_ext.data.imagenet100`: the standard ImageNet-100 class list.

Examples:
    >>> from ncl_ext.data import load_digits
    >>> splits = load_digits()
    >>> len(splits.train), len(splits.test), len(splits.train.classes)
    (1437, 360, 10)
"""

from ncl_ext.data.augment import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    CIFAR100_MEAN,
    CIFAR100_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    AugmentationParams,
    BatchAugmentation,
    TwoViews,
    blur_kernel_size,
    decode_transform,
    digits_batch_augmentation,
    eval_transform,
    normalize_images,
    simclr_batch_augmentation,
    simclr_transform,
    supervised_batch_augmentation,
)
from ncl_ext.data.imagenet100 import IMAGENET100_WNIDS
from ncl_ext.data.images import (
    DATASETS,
    DatasetSplits,
    ResidentBatches,
    ResidentImages,
    decode_image_folder,
    load_cifar,
    load_dataset,
    load_digits,
    load_image_folder,
    load_imagenet100,
)

__all__ = [
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "CIFAR100_MEAN",
    "CIFAR100_STD",
    "DATASETS",
    "IMAGENET100_WNIDS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "AugmentationParams",
    "BatchAugmentation",
    "DatasetSplits",
    "ResidentBatches",
    "ResidentImages",
    "TwoViews",
    "blur_kernel_size",
    "decode_image_folder",
    "decode_transform",
    "digits_batch_augmentation",
    "eval_transform",
    "load_cifar",
    "load_dataset",
    "load_digits",
    "load_image_folder",
    "load_imagenet100",
    "normalize_images",
    "simclr_batch_augmentation",
    "simclr_transform",
    "supervised_batch_augmentation",
]
