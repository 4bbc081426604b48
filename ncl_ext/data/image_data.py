"""Training and evaluation batches of an image dataset, resident on the device when it fits.

The image recipes (self-supervised and supervised) read their data through
:class:`ImageData`: small datasets (digits, CIFAR) live on the device as uint8 tensors and
are augmented there in batches (:class:`~ncl_ext.data.images.ResidentBatches`), so the
loader never starves a GPU. Folder datasets (ImageNet-100, ImageFolder) join them when
their decoded images fit in ``resident_budget_mb`` (``N * 3 * size * size`` bytes for both
splits; default :data:`DEFAULT_RESIDENT_BUDGET_MB`): they are decoded once at the training
size (:func:`~ncl_ext.data.images.decode_image_folder`) and then served like CIFAR. Larger
folders are decoded and augmented per image by DataLoader workers in every epoch.

Examples:
    >>> from types import SimpleNamespace
    >>> settings = SimpleNamespace(dataset="digits", data_root=None, download=False, seed=0, image_size=None,
    ...                            batch_size=64, eval_batch_size=256, num_workers=0)
    >>> data = ImageData(settings)
    >>> view1, view2, labels = next(iter(data.training_batches().batches(epoch=0)))
    >>> view1.shape, len(data.classes)
    (torch.Size([64, 1, 8, 8]), 10)
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch

from ncl_ext.data import augment, images
from ncl_ext.log import logger

__all__ = ["DEFAULT_RESIDENT_BUDGET_MB", "ImageData"]

#: Memory (MiB) a folder dataset's decoded images may take to be kept resident, when the
#: config has no ``resident_budget_mb``.
DEFAULT_RESIDENT_BUDGET_MB = 4096


class ImageData:
    """Training and evaluation batches for any dataset of :mod:`ncl_ext.data.images`.

    Args:
        config: the recipe's settings: ``dataset``, ``data_root``, ``download``, ``seed``,
            ``image_size`` (``None``: the dataset's), ``batch_size``, ``eval_batch_size``, ``num_workers``,
            and optionally ``resident_budget_mb`` (MiB a folder dataset may take in memory to be
            kept resident; 0 always streams it with a DataLoader) and ``holdout`` (a share of the
            training images, per class, held out: they replace the test images in evaluation,
            so that settings are chosen without touching the test set).
        accelerator: an ``accelerate.Accelerator`` (its device holds resident datasets and
            receives the batches; each process gets its shard of the training batches);
            ``None``: one process on the CPU.
        num_views: 2 for contrastive pairs ``(view1, view2, labels)``, 1 for ``(view, labels)``.
    """

    def __init__(self, config: Any, accelerator: Any = None, num_views: int = 2) -> None:
        self.config, self.accelerator, self.num_views = config, accelerator, num_views
        self.device = torch.device("cpu") if accelerator is None else accelerator.device
        self.rank = 0 if accelerator is None else accelerator.process_index
        self.world_size = 1 if accelerator is None else accelerator.num_processes
        load = dict(download=config.download, seed=config.seed)
        splits = images.load_dataset(config.dataset, config.data_root, **load)
        self.resident = isinstance(splits.train, images.ResidentImages)
        if not self.resident and self._fits_in_memory(splits):
            size, workers = config.image_size or 224, config.num_workers
            splits = images.DatasetSplits(
                *(
                    images.decode_image_folder(split, size, workers, desc=f"decode {name}")
                    for name, split in zip(("train", "test"), splits)
                )
            )
            self.resident = True
        holdout = getattr(config, "holdout", 0.0) or 0.0
        if self.resident:
            if holdout:
                kept, held = images.stratified_holdout(splits.train.labels, holdout, config.seed)
                splits = images.DatasetSplits(splits.train.subset(kept), splits.train.subset(held))
            self.train, self.test = splits.train.to(self.device), splits.test.to(self.device)
            self.channels = self.train.images.shape[1]
            self.size = config.image_size or self.train.images.shape[-1]
            self.mean, self.std = self.train.mean, self.train.std
        else:
            self.channels, self.size = 3, config.image_size or 224
            self.mean, self.std = augment.IMAGENET_MEAN, augment.IMAGENET_STD
            plain = augment.eval_transform(self.size, self.mean, self.std)
            views = augment.simclr_transform(self.size, self.mean, self.std)
            train_transform = augment.TwoViews(views) if num_views == 2 else views
            self.train = images.load_dataset(
                config.dataset, config.data_root, train_transform=train_transform, **load
            ).train
            self.train_plain, self.test = images.load_dataset(
                config.dataset, config.data_root, train_transform=plain, test_transform=plain, **load
            )
            if holdout:
                kept, held = images.stratified_holdout(self.train_plain.targets, holdout, config.seed)
                subset = torch.utils.data.Subset
                self.train, self.test = subset(self.train, kept.tolist()), subset(self.train_plain, held.tolist())
                self.train_plain = subset(self.train_plain, kept.tolist())
        self.classes = list(getattr(splits.train, "classes", []))

    def _fits_in_memory(self, splits: images.DatasetSplits) -> bool:
        """Whether a folder dataset's decoded images fit the memory budget (logged either way)."""
        config = self.config
        budget_mb = getattr(config, "resident_budget_mb", DEFAULT_RESIDENT_BUDGET_MB)
        if budget_mb is None or isinstance(budget_mb, bool) or not budget_mb >= 0:
            raise ValueError(f"resident_budget_mb={budget_mb!r}; expected a number of MiB >= 0")
        size = config.image_size or 224
        count = len(splits.train) + len(splits.test)
        needed_mb = count * 3 * size * size / 2**20
        fits = needed_mb <= budget_mb
        logger.info(
            f"{config.dataset}: {count} images take {needed_mb:.0f} MiB decoded at {size} px; "
            + (f"kept in memory on {self.device} (resident_budget_mb={budget_mb:g})" if fits else
               f"over resident_budget_mb={budget_mb:g}, so read by DataLoader workers in every epoch")
        )
        return fits

    def training_batches(self, augmentation: Any = None) -> Any:
        """Augmented training batches: ``(view1, view2, labels)`` or ``(view, labels)``."""
        config = self.config
        if self.resident:
            if augmentation is None and config.dataset == "digits":
                augmentation = augment.digits_batch_augmentation(self.mean, self.std, size=config.image_size)
            elif augmentation is None:
                augmentation = augment.simclr_batch_augmentation(self.size, self.mean, self.std)
            return images.ResidentBatches(
                self.train, config.batch_size, augmentation, seed=config.seed, num_views=self.num_views,
                rank=self.rank, world_size=self.world_size,
            )
        return torch.utils.data.DataLoader(
            self.train, batch_size=config.batch_size, shuffle=True, drop_last=True, collate_fn=_collate_views,
            num_workers=config.num_workers, pin_memory=torch.cuda.is_available(),
            persistent_workers=config.num_workers > 0,
        )

    def evaluation_batches(self, split: str) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Un-augmented, normalised ``(images, labels)`` batches of ``split`` in a fixed order."""
        if self.resident:
            dataset = self.train if split == "train" else self.test
            size = self.size if self.size != dataset.images.shape[-1] else None
            yield from dataset.eval_batches(self.config.eval_batch_size, size=size)
            return
        dataset = self.train_plain if split == "train" else self.test
        loader = torch.utils.data.DataLoader(
            dataset, batch_size=self.config.eval_batch_size, num_workers=self.config.num_workers,
            pin_memory=torch.cuda.is_available(),
        )
        for batch_images, labels in loader:
            yield batch_images.to(self.device), labels.to(self.device)

    def raw_test_images(self) -> torch.Tensor | None:
        """The test images as uint8 ``(N, C, H, W)``, for the top-activating image grids."""
        return self.test.images.cpu() if self.resident else None


def _collate_views(samples: list) -> tuple[torch.Tensor, ...]:
    """``[((view1, view2), label), ...]`` -> ``(views1, views2, labels)``, as resident batches are."""
    views, labels = torch.utils.data.default_collate(samples)
    return (*views, labels) if isinstance(views, (list, tuple)) else (views, labels)
