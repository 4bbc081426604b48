"""Supervised learning: cross-entropy (CE) against non-negative cross-entropy (NCE), side by side.

Wang, Zhang, Guo, Wang, "Non-negative Contrastive Learning" (ICLR 2024, arXiv:2403.12459,
Sec. 6) read cross-entropy as contrastive learning between a sample's features ``f(x)``
and the class weights ``W_y``, and carry NCL over: NCE makes both sides of the inner
product non-negative, ``logits = f+(x) W+^T``. On ImageNet-100 (ResNet-18 from scratch)
they report CE 76.1 vs NCE 78.6, and 78.4 vs 79.2 with an MLP projector.

Why the class weights too: a ResNet (and :class:`~ncl_ext.models.SmallCNN`) ends with ReLU
then average pooling, so its pooled features are already non-negative and a ReLU on them
alone changes nothing without a projector; ``nonneg_weights=false`` gives that
features-only ablation (see :class:`~ncl_ext.models.NonNegativeClassifier`).

The four rows of the paper's table (``ce``, ``nce``, ``ce_mlp``, ``nce_mlp``) start from the
same backbone weights and see the same batches. Each run records the test accuracy after
every epoch (``acc_curve``, plotted in ``acc_curves.png``; no choice is made on it), the
final top-1 (``test_acc``) and the feature report of the features the classifier sees.

Presets (``recipes/supervised-nce/*.yaml``): ``digits`` (the offline default), ``cifar10``,
``cifar100``, ``imagenet100``; ``init_from=`` a vision-ssl run's checkpoints fine-tunes its
self-supervised backbone.

Examples:
    ncl-ext run supervised-nce                                       # digits, four rows, CPU
    ncl-ext run supervised-nce --preset cifar10 --data-root ~/data/cifar
    ncl-ext run supervised-nce --preset imagenet100 --data-root /data/imagenet100 \\
        init_from=runs/vision-ssl-imagenet100-HASH/ncl/checkpoints epochs=50 base_lr=0.05
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ncl_ext import analysis
from ncl_ext.analysis.loading import save_run_features
from ncl_ext.analysis.plots import plot_curves
from ncl_ext.checkpoint import load_backbone_weights, write_text_atomically
from ncl_ext.data import augment
from ncl_ext.data.image_data import ImageData
from ncl_ext.models import NonNegativeClassifier, build_backbone
from ncl_ext.recipes.config import setting
from ncl_ext.recipes.image_settings import ImageRunSettings, image_train_config
from ncl_ext.training import Trainer, make_accelerator, read_history, seed_everything

RUN_NAMES = ("ce", "nce", "ce_mlp", "nce_mlp")
DEFAULT_PRESET = "digits"
REPORTED_FEATURE_METRICS = ("sparsity", "semantic_consistency", "correlation", "active_dims", "dead_dims")


@dataclass
class Config(ImageRunSettings):
    """Every setting of a CE-vs-NCE run (override any of them with ``key=value``)."""

    runs: tuple[str, ...] = setting(RUN_NAMES, "which rows of the paper's table to train", choices=RUN_NAMES)
    backbone: str = setting("small_cnn_signed", "a name of ncl_ext.models.build_backbone")
    projector: tuple[int, ...] = setting((256, 128), "MLP projector sizes of the _mlp rows", minimum=1)
    nonneg: str = setting("relu", "the non-negative map of the nce rows", mode=True)
    nonneg_weights: bool = setting(True, "nce rows: class weights non-negative too (the paper's NCE)")
    init_from: str | None = setting(None, "a vision-ssl run's checkpoints folder to fine-tune from")
    epochs: int = setting(80, "passes over the training images", minimum=1)
    batch_size: int = setting(128, "images per batch and process", minimum=1)
    base_lr: float = setting(0.3, "learning rate at batch 256; scaled by global batch / 256", above=0)
    optimizer: str = setting("sgd", "optimizer (timm)", choices=("sgd", "lars", "adamw"))
    lars_eta: float = setting(0.02, "LARS trust coefficient, with optimizer=lars", above=0)
    lars_clip: bool = setting(True, "clip the LARS rate at the global rate, with optimizer=lars")
    weight_decay: float = setting(5e-5, "weight decay (not on biases and normalisation weights)", minimum=0)
    warmup_epochs: float = setting(1.0, "linear warm-up epochs before the cosine decay", minimum=0)
    warmup_start_lr: float | None = setting(None, "learning rate at the start of warm-up (None: lr / 1000)", minimum=0)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.projector:
            raise ValueError("projector=(); expected the MLP projector sizes of the _mlp runs, e.g. projector=2048,512")


def prepare(config: Config, output: Path) -> ImageData:
    """The data every run of the command shares, on the device of a new accelerator."""
    return ImageData(config, make_accelerator(config.device, config.mixed_precision, config.compile), num_views=1)


def derived_settings(config: Config) -> dict[str, Any]:
    return {"optimizer": image_train_config(config, num_processes=1, name="dry-run").optimizer_summary()}


def build_model(config: Config, name: str, data: ImageData) -> NonNegativeClassifier:
    """The classifier of row ``name``: plain or non-negative features (and weights), with or without projector."""
    seed_everything(config.seed)  # all four rows start from the same backbone weights
    nce = name.startswith("nce")
    model = NonNegativeClassifier(
        build_backbone(config.backbone, in_channels=data.channels),
        len(data.classes) if data.classes else int(data.train.labels.max()) + 1,
        nonneg=config.nonneg if nce else None,
        projector_dims=config.projector if name.endswith("_mlp") else None,
        nonneg_weights=nce and config.nonneg_weights,
        input_shape=(data.channels, data.size, data.size),
    )
    if config.init_from:
        load_backbone_weights(model.backbone, config.init_from)
    return model.to(memory_format=torch.channels_last) if config.channels_last else model


def _to_device(config: Config, data: ImageData, images: torch.Tensor) -> torch.Tensor:
    images = images.to(data.device, non_blocking=True)
    return images.contiguous(memory_format=torch.channels_last) if config.channels_last else images


def train(config: Config, name: str, data: ImageData, output: Path) -> NonNegativeClassifier:
    """Train row ``name`` (resuming from ``output/checkpoints``), scoring the test set after every epoch."""
    model = build_model(config, name, data)

    def compute_loss(model: torch.nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> dict[str, torch.Tensor]:
        images, labels = batch
        logits, features = model(_to_device(config, data, images), return_features=True)
        return {"loss": F.cross_entropy(logits.float(), labels.to(logits.device)), "features": features.float()}

    def evaluate_epoch(model: torch.nn.Module, epoch: int) -> dict[str, float]:
        correct = total = 0
        for images, labels in data.evaluation_batches("test"):
            predictions = model(_to_device(config, data, images)).argmax(dim=1)
            correct += int((predictions == labels.to(predictions.device)).sum())
            total += len(labels)
        return {"test_acc": correct / total}

    if not data.resident:
        augmentation = None  # folder datasets use ImageData's per-image transform
    elif config.dataset == "digits":
        augmentation = augment.digits_batch_augmentation(data.mean, data.std, size=config.image_size)
    else:
        augmentation = augment.supervised_batch_augmentation(data.size, data.mean, data.std)
    trainer = Trainer(
        model, compute_loss, data.training_batches(augmentation), image_train_config(config, data.world_size, name),
        output, accelerator=data.accelerator, evaluate_epoch=evaluate_epoch,
    )
    return trainer.fit().model


@torch.no_grad()
def evaluate(config: Config, name: str, model: NonNegativeClassifier, data: ImageData, output: Path) -> dict[str, Any]:
    """Final test accuracy, the per-epoch curve and the feature report of the classifier's input features."""
    model.eval()
    logits, features, labels = [], [], []
    for images, batch_labels in data.evaluation_batches("test"):
        output_ = model(_to_device(config, data, images), return_features=True)
        logits.append(output_.logits.float().cpu())
        features.append(output_.features.float().cpu())
        labels.append(batch_labels.cpu())
    logits, features, labels = torch.cat(logits), torch.cat(features), torch.cat(labels)
    report = analysis.feature_report(features, labels, sepin_samples=None)
    save_run_features(output, features, labels, images=data.raw_test_images())
    return {
        "test_acc": float((logits.argmax(dim=1) == labels).float().mean()),
        "acc_curve": [record["test_acc"] for record in read_history(output) if "test_acc" in record],
        **{key: report[key] for key in REPORTED_FEATURE_METRICS},
    }


def summarize(config: Config, runs: dict[str, dict[str, Any]], output: Path) -> None:
    """``acc_curves.png`` and ``acc_curves.md``: test accuracy per epoch, one line / column per row of the table."""
    curves = {name: metrics["acc_curve"] for name, metrics in runs.items()}
    plot_curves(curves, output / "acc_curves.png", ylabel="test accuracy", title="CE vs NCE: test accuracy per epoch")
    lines = ["| epoch | " + " | ".join(curves) + " |", "|---:|" + "---:|" * len(curves)]
    for epoch in range(max(len(curve) for curve in curves.values())):
        cells = [f"{curve[epoch]:.4f}" if epoch < len(curve) else "-" for curve in curves.values()]
        lines.append(f"| {epoch + 1} | " + " | ".join(cells) + " |")
    write_text_atomically(output / "acc_curves.md", "\n".join(lines) + "\n")
