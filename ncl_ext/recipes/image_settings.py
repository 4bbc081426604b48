"""The settings the image recipes (vision-ssl, supervised-nce) share, and the training configuration they build."""

from __future__ import annotations

import dataclasses
from typing import Any

from ncl_ext.recipes.config import DEVICES, Settings, setting

__all__ = ["ImageRunSettings", "image_train_config"]


@dataclasses.dataclass
class ImageRunSettings(Settings):
    """The settings every image recipe shares: the data :class:`~ncl_ext.data.image_data.ImageData` loads,
    the device and the training machinery."""

    dataset: str = setting(
        "digits", "which images to train on", choices=("digits", "cifar10", "cifar100", "imagenet100", "imagefolder")
    )
    data_root: str | None = setting(None, "folder holding the dataset (never written to); not needed for digits")
    download: bool = setting(False, "download CIFAR into data_root when it is missing (needs internet)")
    holdout: float = setting(
        0.0, "share of the training images (per class) held out as a validation split that replaces the test "
        "images in evaluation: choose settings with it, then report with 0", minimum=0, below=1,
    )
    device: str | None = setting(None, "cpu, cuda or mps; default: the best available", choices=DEVICES)
    image_size: int | None = setting(None, "side of the square training images; default: the dataset's", minimum=1)
    momentum: float = setting(0.9, "SGD / LARS momentum", minimum=0, below=1)
    grad_accum_steps: int = setting(1, "batches per optimizer step", minimum=1)
    mixed_precision: str = setting("no", "autocast precision", choices=("no", "bf16", "fp16"))
    channels_last: bool = setting(False, "channels-last memory format (faster convolutions on GPUs)")
    compile: bool = setting(False, "compile the model with TorchInductor")
    seed: int = setting(0, "seeds weights, augmentations and batch order (every run of a command uses the same)")
    checkpoint_every: int = setting(200, "batches between checkpoints", minimum=1)
    num_workers: int = setting(8, "DataLoader workers for folder datasets (and for decoding them once)", minimum=0)
    resident_budget_mb: float = setting(
        4096, "MiB a folder dataset's decoded images may take to be kept on the device and augmented there in "
        "batches; larger folders are read by DataLoader workers every epoch (0: always)", minimum=0,
    )
    eval_batch_size: int = setting(512, "batch size of feature extraction for evaluation", minimum=1, evaluation=True)


def image_train_config(config: Any, num_processes: int, name: str) -> Any:
    """The :class:`~ncl_ext.training.TrainConfig` of an image recipe's settings.

    The learning rate follows the linear scaling rule of SimCLR and of the official NCL code
    (solo-learn): ``base_lr * global_batch / 256``, ``global_batch = batch_size * processes *
    grad_accum_steps``.
    """
    from ncl_ext.training import TrainConfig

    global_batch = config.batch_size * num_processes * config.grad_accum_steps
    return TrainConfig(
        epochs=config.epochs,
        lr=config.base_lr * global_batch / 256,
        optimizer=config.optimizer,
        momentum=config.momentum,
        weight_decay=config.weight_decay,
        lars_trust_coeff=config.lars_eta,
        lars_clip=config.lars_clip,
        warmup_epochs=config.warmup_epochs,
        warmup_start_lr=config.warmup_start_lr,
        grad_accum_steps=config.grad_accum_steps,
        mixed_precision=config.mixed_precision,
        seed=config.seed,
        checkpoint_every=config.checkpoint_every,
        name=name,
    )
