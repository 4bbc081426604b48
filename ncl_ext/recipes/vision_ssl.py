"""Vision self-supervised learning: SimCLR with plain (CL) and non-negative (NCL) projections.

Reproduces the image experiments of Wang, Zhang, Guo, Wang, "Non-negative Contrastive
Learning" (ICLR 2024, arXiv:2403.12459): the same backbone, projector, augmentations,
seed and data order are trained twice, once with the plain InfoNCE objective (CL) and
once with a non-negative head on the projector output (NCL), then evaluated side by side:

- ``linear_probe_acc`` and ``knn_acc`` on the backbone features;
- the feature report of the projector outputs on the test images (``sparsity``,
  ``semantic_consistency``, ``correlation``, ``effective_rank``, ``active_dims``, ``dead_dims``);
- retrieval ``precision@10`` among the test images with all projector dimensions, with the
  25% of highest expected activation ranked on the training images (``precision@10_ea25``)
  and with a random 25% (``precision@10_random25``, averaged over several draws).

Presets (``recipes/vision-ssl/*.yaml``): ``digits`` (the offline default), ``cifar10``,
``cifar100``, ``imagenet100`` (the official configs) and ``imagefolder``.

Examples:
    ncl-ext run vision-ssl                                    # digits, CL vs NCL, CPU
    ncl-ext run vision-ssl --preset cifar10 --data-root ~/data/cifar
    accelerate launch -m ncl_ext run vision-ssl --preset imagenet100 --data-root /data/imagenet100
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ncl_ext import analysis
from ncl_ext.analysis.loading import save_run_features
from ncl_ext.data import augment
from ncl_ext.data.image_data import ImageData
from ncl_ext.losses import InfoNCELoss, SpectralContrastiveLoss
from ncl_ext.models import ContrastiveModel, build_backbone
from ncl_ext.recipes.config import setting
from ncl_ext.recipes.image_settings import ImageRunSettings, image_train_config
from ncl_ext.training import Trainer, make_accelerator, seed_everything

RUN_NAMES = ("cl", "ncl")
DEFAULT_PRESET = "digits"


@dataclass
class Config(ImageRunSettings):
    """Every setting of a vision SSL run (override any of them with ``key=value``)."""

    runs: tuple[str, ...] = setting(RUN_NAMES, "which runs to train: cl (plain SimCLR), ncl (non-negative head)",
                                    choices=RUN_NAMES)
    backbone: str = setting("small_cnn", "a name of ncl_ext.models.build_backbone (resnet18_cifar, timm:..., ...)")
    projector: tuple[int, ...] = setting((512, 512), "projector hidden sizes then output size", minimum=1)
    nonneg: str = setting("relu", "the non-negative map of the ncl run", mode=True)
    loss: str = setting("infonce", "the contrastive objective", choices=("infonce", "spectral"))
    temperature: float = setting(0.2, "InfoNCE temperature", above=0)
    epochs: int = setting(60, "passes over the training images", minimum=1)
    batch_size: int = setting(256, "images per batch and process (each gives two views)", minimum=2)
    base_lr: float = setting(0.4, "learning rate at batch 256; scaled by global batch / 256", above=0)
    optimizer: str = setting("lars", "optimizer (timm)", choices=("lars", "sgd", "adamw"))
    lars_eta: float = setting(0.02, "LARS trust coefficient (solo-learn's eta)", above=0)
    lars_clip: bool = setting(True, "clip the LARS rate at the global rate (solo-learn's clip_lr)")
    weight_decay: float = setting(1e-4, "weight decay (not on biases and normalisation weights)", minimum=0)
    warmup_epochs: float = setting(10.0, "linear warm-up epochs before the cosine decay", minimum=0)
    warmup_start_lr: float | None = setting(3e-5, "learning rate at the start of warm-up (None: lr / 1000)", minimum=0)
    probe_epochs: int = setting(100, "epochs of the linear probe", minimum=1, evaluation=True)
    knn_k: int = setting(20, "neighbours of the kNN probe", minimum=1, evaluation=True)
    select_fraction: float = setting(0.25, "share of dimensions kept by EA / random selection", above=0, maximum=1,
                                     evaluation=True)
    random_draws: int = setting(5, "random selections averaged for precision@10_random", minimum=1, evaluation=True)
    top_images: int = setting(8, "dimensions shown in the top-activating image grid", minimum=1, evaluation=True)


def prepare(config: Config, output: Path) -> ImageData:
    """The data every run of the command shares, on the device of a new accelerator."""
    return ImageData(config, make_accelerator(config.device, config.mixed_precision, config.compile))


def derived_settings(config: Config) -> dict[str, Any]:
    return {"optimizer": image_train_config(config, num_processes=1, name="dry-run").optimizer_summary()}


def train(config: Config, name: str, data: ImageData, output: Path) -> ContrastiveModel:
    """Train run ``name`` (resuming from ``output/checkpoints``); CL and NCL share weights and batches."""
    accelerator = data.accelerator
    seed_everything(config.seed)
    model = ContrastiveModel(
        build_backbone(config.backbone, in_channels=data.channels), projector_dims=config.projector,
        nonneg=config.nonneg if name == "ncl" else None, input_shape=(data.channels, data.size, data.size),
    )
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    gather = accelerator.num_processes > 1
    # The NCL model already applies the non-negative head, so the loss itself is plain.
    if config.loss == "infonce":
        criterion = InfoNCELoss(temperature=config.temperature, gather_distributed=gather)
    else:
        criterion = SpectralContrastiveLoss(gather_distributed=gather)

    def compute_loss(model: torch.nn.Module, batch: tuple[torch.Tensor, ...]) -> dict[str, torch.Tensor]:
        both = torch.cat([batch[0], batch[1]]).to(accelerator.device, non_blocking=True)
        if config.channels_last:
            both = both.contiguous(memory_format=torch.channels_last)
        z1, z2 = model(both).projections.float().chunk(2)
        return {"loss": criterion(z1, z2), "features": z1}

    augmentation = augment.digits_batch_augmentation(data.mean, data.std, size=config.image_size) \
        if config.dataset == "digits" else None
    train_config = image_train_config(config, accelerator.num_processes, name)
    trainer = Trainer(model, compute_loss, data.training_batches(augmentation), train_config, output,
                      accelerator=accelerator)
    return trainer.fit().model


@torch.no_grad()
def _collect(model: ContrastiveModel, batches: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Backbone features, projections and labels of every batch, on the CPU."""
    model.eval()
    features, projections, labels = [], [], []
    for batch_images, batch_labels in batches:
        output = model(batch_images.to(next(model.parameters()).device))
        features.append(output.features.float().cpu())
        projections.append(output.projections.float().cpu())
        labels.append(batch_labels.cpu())
    return torch.cat(features), torch.cat(projections), torch.cat(labels)


def evaluate(config: Config, name: str, model: ContrastiveModel, data: ImageData, output: Path) -> dict[str, Any]:
    """Probes on the backbone features; report, retrieval and EA selection on the test projections."""
    train_h, train_z, train_y = _collect(model, data.evaluation_batches("train"))
    test_h, test_z, test_y = _collect(model, data.evaluation_batches("test"))
    metrics: dict[str, Any] = {
        "linear_probe_acc": analysis.linear_probe(
            train_h, train_y, test_h, test_y, epochs=config.probe_epochs, device=data.device, seed=config.seed
        ),
        "knn_acc": analysis.knn_accuracy(train_h, train_y, test_h, test_y, k=config.knn_k),
    }
    report = analysis.feature_report(test_z, test_y)
    for key in ("sparsity", "semantic_consistency", "correlation", "effective_rank", "active_dims", "dead_dims"):
        metrics[key] = report[key]
    # Feature selection: expected activation is ranked on the training images, used on the test images.
    keep = max(1, round(config.select_fraction * test_z.shape[1]))
    percent = round(100 * config.select_fraction)
    metrics["precision@10"] = analysis.retrieval_precision(test_z, test_y, k=10)
    ea_dims = analysis.expected_activation_order(train_z)[:keep]
    metrics[f"precision@10_ea{percent}"] = analysis.retrieval_precision(test_z[:, ea_dims], test_y, k=10)
    dim = test_z.shape[1]
    draws = [analysis.random_dims(dim, keep, seed=config.seed + draw) for draw in range(config.random_draws)]
    metrics[f"precision@10_random{percent}"] = sum(
        analysis.retrieval_precision(test_z[:, dims], test_y, k=10) for dims in draws
    ) / len(draws)

    raw = data.raw_test_images()
    save_run_features(output, test_z, test_y, ea_order=analysis.expected_activation_order(train_z), images=raw)
    analysis.plot_activation_frequency(test_z, output / "activation_frequency.png", title=f"{name}: activation")
    analysis.plot_correlation_heatmap(test_z, output / "correlation.png", title=f"{name}: |cosine| between top-EA dims")
    if raw is not None:
        analysis.plot_top_activating_images(
            test_z, raw, output / "top_activating_images.png", num_dims=config.top_images,
            title=f"{name}: top-activating test images per dimension",
        )
    return metrics
