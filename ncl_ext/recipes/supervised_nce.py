"""Supervised learning: cross-entropy (CE) against non-negative cross-entropy (NCE), side by side.

Wang, Zhang, Guo, Wang, "Non-negative Contrastive Learning" (ICLR 2024, arXiv:2403.12459,
Sec. 6) read cross-entropy as contrastive learning between a sample's features ``f(x)``
and the class weights ``W_y``, and carry NCL over: NCE makes both sides of the inner
product non-negative, ``logits = f+(x) W+^T``. On ImageNet-100 (ResNet-18 from scratch)
they report CE 76.1 vs NCE 78.6, and 78.4 vs 79.2 with an MLP projector.

Why the class weights too: a ResNet (and :class:`~ncl_ext.adapters.vision.SmallCNN`)
ends with ReLU then average pooling, so its pooled features are already non-negative and
a ReLU on them alone changes nothing without a projector. Non-negative class weights are
what turns the ``nce`` row into a different model on such backbones; ``nonneg_weights=false``
gives the features-only ablation (see :class:`~ncl_ext.adapters.vision.NonNegativeClassifier`).

The four rows of the paper's table (``ce``, ``nce``, ``ce_mlp``, ``nce_mlp``) are trained
from the same initial backbone weights, with the same seed and (for in-memory datasets)
the same batches, on the shared :class:`~ncl_ext.training.Trainer`. For each run the
recipe records the test accuracy after every epoch (``acc_curve``), the final top-1
(``test_acc``), and the feature report of the penultimate features (the features the
classifier sees, after the projector and the non-negative map) on the test set
(``sparsity``, ``semantic_consistency``, ``correlation``, ``active_dims``, ``dead_dims``).
It writes ``acc_curves.png`` (the four curves) and ``acc_curves.md`` (per-epoch table)
under the output folder.

Presets: ``digits`` (the offline default: scikit-learn's 1,797 real 8x8 digits, a small
CNN whose pooled features are signed, ``small_cnn_signed``, so that the ``nce`` row's ReLU
acts on them as it would on a transformer's; under a minute on 2 CPU cores), ``cifar10`` /
``cifar100`` (ResNet-18 with the CIFAR stem) and ``imagenet100`` (ResNet-18 from scratch;
pass ``init_from=`` a vision-ssl run's ``checkpoints`` folder to fine-tune from its
self-supervised backbone instead). The optimisation settings of the paper presets are the usual supervised ones (SGD, momentum
0.9, cosine schedule), not published values.

Examples:
    ncl-ext run supervised-nce                                       # digits, four rows, CPU
    ncl-ext run supervised-nce --preset cifar10 --data-root ~/data/cifar
    ncl-ext run supervised-nce --preset imagenet100 --data-root /data/imagenet100 \\
        init_from=runs/vision-ssl-imagenet100/ncl/checkpoints epochs=50 base_lr=0.05
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.nn.functional as F

from ncl_ext import analysis
from ncl_ext.adapters.vision import CLASSIFIER_VARIANTS, NonNegativeClassifier, build_backbone, classifier_variant
from ncl_ext.checkpoint import latest_checkpoint, write_text_atomically
from ncl_ext.data import augment, images
from ncl_ext.recipes.vision_ssl import ImageData, ImageRunSettings, image_train_config
from ncl_ext.training import Trainer, make_accelerator, seed_everything

RUN_NAMES = CLASSIFIER_VARIANTS  # ("ce", "nce", "ce_mlp", "nce_mlp")
REPORTED_FEATURE_METRICS = ("sparsity", "semantic_consistency", "correlation", "active_dims", "dead_dims")


@dataclass
class Config(ImageRunSettings):
    """Every setting of a CE-vs-NCE run (override any of them with ``key=value``), with :class:`ImageRunSettings`."""

    runs: tuple[str, ...] = RUN_NAMES
    backbone: str = "small_cnn_signed"
    projector: tuple[int, ...] = (256, 128)
    nonneg: str = "relu"
    nonneg_weights: bool = True
    init_from: str | None = None
    epochs: int = 20
    batch_size: int = 128
    base_lr: float = 0.1
    optimizer: str = "sgd"
    weight_decay: float = 5e-4
    warmup_epochs: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        unknown = [run for run in self.runs if run not in RUN_NAMES]
        if unknown or not self.runs:
            raise ValueError(f"runs={self.runs!r}; expected a non-empty subset of {RUN_NAMES}, e.g. runs=ce,nce")
        if not self.projector:
            raise ValueError("projector=(); expected the MLP projector sizes of the _mlp runs, e.g. projector=2048,512")


_RESNET_SUPERVISED = dict(
    optimizer="sgd", momentum=0.9, batch_size=256, base_lr=0.1, warmup_epochs=1.0, projector=(2048, 512),
    mixed_precision="bf16", channels_last=True,
)

#: Named presets: overrides of :class:`Config`.
PRESETS: dict[str, dict[str, Any]] = {
    "digits": dict(dataset="digits"),
    "cifar10": dict(dataset="cifar10", backbone="resnet18_cifar", image_size=32, epochs=200, weight_decay=5e-4,
                    **_RESNET_SUPERVISED),
    "cifar100": dict(dataset="cifar100", backbone="resnet18_cifar", image_size=32, epochs=200, weight_decay=5e-4,
                     **_RESNET_SUPERVISED),
    "imagenet100": dict(dataset="imagenet100", backbone="resnet18", image_size=224, epochs=100, weight_decay=1e-4,
                        eval_batch_size=256, **_RESNET_SUPERVISED),
}
DEFAULT_PRESET = "digits"


def run(config: Config, output: Path) -> dict[str, dict[str, Any]]:
    """Train and evaluate every run in ``config.runs``; return their metrics."""
    accelerator = make_accelerator(config.device, config.mixed_precision, config.compile)
    data = ImageData(config, accelerator, num_views=1)
    results = {}
    for name in config.runs:
        model, history = _train(config, name, data, accelerator, output / name)
        if accelerator.is_main_process:
            results[name] = _evaluate(model, history, data)
        accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        _write_curves(results, output)
    return results


# ------------------------------------------------------------------ model


def load_ssl_backbone(model: NonNegativeClassifier, folder: str | Path) -> None:
    """Copy the backbone weights of a vision-ssl checkpoint into ``model.backbone``.

    ``folder`` is a vision-ssl run folder (``runs/vision-ssl-X/ncl``) or its
    ``checkpoints`` folder; the newest checkpoint's ``model.safetensors`` holds a
    :class:`~ncl_ext.adapters.vision.ContrastiveModel`, whose ``backbone.*`` weights are
    loaded (the projector is dropped, as in the paper's fine-tuning).
    """
    from safetensors.torch import load_file

    folder = Path(folder).expanduser()
    checkpoint = latest_checkpoint(folder) or latest_checkpoint(folder / "checkpoints")
    if checkpoint is None:
        raise FileNotFoundError(
            f"init_from={str(folder)!r}: no checkpoint there; expected a vision-ssl run's checkpoints folder, "
            "e.g. init_from=runs/vision-ssl-imagenet100/ncl/checkpoints"
        )
    weights = load_file(checkpoint / "model.safetensors")
    backbone = {key.removeprefix("backbone."): value for key, value in weights.items() if key.startswith("backbone.")}
    if not backbone:
        raise ValueError(f"init_from={str(folder)!r}: {checkpoint} holds no backbone.* weights (not a vision-ssl run)")
    try:
        model.backbone.load_state_dict(backbone)
    except RuntimeError as error:
        first_line = str(error).strip().splitlines()[0]
        raise ValueError(
            f"init_from={str(folder)!r}: its backbone does not fit backbone={type(model.backbone).__name__} "
            f"({first_line}); use the same backbone setting as the vision-ssl run"
        ) from None


def _build_model(config: Config, name: str, data: ImageData) -> NonNegativeClassifier:
    seed_everything(config.seed)  # all four rows start from the same backbone weights and see the same batches
    backbone = build_backbone(config.backbone, in_channels=data.channels)
    num_classes = len(data.classes) if data.classes else int(data.train.labels.max()) + 1
    model = classifier_variant(
        name, backbone, num_classes, mode=config.nonneg, projector_dims=config.projector,
        nonneg_weights=config.nonneg_weights, input_shape=(data.channels, data.size, data.size),
    )
    if config.init_from:
        load_ssl_backbone(model, config.init_from)
    return model.to(memory_format=torch.channels_last) if config.channels_last else model


def _train(
    config: Config, name: str, data: ImageData, accelerator: Any, output: Path
) -> tuple[NonNegativeClassifier, list[dict[str, float]]]:
    model = _build_model(config, name, data)

    def to_device(batch_images: torch.Tensor) -> torch.Tensor:
        batch_images = batch_images.to(accelerator.device, non_blocking=True)
        return batch_images.contiguous(memory_format=torch.channels_last) if config.channels_last else batch_images

    def compute_loss(model: torch.nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> dict[str, torch.Tensor]:
        batch_images, labels = batch
        logits, features = model(to_device(batch_images), return_features=True)
        return {"loss": F.cross_entropy(logits.float(), labels.to(logits.device)), "features": features.float()}

    def evaluate_epoch(model: torch.nn.Module, epoch: int) -> dict[str, float]:
        correct = total = 0
        for batch_images, labels in data.evaluation_batches("test"):
            predictions = model(to_device(batch_images)).argmax(dim=1)
            correct += int((predictions == labels.to(predictions.device)).sum())
            total += len(labels)
        return {"test_acc": correct / total}

    train_config = image_train_config(config, accelerator.num_processes)
    accelerator.print(
        f"[{name}] training {config.backbone} with nonneg={model.nonneg!r}, nonneg_weights={model.nonneg_weights}, "
        f"projector={config.projector if name.endswith('_mlp') else None} for {config.epochs} epochs"
    )
    trainer = Trainer(
        model, compute_loss, data.training_batches(_training_augmentation(config, data)), train_config, output,
        accelerator=accelerator, evaluate_epoch=evaluate_epoch,
    )
    result = trainer.fit()
    return result.model, result.history


def _training_augmentation(config: Config, data: ImageData) -> Any:
    """Supervised augmentation for in-memory datasets; folder datasets use ImageData's per-image transform."""
    if not data.resident:
        return None
    if config.dataset == "digits":
        return augment.digits_batch_augmentation(data.mean, data.std, size=config.image_size)
    return augment.supervised_batch_augmentation(data.size, data.mean, data.std)


# ------------------------------------------------------------------ evaluation


@torch.no_grad()
def _collect(model: NonNegativeClassifier, batches: Iterator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Logits, penultimate features and labels of every batch, on the CPU."""
    model.eval()
    device = next(model.parameters()).device
    logits, features, labels = [], [], []
    for batch_images, batch_labels in batches:
        output = model(batch_images.to(device), return_features=True)
        logits.append(output.logits.float().cpu())
        features.append(output.features.float().cpu())
        labels.append(batch_labels.cpu())
    return torch.cat(logits), torch.cat(features), torch.cat(labels)


def _evaluate(model: NonNegativeClassifier, history: list[dict[str, float]], data: ImageData) -> dict[str, Any]:
    logits, features, labels = _collect(model, data.evaluation_batches("test"))
    metrics: dict[str, Any] = {
        "test_acc": float((logits.argmax(dim=1) == labels).float().mean()),
        "acc_curve": [record["test_acc"] for record in history if "test_acc" in record],
    }
    report = analysis.feature_report(features, labels, sepin_samples=None)
    metrics.update({key: report[key] for key in REPORTED_FEATURE_METRICS})
    return metrics


def _write_curves(results: dict[str, dict[str, Any]], output: Path) -> None:
    """``acc_curves.png`` (test accuracy per epoch, one line per run) and ``acc_curves.md``."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    output.mkdir(parents=True, exist_ok=True)
    figure = Figure(figsize=(6, 4))
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for name, metrics in results.items():
        curve = metrics["acc_curve"]
        axes.plot(range(1, len(curve) + 1), curve, marker="o" if len(curve) < 20 else None, label=name)
    axes.set(xlabel="epoch", ylabel="test accuracy", title="CE vs NCE: test accuracy per epoch")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(output / "acc_curves.png", dpi=120)

    epochs = max(len(metrics["acc_curve"]) for metrics in results.values())
    lines = ["| epoch | " + " | ".join(results) + " |", "|---:|" + "---:|" * len(results)]
    for epoch in range(epochs):
        cells = [
            f"{metrics['acc_curve'][epoch]:.4f}" if epoch < len(metrics["acc_curve"]) else "-"
            for metrics in results.values()
        ]
        lines.append(f"| {epoch + 1} | " + " | ".join(cells) + " |")
    write_text_atomically(output / "acc_curves.md", "\n".join(lines) + "\n")
