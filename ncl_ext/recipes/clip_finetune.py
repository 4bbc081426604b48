"""CLIP fine-tuning with plain (CL) and non-negative (NCL) joint embeddings, evaluated side by side.

Non-negative Contrastive Learning (Wang, Zhang, Guo, Wang, ICLR 2024, arXiv:2403.12459)
applied to CLIP (Radford et al., ICML 2021): the same model, data, seed and batches are
trained twice with open_clip's contrastive loss, once as is (CL) and once with a
non-negative map on the image and text embeddings (NCL), then compared on

- ``zero_shot_acc``: zero-shot classification of the test images from class names and
  prompt templates (open_clip's ``build_zero_shot_classifier``), when the pairs have labels;
- ``i2t_recall@K`` / ``t2i_recall@K`` (K = 1, 5, 10): image -> text and text -> image
  retrieval among the test pairs; a hit is a retrieved item of the query's class when the
  pairs have labels (interchangeable captions such as "a handwritten 7"), else the
  query's own pair (any pair with the identical caption counts);
- ``sparsity_image`` / ``sparsity_text`` and ``semantic_consistency_image`` / ``_text``
  (:func:`ncl_ext.analysis.feature_report` of the test embeddings; the full reports go to
  ``OUTPUT/RUN/feature_report_{image,text}.json``);
- the top-activating test images and captions of the most active dimensions
  (``OUTPUT/RUN/top_activating_images.png``, ``top_activating_captions.md``).

Design: NCL is the model, not the loss. The NCL run trains
:func:`ncl_ext.adapters.clip.nonneg_clip` (open_clip) or an :func:`ncl_ext.patch`-ed HF
model, and both runs use the plain ``ncl_ext.losses.ClipLoss()``. So the fine-tuned NCL
model is non-negative wherever it is used afterwards (zero-shot, retrieval, export), and
one evaluation code serves both runs. (``ClipLoss(nonneg="relu")`` is the alternative for
training code that keeps its own model; it makes the same loss.) With several processes
the loss gathers features with gradients and scores local rows only (``local_loss``).

Presets:

- ``digits`` (default, offline): a small open_clip CLIP built from a config (8x8 ViT with
  2x2 patches, a 2-layer text transformer, open_clip's own BPE tokenizer, 256-d
  embeddings) trained from random init on scikit-learn's digits captioned from ten
  templates; zero-shot on the 360 held-out test digits with prompt phrasings no caption
  uses. Temperature 0.2 at init (NCL's InfoNCE temperature), learnable as in CLIP.
- ``openclip``: fine-tunes pretrained open_clip ``ViT-B-32`` (``laion2b_s34b_b79k``). The
  tag is downloaded from the Hugging Face hub; offline, pass a local checkpoint file
  (``pretrained=/path/open_clip_pytorch_model.bin``) or folder (``model=local-dir:/path``).
- ``hf-clip``: fine-tunes a local Hugging Face CLIP / SigLIP folder (``model=/path``).

Every preset trains on the digits unless told otherwise: ``dataset=csv|folder|hf`` with
``--data-root`` reads your pairs (see :mod:`ncl_ext.data.image_text`). Each run exports
its fine-tuned model to ``OUTPUT/RUN/model``: an open_clip folder
(``open_clip.create_model("local-dir:OUTPUT/ncl/model")``, then ``nonneg_clip``) or an HF
folder (``ncl_ext.from_pretrained("OUTPUT/ncl/model")`` restores the head).

Examples:
    ncl-ext run clip-finetune                                           # digits, CL vs NCL, CPU
    ncl-ext run clip-finetune dataset=csv --data-root pairs.csv label_column=label
    ncl-ext run clip-finetune --preset openclip dataset=hf --data-root ./coco_saved test_split=validation
    ncl-ext run clip-finetune --preset hf-clip model=./clip-vit-base-patch32 lock_image=true
"""

from __future__ import annotations

import copy
import functools
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, NamedTuple

import torch
from torch import nn

from ncl_ext import analysis
from ncl_ext.adapters.clip import HFCLIPView, nonneg_clip
from ncl_ext.checkpoint import write_text_atomically
from ncl_ext.data.image_text import DATASETS, ImageTextCollate, ImageTextDataset, ImageTextSplits, load_pairs
from ncl_ext.losses import ClipLoss
from ncl_ext.nonneg import check_mode
from ncl_ext.training import TrainConfig, Trainer, make_accelerator, seed_everything

RUN_NAMES = ("cl", "ncl")
SOURCES = ("open_clip", "hf")

#: Small open_clip architectures trained from random init; select one with ``model=NAME``.
CUSTOM_MODELS: dict[str, dict[str, Any]] = {
    "digits-tiny": dict(
        embed_dim=256,
        vision_cfg=dict(image_size=8, patch_size=2, width=64, layers=2, head_width=32, mlp_ratio=2.0),
        text_cfg=dict(context_length=16, vocab_size=49408, width=64, heads=2, layers=2, mlp_ratio=2.0),
    ),
}


@dataclass
class Config:
    """Every setting of a CLIP fine-tuning run (override any of them with ``key=value``)."""

    # data: see ncl_ext.data.image_text.load_pairs
    dataset: str = "digits"
    data_root: str | None = None
    split: str = "train"
    test_split: str | None = None
    test_fraction: float = 0.2
    image_column: str = "image"
    caption_column: str = "caption"
    label_column: str | None = None
    prompt_templates: tuple[str, ...] = ()  # zero-shot prompts, "{}" = class name; () = the data's default
    # model
    source: str = "open_clip"
    model: str | None = "digits-tiny"  # CUSTOM_MODELS name, open_clip name / local-dir: / hf-hub:, or HF folder
    pretrained: str | None = None  # open_clip pretrained tag or local checkpoint file
    init_temperature: float = 0.2  # models from random init: logit_scale starts at log(1 / init_temperature)
    lock_image: bool = False
    lock_text: bool = False
    unlocked_groups: int = 1  # last layer groups left trainable in a locked tower (1: its projection)
    # method
    runs: tuple[str, ...] = RUN_NAMES
    nonneg: str = "relu"
    # training
    device: str | None = None
    epochs: int = 100
    batch_size: int = 256
    lr: float = 3e-3
    weight_decay: float = 0.1
    warmup_epochs: float = 6.0
    max_grad_norm: float | None = None
    crop_scale: tuple[float, ...] = (0.5, 1.0)  # open_clip models: random-resized-crop area range in training
    mixed_precision: str = "no"
    seed: int = 0
    checkpoint_every: int = 200
    num_workers: int = 0
    # evaluation
    eval_batch_size: int = 512
    recall_at: tuple[int, ...] = (1, 5, 10)
    top_dims: int = 8
    export_model: bool = True

    def __post_init__(self) -> None:
        if self.dataset not in DATASETS:
            raise ValueError(f"dataset={self.dataset!r} is unknown; expected one of {DATASETS}")
        check_mode(self.nonneg, "nonneg")
        if self.source not in SOURCES:
            raise ValueError(f"source={self.source!r} is unknown; expected one of {SOURCES}")
        unknown = [run for run in self.runs if run not in RUN_NAMES]
        if unknown or not self.runs:
            raise ValueError(f"runs={self.runs!r}; expected a non-empty subset of {RUN_NAMES}, e.g. runs=cl,ncl")
        if len(self.crop_scale) != 2 or not 0 < self.crop_scale[0] <= self.crop_scale[1] <= 1:
            raise ValueError(f"crop_scale={self.crop_scale!r}; expected two area fractions 0 < low <= high <= 1")
        if not self.init_temperature > 0:
            raise ValueError(f"init_temperature={self.init_temperature!r}; expected > 0")
        if not self.recall_at or min(self.recall_at) < 1:
            raise ValueError(f"recall_at={self.recall_at!r}; expected positive ranks, e.g. recall_at=1,5,10")


#: Named presets: overrides of :class:`Config`.
PRESETS: dict[str, dict[str, Any]] = {
    "digits": {},
    "openclip": dict(
        model="ViT-B-32", pretrained="laion2b_s34b_b79k", epochs=10, batch_size=128, lr=1e-5, weight_decay=0.1,
        warmup_epochs=1.0, crop_scale=(0.9, 1.0), mixed_precision="bf16", num_workers=8, eval_batch_size=256,
    ),
    "hf-clip": dict(
        source="hf", model=None, epochs=10, batch_size=128, lr=1e-5, weight_decay=0.1, warmup_epochs=1.0,
        mixed_precision="bf16", num_workers=8, eval_batch_size=256,
    ),
}
DEFAULT_PRESET = "digits"


def run(config: Config, output: Path, data: ImageTextSplits | None = None) -> dict[str, dict[str, Any]]:
    """Train and evaluate every run in ``config.runs``; return their metrics.

    ``data`` replaces the pairs named by the config (e.g. ``ImageTextSplits`` built from an
    in-memory ``datasets.Dataset`` with :func:`ncl_ext.data.image_text.from_hf_dataset`).
    """
    accelerator = make_accelerator(config.device, config.mixed_precision)
    if data is None:
        data = load_pairs(
            config.dataset, config.data_root, split=config.split, test_split=config.test_split,
            test_fraction=config.test_fraction, seed=config.seed, image_column=config.image_column,
            caption_column=config.caption_column, label_column=config.label_column,
        )
    results = {}
    for name in config.runs:
        seed_everything(config.seed)  # CL and NCL start from the same weights and see the same batches
        parts = build_clip(config, nonneg=config.nonneg if name == "ncl" else None)
        model = _train(config, name, parts, data, accelerator, output / name)
        if accelerator.is_main_process:
            results[name] = _evaluate(config, model, parts, data, output / name, accelerator.device)
            if config.export_model:
                parts.export(model, output / name / "model")
        accelerator.wait_for_everyone()
    return results


# ------------------------------------------------------------------ model


class ClipParts(NamedTuple):
    """A CLIP model behind open_clip's interface, with what feeds it and how to save it."""

    model: nn.Module  #: encode_image / encode_text (normalize=), forward, logit_scale, logit_bias
    tokenizer: Callable[[list[str]], torch.Tensor]
    train_transform: Callable[[Any], torch.Tensor]
    eval_transform: Callable[[Any], torch.Tensor]
    export: Callable[[nn.Module, Path], None]


def build_clip(config: Config, nonneg: str | None) -> ClipParts:
    """The model of ``config`` (non-negative when ``nonneg`` is a mode), its tokenizer and transforms."""
    parts = _open_clip_parts(config, nonneg) if config.source == "open_clip" else _hf_parts(config, nonneg)
    if config.lock_image:
        parts.model.lock_image_tower(unlocked_groups=config.unlocked_groups)
    if config.lock_text:
        parts.model.lock_text_tower(unlocked_layers=config.unlocked_groups)
    return parts


def _open_clip_parts(config: Config, nonneg: str | None) -> ClipParts:
    import open_clip

    augmentation = dict(scale=tuple(config.crop_scale))
    if config.model in CUSTOM_MODELS:
        model_cfg = copy.deepcopy(CUSTOM_MODELS[config.model])
        model_class = open_clip.CustomTextCLIP if model_cfg.get("custom_text") else open_clip.CLIP
        model = model_class(**model_cfg, init_logit_scale=math.log(1 / config.init_temperature))
        if config.pretrained is not None:
            _require_file(config.pretrained)
            open_clip.load_checkpoint(model, config.pretrained)
        size = model_cfg["vision_cfg"]["image_size"]
        train_transform = open_clip.image_transform(size, is_train=True, aug_cfg=augmentation)
        eval_transform = open_clip.image_transform(size, is_train=False)
        tokenizer = open_clip.SimpleTokenizer(context_length=model_cfg["text_cfg"]["context_length"])
    else:
        if config.model is None:
            raise ValueError("model=None; expected an open_clip model name, e.g. model=ViT-B-32")
        try:
            model, train_transform, eval_transform = open_clip.create_model_and_transforms(
                config.model, pretrained=config.pretrained, aug_cfg=augmentation
            )
        except RuntimeError as error:
            raise ValueError(
                f"could not build open_clip model={config.model!r} with pretrained={config.pretrained!r} ({error}). "
                "Pretrained tags are downloaded from the Hugging Face hub; without it, pass a local checkpoint "
                "file (pretrained=/path/open_clip_pytorch_model.bin) or folder (model=local-dir:/path)"
            ) from None
        tokenizer = open_clip.get_tokenizer(config.model)
        model_cfg = open_clip.get_model_config(config.model)
    if nonneg is not None:
        model = nonneg_clip(model, nonneg)
    export = functools.partial(_export_open_clip, model_cfg=model_cfg, nonneg=nonneg)
    return ClipParts(model, tokenizer, train_transform, eval_transform, export)


def _export_open_clip(model: nn.Module, folder: Path, model_cfg: dict | None, nonneg: str | None) -> None:
    """An open_clip ``local-dir:`` folder: weights under open_clip's keys, config and the NCL mode."""
    import open_clip
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    weights = {key: value.detach().contiguous().cpu() for key, value in model.state_dict().items()}
    save_file(weights, folder / "open_clip_model.safetensors")
    if model_cfg is not None:
        preprocess_cfg = open_clip.get_model_preprocess_cfg(model)
        config = {"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg, "ncl_nonneg": nonneg}
        write_text_atomically(folder / "open_clip_config.json", json.dumps(config, indent=2, default=list))


def _hf_parts(config: Config, nonneg: str | None) -> ClipParts:
    import transformers

    from ncl_ext.adapters.hf import patch, unpatch

    if config.model is None or not Path(config.model).is_dir():
        raise FileNotFoundError(
            f"model={config.model!r} is not a folder; the hf-clip preset fine-tunes a local Hugging Face "
            "CLIP / SigLIP folder (config, weights, tokenizer, image processor): model=/path/to/folder"
        )
    model = unpatch(transformers.AutoModel.from_pretrained(config.model))  # a saved NCL head is re-added below
    if nonneg is not None:
        patch(model, nonneg)
    tokenizer = transformers.AutoTokenizer.from_pretrained(config.model)
    processor = transformers.AutoImageProcessor.from_pretrained(config.model)
    max_length = model.config.text_config.max_position_embeddings
    tokenize = functools.partial(_hf_tokenize, tokenizer, max_length)
    transform = functools.partial(_hf_transform, processor)

    def export(trained: nn.Module, folder: Path) -> None:
        trained.model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        processor.save_pretrained(folder)

    return ClipParts(HFCLIPView(model), tokenize, transform, transform, export)


def _hf_tokenize(tokenizer: Any, max_length: int, texts: list[str]) -> torch.Tensor:
    # Padding to the full length is how SigLIP was trained; CLIP's causal mask ignores it.
    encoded = tokenizer(texts, padding="max_length", truncation=True, max_length=max_length, return_tensors="pt")
    return encoded["input_ids"]


def _hf_transform(processor: Any, image: Any) -> torch.Tensor:
    return processor(images=image, return_tensors="pt")["pixel_values"][0]


def _require_file(path: str) -> None:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"pretrained={path!r} is not a checkpoint file")


# ------------------------------------------------------------------ training


def _clip_outputs(output: Any) -> dict[str, Any]:
    """open_clip's forward output (tuple or dict) as a dict."""
    if isinstance(output, dict):
        return output
    return dict(zip(("image_features", "text_features", "logit_scale", "logit_bias"), output))


def _train(config: Config, name: str, parts: ClipParts, data: ImageTextSplits, accelerator: Any, output: Path) -> nn.Module:
    distributed = accelerator.num_processes > 1
    criterion = ClipLoss(local_loss=distributed, gather_with_grad=distributed)  # the NCL model is already non-negative

    def compute_loss(model: nn.Module, batch: tuple[torch.Tensor, ...]) -> dict[str, torch.Tensor]:
        images, tokens, _ = batch
        out = _clip_outputs(model(images.to(accelerator.device), tokens.to(accelerator.device)))
        logit_scale = out["logit_scale"].float().clamp(max=100)  # open_clip's cap on the learned scale
        bias = out.get("logit_bias")
        loss = criterion(
            out["image_features"].float(), out["text_features"].float(), logit_scale,
            bias.float() if bias is not None else None,
        )
        return {"loss": loss, "features": out["image_features"], "logit_scale": logit_scale.detach()}

    loader = torch.utils.data.DataLoader(
        data.train, batch_size=config.batch_size, shuffle=True, drop_last=True,
        collate_fn=ImageTextCollate(parts.train_transform, parts.tokenizer, random_caption=True),
        num_workers=config.num_workers, pin_memory=torch.cuda.is_available(),
        persistent_workers=config.num_workers > 0, generator=torch.Generator().manual_seed(config.seed),
    )
    train_config = TrainConfig(
        epochs=config.epochs,
        lr=config.lr,
        optimizer="adamw",
        weight_decay=config.weight_decay,
        warmup_epochs=min(config.warmup_epochs, config.epochs),
        max_grad_norm=config.max_grad_norm,
        mixed_precision=config.mixed_precision,
        seed=config.seed,
        checkpoint_every=config.checkpoint_every,
    )
    accelerator.print(f"[{name}] training {config.model} ({config.source}) with nonneg={config.nonneg if name == 'ncl' else None!r}")
    trainer = Trainer(parts.model, compute_loss, loader, train_config, output, accelerator=accelerator)
    return trainer.fit().model


# ------------------------------------------------------------------ evaluation


class _Embeddings(NamedTuple):
    images: torch.Tensor  # (N, D) L2-normalised image embeddings
    texts: torch.Tensor  # (N, D) L2-normalised embeddings of each pair's first caption
    labels: torch.Tensor  # (N,) class indices, -1 without


@torch.no_grad()
def _embed(model: nn.Module, parts: ClipParts, pairs: ImageTextDataset, batch_size: int, num_workers: int, device: Any) -> _Embeddings:
    loader = torch.utils.data.DataLoader(
        pairs, batch_size=batch_size, num_workers=num_workers,
        collate_fn=ImageTextCollate(parts.eval_transform, parts.tokenizer),
    )
    images, texts, labels = [], [], []
    for pixels, tokens, batch_labels in loader:
        images.append(model.encode_image(pixels.to(device), normalize=True).float().cpu())
        texts.append(model.encode_text(tokens.to(device), normalize=True).float().cpu())
        labels.append(batch_labels)
    return _Embeddings(torch.cat(images), torch.cat(texts), torch.cat(labels))


def _evaluate(config: Config, model: nn.Module, parts: ClipParts, data: ImageTextSplits, output: Path, device: Any) -> dict[str, Any]:
    import open_clip

    model.eval()
    test = data.test
    embeddings = _embed(model, parts, test, config.eval_batch_size, config.num_workers, device)
    labelled = test.labels is not None and bool((embeddings.labels >= 0).all())
    metrics: dict[str, Any] = {"zero_shot_acc": None}
    if labelled:
        templates = config.prompt_templates or data.prompt_templates or open_clip.SIMPLE_IMAGENET_TEMPLATES
        classifier = open_clip.build_zero_shot_classifier(
            model, parts.tokenizer, test.classes, templates, num_classes_per_batch=10, device=device
        )
        predictions = (embeddings.images @ classifier.float().cpu()).argmax(dim=1)
        metrics["zero_shot_acc"] = float((predictions == embeddings.labels).float().mean())

    # A hit is a retrieved item of the query's group: its class, or else the pairs sharing its caption.
    captions = [captions[0] for captions in test.captions]
    groups = embeddings.labels if labelled else _caption_groups(captions)
    for k in config.recall_at:
        fits = k <= len(test)
        metrics[f"i2t_recall@{k}"] = _recall(embeddings.images, embeddings.texts, groups, k) if fits else None
        metrics[f"t2i_recall@{k}"] = _recall(embeddings.texts, embeddings.images, groups, k) if fits else None

    reports = {}
    for modality, features in (("image", embeddings.images), ("text", embeddings.texts)):
        reports[modality] = analysis.feature_report(features, embeddings.labels if labelled else None, seed=config.seed)
        metrics[f"sparsity_{modality}"] = reports[modality]["sparsity"]
    for modality in ("image", "text"):
        metrics[f"semantic_consistency_{modality}"] = reports[modality]["semantic_consistency"]

    output.mkdir(parents=True, exist_ok=True)
    for modality, report in reports.items():
        write_text_atomically(output / f"feature_report_{modality}.json", json.dumps(report, indent=2))
    _top_activating(config, embeddings, parts, test, captions, output)
    return metrics


def _caption_groups(captions: list[str]) -> torch.Tensor:
    """One group id per distinct caption: pairs with identical captions are interchangeable."""
    ids: dict[str, int] = {}
    return torch.tensor([ids.setdefault(caption, len(ids)) for caption in captions])


def _recall(queries: torch.Tensor, gallery: torch.Tensor, groups: torch.Tensor, k: int) -> float:
    """Share of queries with an item of their own group among their ``k`` nearest gallery items."""
    _, nearest = analysis.cosine_top_k(queries, gallery, k=k)
    return float((groups[nearest] == groups[:, None]).any(dim=1).float().mean())


def _top_activating(
    config: Config, embeddings: _Embeddings, parts: ClipParts, test: ImageTextDataset, captions: list[str], output: Path
) -> None:
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
        embeddings.images[shown], pixels, output / "top_activating_images.png", dims=dims, per_dim=per_dim
    )
