"""Vision self-supervised learning: SimCLR with plain (CL) and non-negative (NCL) projections.

Reproduces the image experiments of Wang, Zhang, Guo, Wang, "Non-negative Contrastive
Learning" (ICLR 2024, arXiv:2403.12459): the same backbone, projector, augmentations,
seed and data order are trained twice, once with the plain InfoNCE objective (CL) and
once with a non-negative head on the projector output (NCL), then evaluated side by side:

- ``linear_probe_acc`` and ``knn_acc`` on the backbone features;
- the feature report of the projector outputs against the class labels (``sparsity``,
  ``semantic_consistency``, ``correlation``, ``effective_rank``, ``active_dims``, ``dead_dims``);
- retrieval ``precision@10`` with all projector dimensions, with the 25% of dimensions of
  highest expected activation (``precision@10_ea25``) and with a random 25%
  (``precision@10_random25``, averaged over several draws).

Presets: ``digits`` (the offline default: scikit-learn's 1,797 real 8x8 digits, a small
CNN, minutes on a laptop CPU), ``cifar10`` / ``cifar100`` and ``imagenet100`` (the paper's
ResNet-18 settings), and ``imagefolder`` (any folder of class sub-folders).

Examples:
    ncl-ext run vision-ssl                                    # digits, CL vs NCL, CPU
    ncl-ext run vision-ssl --preset cifar10 --data-root ~/data/cifar
    accelerate launch -m ncl_ext.cli run vision-ssl --preset imagenet100 --data-root /data/imagenet100
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch

from ncl_ext import analysis
from ncl_ext.adapters.vision import ContrastiveModel, build_backbone
from ncl_ext.data import augment, images
from ncl_ext.losses import InfoNCELoss, SpectralContrastiveLoss
from ncl_ext.training import TrainConfig, Trainer, make_accelerator, seed_everything

RUN_NAMES = ("cl", "ncl")


@dataclass
class ImageRunSettings:
    """The settings every image recipe shares: the data :class:`ImageData` loads, the device, the training machinery."""

    dataset: str = "digits"
    data_root: str | None = None
    download: bool = False
    device: str | None = None
    image_size: int | None = None
    momentum: float = 0.9
    grad_accum_steps: int = 1
    mixed_precision: str = "no"
    channels_last: bool = False
    compile: bool = False
    seed: int = 0
    checkpoint_every: int = 200
    num_workers: int = 8
    eval_batch_size: int = 512

    def __post_init__(self) -> None:
        if self.dataset not in images.DATASETS:
            raise ValueError(f"dataset={self.dataset!r} is unknown; expected one of {images.DATASETS}")


@dataclass
class Config(ImageRunSettings):
    """Every setting of a vision SSL run (override any of them with ``key=value``), with :class:`ImageRunSettings`."""

    runs: tuple[str, ...] = RUN_NAMES
    backbone: str = "small_cnn"
    projector: tuple[int, ...] = (1024, 1024)
    nonneg: str = "relu"
    loss: str = "infonce"
    temperature: float = 0.2
    epochs: int = 60
    batch_size: int = 256
    base_lr: float = 0.4
    optimizer: str = "lars"
    weight_decay: float = 1e-4
    warmup_epochs: float = 5.0
    probe_epochs: int = 100
    knn_k: int = 20
    select_fraction: float = 0.25
    random_draws: int = 5
    top_images: int = 8

    def __post_init__(self) -> None:
        super().__post_init__()
        unknown = [run for run in self.runs if run not in RUN_NAMES]
        if unknown or not self.runs:
            raise ValueError(f"runs={self.runs!r}; expected a non-empty subset of {RUN_NAMES}, e.g. runs=cl,ncl")
        if self.loss not in ("infonce", "spectral"):
            raise ValueError(f"loss={self.loss!r}; expected 'infonce' or 'spectral'")
        if not 0 < self.select_fraction <= 1:
            raise ValueError(f"select_fraction={self.select_fraction!r}; expected a fraction in (0, 1]")


_PAPER_CIFAR = dict(
    backbone="resnet18_cifar", projector=(2048, 256), nonneg="rep_relu", temperature=0.2, image_size=32,
    epochs=200, batch_size=256, base_lr=0.4, optimizer="lars", weight_decay=1e-4, warmup_epochs=10,
    mixed_precision="bf16", channels_last=True, probe_epochs=50, knn_k=200,
)

#: Named presets: overrides of :class:`Config`.
PRESETS: dict[str, dict[str, Any]] = {
    "digits": dict(dataset="digits"),
    "cifar10": dict(dataset="cifar10", **_PAPER_CIFAR),
    "cifar100": dict(dataset="cifar100", **_PAPER_CIFAR),
    "imagenet100": dict(
        dataset="imagenet100", backbone="resnet18", projector=(16384, 2048), nonneg="relu", temperature=0.2,
        image_size=224, epochs=100, batch_size=256, base_lr=0.4, optimizer="lars", weight_decay=1e-4,
        warmup_epochs=10, mixed_precision="bf16", channels_last=True, probe_epochs=50, knn_k=200,
        eval_batch_size=256,
    ),
    "imagefolder": dict(
        dataset="imagefolder", backbone="resnet18", projector=(2048, 256), image_size=224, epochs=100,
        mixed_precision="bf16", channels_last=True, probe_epochs=50, knn_k=200, eval_batch_size=256,
    ),
}
DEFAULT_PRESET = "digits"


def run(config: Config, output: Path) -> dict[str, dict[str, Any]]:
    """Train and evaluate every run in ``config.runs``; return their metrics."""
    accelerator = make_accelerator(config.device, config.mixed_precision, config.compile)
    data = ImageData(config, accelerator)
    results = {}
    for name in config.runs:
        model = _train(config, name, data, accelerator, output / name)
        if accelerator.is_main_process:
            results[name] = _evaluate(config, model, data, output / name, accelerator.device)
        accelerator.wait_for_everyone()
    return results


# ------------------------------------------------------------------ data


class ImageData:
    """Training and evaluation batches for any dataset of :mod:`ncl_ext.data.images`.

    Small datasets (digits, CIFAR) live on the device as uint8 tensors and are augmented
    there in batches; folder datasets (ImageNet-100, ImageFolder) are decoded and
    augmented per image by DataLoader workers.
    """

    def __init__(self, config: Any, accelerator: Any, num_views: int = 2) -> None:
        self.config, self.accelerator, self.num_views = config, accelerator, num_views
        load = dict(download=config.download, seed=config.seed)
        splits = images.load_dataset(config.dataset, config.data_root, **load)
        self.resident = isinstance(splits.train, images.ResidentImages)
        if self.resident:
            self.train, self.test = splits.train.to(accelerator.device), splits.test.to(accelerator.device)
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
        self.classes = list(getattr(splits.train, "classes", []))

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
                rank=self.accelerator.process_index, world_size=self.accelerator.num_processes,
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
            yield batch_images.to(self.accelerator.device), labels.to(self.accelerator.device)

    def raw_test_images(self) -> torch.Tensor | None:
        """The test images as uint8 ``(N, C, H, W)``, for the top-activating image grids."""
        return self.test.images.cpu() if self.resident else None


def _collate_views(samples: list) -> tuple[torch.Tensor, ...]:
    """``[((view1, view2), label), ...]`` -> ``(views1, views2, labels)``, as resident batches are."""
    views, labels = torch.utils.data.default_collate(samples)
    return (*views, labels) if isinstance(views, (list, tuple)) else (views, labels)


# ------------------------------------------------------------------ training


def image_train_config(config: Any, num_processes: int) -> TrainConfig:
    """The shared :class:`TrainConfig` of an image recipe's ``Config``.

    The learning rate follows the linear scaling rule of SimCLR and the paper:
    ``base_lr * global_batch / 256``, with ``global_batch = batch_size * processes * grad_accum_steps``.
    """
    global_batch = config.batch_size * num_processes * config.grad_accum_steps
    return TrainConfig(
        epochs=config.epochs,
        lr=config.base_lr * global_batch / 256,
        optimizer=config.optimizer,
        momentum=config.momentum,
        weight_decay=config.weight_decay,
        warmup_epochs=min(config.warmup_epochs, config.epochs),
        grad_accum_steps=config.grad_accum_steps,
        mixed_precision=config.mixed_precision,
        seed=config.seed,
        checkpoint_every=config.checkpoint_every,
    )


def _train(config: Config, name: str, data: ImageData, accelerator: Any, output: Path) -> ContrastiveModel:
    seed_everything(config.seed)  # CL and NCL start from the same weights and see the same batches
    backbone = build_backbone(config.backbone, in_channels=data.channels)
    model = ContrastiveModel(
        backbone, projector_dims=config.projector, nonneg=config.nonneg if name == "ncl" else None,
        input_shape=(data.channels, data.size, data.size),
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
        view1, view2 = batch[0], batch[1]
        both = torch.cat([view1, view2]).to(accelerator.device, non_blocking=True)
        if config.channels_last:
            both = both.contiguous(memory_format=torch.channels_last)
        projections = model(both).projections
        z1, z2 = projections.float().chunk(2)
        return {"loss": criterion(z1, z2), "features": z1}

    train_config = image_train_config(config, accelerator.num_processes)
    accelerator.print(f"[{name}] training {config.backbone} with nonneg={model.nonneg!r} for {config.epochs} epochs")
    trainer = Trainer(model, compute_loss, data.training_batches(), train_config, output, accelerator=accelerator)
    return trainer.fit().model


# ------------------------------------------------------------------ evaluation


@torch.no_grad()
def _collect(model: ContrastiveModel, batches: Iterator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Backbone features, projections and labels of every batch, on the CPU."""
    model.eval()
    features, projections, labels = [], [], []
    for batch_images, batch_labels in batches:
        output = model(batch_images.to(next(model.parameters()).device))
        features.append(output.features.float().cpu())
        projections.append(output.projections.float().cpu())
        labels.append(batch_labels.cpu())
    return torch.cat(features), torch.cat(projections), torch.cat(labels)


def _evaluate(config: Config, model: ContrastiveModel, data: ImageData, output: Path, device: Any) -> dict[str, Any]:
    train_h, train_z, train_y = _collect(model, data.evaluation_batches("train"))
    test_h, test_z, test_y = _collect(model, data.evaluation_batches("test"))
    metrics: dict[str, Any] = {
        "linear_probe_acc": analysis.linear_probe(
            train_h, train_y, test_h, test_y, epochs=config.probe_epochs, device=device, seed=config.seed
        ),
        "knn_acc": analysis.knn_accuracy(train_h, train_y, test_h, test_y, k=config.knn_k),
    }
    report = analysis.feature_report(test_z, test_y)
    for key in ("sparsity", "semantic_consistency", "correlation", "effective_rank", "active_dims", "dead_dims"):
        metrics[key] = report[key]

    # Feature selection: expected activation is measured on the training set, used on the test set.
    keep = max(1, round(config.select_fraction * test_z.shape[1]))
    percent = round(100 * config.select_fraction)
    metrics["precision@10"] = analysis.retrieval_precision(test_z, test_y, k=10)
    ea_dims = analysis.expected_activation_order(train_z)[:keep]
    metrics[f"precision@10_ea{percent}"] = analysis.retrieval_precision(test_z[:, ea_dims], test_y, k=10)
    generator = torch.Generator().manual_seed(config.seed)
    random_precisions = [
        analysis.retrieval_precision(test_z[:, torch.randperm(test_z.shape[1], generator=generator)[:keep]], test_y, k=10)
        for _ in range(config.random_draws)
    ]
    metrics[f"precision@10_random{percent}"] = sum(random_precisions) / len(random_precisions)

    _plot(config, data, test_z, output)
    return metrics


def _plot(config: Config, data: ImageData, projections: torch.Tensor, output: Path) -> None:
    output.mkdir(parents=True, exist_ok=True)
    analysis.plot_activation_frequency(projections, output / "activation_frequency.png")
    analysis.plot_correlation_heatmap(projections, output / "correlation.png")
    raw = data.raw_test_images()
    if raw is not None:
        analysis.plot_top_activating_images(
            projections, raw, output / "top_activating_images.png", num_dims=config.top_images
        )
