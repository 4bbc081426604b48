"""CLIP fine-tuning with plain (CL) and non-negative (NCL) joint embeddings, evaluated side by side.

Non-negative Contrastive Learning (Wang, Zhang, Guo, Wang, ICLR 2024, arXiv:2403.12459)
applied to CLIP (Radford et al., ICML 2021): the same model, data, seed and batches are
trained twice with open_clip's contrastive loss, once as is (CL) and once with a
non-negative map on the image and text embeddings (NCL), and compared on zero-shot
accuracy, image -> text and text -> image recall@K, the feature reports of both embeddings
and the top-activating images and captions per dimension.

NCL is the model, not the loss: the NCL run trains :func:`ncl_ext.adapters.clip.nonneg_clip`
(open_clip) or an :func:`ncl_ext.patch`-ed HF model with the plain ``ClipLoss()``, so the
fine-tuned model stays non-negative wherever it is used afterwards, and one evaluation
serves both runs. Presets (``recipes/clip-finetune/*.yaml``, described in its README):
``digits`` (offline), ``openclip``, ``hf-clip``; ``dataset=csv|folder|hf`` reads your pairs.
In-memory pairs: ``prepare(config, output, data=ImageTextSplits(...))``, then ``train`` and
``evaluate`` per run.

Examples:
    ncl-ext run clip-finetune                                           # digits, CL vs NCL, CPU
    ncl-ext run clip-finetune dataset=csv --data-root pairs.csv label_column=label
    ncl-ext run clip-finetune --preset hf-clip model=./clip-vit-base-patch32 lock_image=true
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn

from ncl_ext import analysis
from ncl_ext.adapters.clip import ClipParts, PairEmbeddings, build_hf_clip, build_open_clip, encode_pairs
from ncl_ext.analysis.loading import save_run_features
from ncl_ext.analysis.recall import recall_at_k
from ncl_ext.checkpoint import write_text_atomically
from ncl_ext.data.image_text import (
    DATASETS,
    ImageTextCollate,
    ImageTextDataset,
    ImageTextSplits,
    load_pairs,
    split_pairs,
)
from ncl_ext.losses import ClipLoss
from ncl_ext.recipes.config import DEVICES, Settings, setting
from ncl_ext.training import TrainConfig, Trainer, make_accelerator, seed_everything

RUN_NAMES = ("cl", "ncl")
DEFAULT_PRESET = "digits"


@dataclass
class Config(Settings):
    """Every setting of a CLIP fine-tuning run (override any of them with ``key=value``)."""

    dataset: str = setting("digits", "pairs to train on (see ncl_ext.data.image_text.load_pairs)", choices=DATASETS)
    data_root: str | None = setting(None, "file or folder of the pairs (never written to)")
    split: str = setting("train", "dataset=hf: the training split")
    test_split: str | None = setting(None, "dataset=hf: the test split (None: test_fraction of the training pairs)")
    test_fraction: float = setting(0.2, "share of the pairs held out for testing", above=0, below=1)
    holdout: float = setting(
        0.0, "share of the training pairs held out as a validation split that replaces the test pairs in "
        "evaluation: choose settings with it, then report with 0", minimum=0, below=1,
    )
    image_column: str = setting("image", "dataset=hf/csv: the image column")
    caption_column: str = setting("caption", "dataset=hf/csv: the caption column")
    label_column: str | None = setting(None, "dataset=hf/csv: a class column (enables zero-shot accuracy)")
    prompt_templates: tuple[str, ...] = setting((), "zero-shot prompts, {} = class name; (): the data's default",
                                                evaluation=True)
    source: str = setting("open_clip", "which library builds the model", choices=("open_clip", "hf"))
    model: str | None = setting("digits-tiny", "open_clip model name (or local-dir:PATH), or an HF folder")
    pretrained: str | None = setting(None, "open_clip pretrained tag or local checkpoint file")
    init_temperature: float = setting(0.5, "models from random init: logit_scale starts at log(1 / this)", above=0)
    lock_image: bool = setting(False, "freeze the image tower")
    lock_text: bool = setting(False, "freeze the text tower")
    unlocked_groups: int = setting(1, "last layer groups left trainable in a locked tower (1: its projection)",
                                   minimum=0)
    runs: tuple[str, ...] = setting(RUN_NAMES, "which runs to train: cl, ncl (non-negative embeddings)",
                                    choices=RUN_NAMES)
    nonneg: str = setting("relu", "the non-negative map of the ncl run", mode=True)
    device: str | None = setting(None, "cpu, cuda or mps; default: the best available", choices=DEVICES)
    epochs: int = setting(200, "passes over the training pairs", minimum=1)
    batch_size: int = setting(64, "pairs per batch and process", minimum=2)
    lr: float = setting(3e-3, "AdamW learning rate", above=0)
    weight_decay: float = setting(0.1, "AdamW weight decay", minimum=0)
    warmup_epochs: float = setting(6.0, "linear warm-up epochs before the cosine decay", minimum=0)
    max_grad_norm: float | None = setting(None, "clip the gradient norm", above=0)
    crop_scale: tuple[float, ...] = setting((0.9, 1.0), "open_clip models: random-resized-crop area range", above=0,
                                            maximum=1)
    mixed_precision: str = setting("no", "autocast precision", choices=("no", "bf16", "fp16"))
    seed: int = setting(0, "seeds weights and batches (every run of a command uses the same)")
    checkpoint_every: int = setting(200, "batches between checkpoints", minimum=1)
    num_workers: int = setting(0, "DataLoader workers", minimum=0)
    eval_batch_size: int = setting(512, "batch size of the test embeddings", minimum=1, evaluation=True)
    recall_at: tuple[int, ...] = setting((1, 5, 10), "ranks of i2t / t2i recall", minimum=1, evaluation=True)
    top_dims: int = setting(8, "dimensions shown in the top-activating images and captions", minimum=1,
                            evaluation=True)
    export_model: bool = setting(True, "save each fine-tuned model to OUTPUT/RUN/model", evaluation=True)

    def __post_init__(self) -> None:
        super().__post_init__()
        if len(self.crop_scale) != 2 or self.crop_scale[0] > self.crop_scale[1]:
            raise ValueError(f"crop_scale={self.crop_scale!r}; expected two area fractions 0 < low <= high <= 1")
        if self.source == "hf" and not self.model:
            raise ValueError("source=hf needs model=/path/to/a/local/huggingface/clip/folder")


class Context(NamedTuple):
    accelerator: Any
    data: ImageTextSplits
    device: Any


def prepare(config: Config, output: Path, data: ImageTextSplits | None = None) -> Context:
    """The accelerator and the pairs every run shares (``data`` replaces the pairs the settings name)."""
    accelerator = make_accelerator(config.device, config.mixed_precision)
    if data is None:
        data = load_pairs(
            config.dataset, config.data_root, split=config.split, test_split=config.test_split,
            test_fraction=config.test_fraction, seed=config.seed, image_column=config.image_column,
            caption_column=config.caption_column, label_column=config.label_column,
        )
    if config.holdout:
        data = ImageTextSplits(*split_pairs(data.train, config.holdout, config.seed), data.prompt_templates)
    return Context(accelerator, data, accelerator.device)


def build_clip(config: Config, nonneg: str | None) -> ClipParts:
    """The model of ``config`` (non-negative when ``nonneg`` is a mode), its tokenizer and transforms."""
    if config.source == "open_clip":
        parts = build_open_clip(config.model, config.pretrained, nonneg, config.init_temperature,
                                tuple(config.crop_scale))
    else:
        parts = build_hf_clip(config.model, nonneg)
    if config.lock_image:
        parts.model.lock_image_tower(unlocked_groups=config.unlocked_groups)
    if config.lock_text:
        parts.model.lock_text_tower(unlocked_layers=config.unlocked_groups)
    return parts


def train_config(config: Config, name: str) -> TrainConfig:
    return TrainConfig(
        epochs=config.epochs, lr=config.lr, optimizer="adamw", weight_decay=config.weight_decay,
        warmup_epochs=config.warmup_epochs, max_grad_norm=config.max_grad_norm,
        mixed_precision=config.mixed_precision, seed=config.seed, checkpoint_every=config.checkpoint_every, name=name,
    )


def derived_settings(config: Config) -> dict[str, Any]:
    return {"optimizer": train_config(config, "dry-run").optimizer_summary()}


def train(config: Config, name: str, context: Context, output: Path) -> ClipParts:
    """Train run ``name`` (resuming from ``output/checkpoints``); CL and NCL share weights and batches."""
    accelerator = context.accelerator
    seed_everything(config.seed)
    parts = build_clip(config, nonneg=config.nonneg if name == "ncl" else None)
    distributed = accelerator.num_processes > 1
    criterion = ClipLoss(local_loss=distributed, gather_with_grad=distributed)  # the NCL model is already non-negative

    def compute_loss(model: nn.Module, batch: tuple[torch.Tensor, ...]) -> dict[str, torch.Tensor]:
        images, tokens, _ = batch
        out = model(images.to(accelerator.device), tokens.to(accelerator.device))
        if not isinstance(out, dict):  # open_clip's tuple output
            out = dict(zip(("image_features", "text_features", "logit_scale", "logit_bias"), out))
        logit_scale = out["logit_scale"].float().clamp(max=100)  # open_clip's cap on the learned scale
        bias = out.get("logit_bias")
        loss = criterion(out["image_features"].float(), out["text_features"].float(), logit_scale,
                         bias.float() if bias is not None else None)
        return {"loss": loss, "features": out["image_features"], "logit_scale": logit_scale.detach()}

    loader = torch.utils.data.DataLoader(
        context.data.train, batch_size=config.batch_size, shuffle=True, drop_last=True,
        collate_fn=ImageTextCollate(parts.train_transform, parts.tokenizer, random_caption=True),
        num_workers=config.num_workers, pin_memory=torch.cuda.is_available(),
        persistent_workers=config.num_workers > 0, generator=torch.Generator().manual_seed(config.seed),
    )
    trainer = Trainer(parts.model, compute_loss, loader, train_config(config, name), output, accelerator=accelerator)
    return parts._replace(model=trainer.fit().model)


def evaluate(config: Config, name: str, parts: ClipParts, context: Context, output: Path) -> dict[str, Any]:
    """Zero-shot accuracy, recall@k both ways, the feature reports of both embeddings, top-activating samples."""
    import open_clip

    parts.model.eval()
    test, device = context.data.test, context.device
    embeddings = encode_pairs(parts, test, config.eval_batch_size, device, config.num_workers)
    labelled = test.labels is not None and bool((embeddings.labels >= 0).all())
    metrics: dict[str, Any] = {"zero_shot_acc": None}
    if labelled:
        templates = config.prompt_templates or context.data.prompt_templates or open_clip.SIMPLE_IMAGENET_TEMPLATES
        classifier = open_clip.build_zero_shot_classifier(
            parts.model, parts.tokenizer, test.classes, templates, num_classes_per_batch=10, device=device
        )
        predictions = (embeddings.images @ classifier.float().cpu()).argmax(dim=1)
        metrics["zero_shot_acc"] = float((predictions == embeddings.labels).float().mean())

    # A hit is a retrieved item of the query's group: its class, or else the pairs sharing its caption.
    captions = [captions[0] for captions in test.captions]
    groups = embeddings.labels if labelled else _caption_groups(captions)
    for k in config.recall_at:
        fits = k <= len(test)
        metrics[f"i2t_recall@{k}"] = recall_at_k(embeddings.images, embeddings.texts, groups, k) if fits else None
        metrics[f"t2i_recall@{k}"] = recall_at_k(embeddings.texts, embeddings.images, groups, k) if fits else None

    output.mkdir(parents=True, exist_ok=True)
    for modality, features in (("image", embeddings.images), ("text", embeddings.texts)):
        report = analysis.feature_report(features, embeddings.labels if labelled else None, seed=config.seed)
        write_text_atomically(output / f"feature_report_{modality}.json", json.dumps(report, indent=2))
        metrics[f"sparsity_{modality}"] = report["sparsity"]
        metrics[f"semantic_consistency_{modality}"] = report["semantic_consistency"]
    _save_top_activating(config, embeddings, parts, test, captions, output)
    if config.export_model:
        parts.export(parts.model, output / "model")
    return metrics


def _caption_groups(captions: list[str]) -> torch.Tensor:
    """One group id per distinct caption: pairs with identical captions are interchangeable."""
    ids: dict[str, int] = {}
    return torch.tensor([ids.setdefault(caption, len(ids)) for caption in captions])


def _save_top_activating(
    config: Config, embeddings: PairEmbeddings, parts: ClipParts, test: ImageTextDataset, captions: list[str],
    output: Path,
) -> None:
    """Top-activating captions (markdown) and images (PNG) per dimension, and the comparison-figure data."""
    first_index: dict[str, int] = {}  # each distinct caption once (identical captions have identical features)
    for index, caption in enumerate(captions):
        first_index.setdefault(caption, index)
    distinct = list(first_index.values())
    analysis.write_top_activating_texts(
        embeddings.texts[distinct], [captions[i] for i in distinct], output / "top_activating_captions.md",
        num_dims=config.top_dims, per_dim=min(8, len(distinct)),
    )
    per_dim = min(8, len(test))
    # Decode only the images that make the grid: the top samples of those dimensions, in order.
    dims, top = analysis.top_activating_samples(embeddings.images, num_dims=config.top_dims, per_dim=per_dim)
    shown = top.flatten().unique()
    pixels = torch.stack([parts.eval_transform(test[int(i)][0]) for i in shown])
    analysis.plot_top_activating_images(
        embeddings.images[shown], pixels, output / "top_activating_images.png", dims=dims, per_dim=per_dim,
        title=f"{output.name}: top-activating test images per dimension",
    )
    labels = embeddings.labels if bool((embeddings.labels >= 0).all()) else None
    save_run_features(output, embeddings.images, labels, images=lambda index: parts.eval_transform(test[index][0]))
