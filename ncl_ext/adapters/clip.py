"""CLIP adapter: open_clip and Hugging Face CLIP models with non-negative joint embeddings.

Wang, Zhang, Guo, Wang, "Non-negative Contrastive Learning", ICLR 2024
(arXiv:2403.12459): a non-negative map on a contrastive model's output makes the
features sparse and their dimensions interpretable, at equal accuracy. In CLIP
(Radford et al., ICML 2021, arXiv:2103.00020) the outputs are the image and the text
embeddings, so the map goes on both, right after the towers' projections and before the
L2 normalisation that CLIP applies.

- :func:`nonneg_clip` / :class:`NonNegativeCLIP`: any open_clip ``CLIP`` or
  ``CustomTextCLIP`` keeps its interface (``encode_image`` / ``encode_text`` with
  ``normalize=``, ``forward`` as a tuple or, with ``output_dict``, a dict, ``get_logits``,
  ``forward_intermediates``, ``logit_scale`` and ``logit_bias``, ``lock_image_tower``, ...)
  and yields non-negative embeddings.
- :class:`HFCLIPView`: a Hugging Face ``CLIPModel`` / ``SiglipModel`` behind that same
  interface, so one training and evaluation code serves both ecosystems. Its
  non-negative version is :func:`ncl_ext.patch` applied to the HF model (the head then
  survives ``save_pretrained`` + :func:`ncl_ext.from_pretrained`).

Why a wrapper rather than forward hooks: open_clip's ``CLIP.encode_text`` computes the
text embedding inline (``x @ text_projection``, a bare parameter), so no module returns
it and no hook could map it. :class:`NonNegativeCLIP` instead calls the model's own
``encode_image`` / ``encode_text`` without normalisation, applies the head, and
normalises where open_clip does; that works for every tower open_clip builds (ViT,
ModifiedResNet, timm, HF text). Other attributes are looked up on the wrapped model, and
as the head has no weights the wrapper's ``state_dict`` has exactly the wrapped model's
keys: a checkpoint of the non-negative model is an ordinary open_clip checkpoint
(``open_clip.load_checkpoint``, ``open_clip.create_model(name, pretrained=file)``), and an
open_clip checkpoint loads into the non-negative model.

Examples:
    >>> import torch, open_clip
    >>> model = open_clip.CLIP(embed_dim=16,
    ...     vision_cfg=dict(image_size=8, patch_size=4, width=16, layers=1, head_width=8),
    ...     text_cfg=dict(context_length=8, vocab_size=49408, width=16, heads=2, layers=1))
    >>> model = nonneg_clip(model, mode="relu")
    >>> image_features, text_features, logit_scale = model(torch.randn(2, 3, 8, 8),
    ...                                                    torch.randint(0, 49408, (2, 8)))
    >>> bool((image_features >= 0).all() and (text_features >= 0).all())
    True
    >>> list(model.state_dict())[:3]            # open_clip's own keys
    ['positional_embedding', 'text_projection', 'logit_scale']
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ncl_ext.nonneg import NonNegative, select_output

__all__ = [
    "MODEL_CONFIGS",
    "ClipParts",
    "HFCLIPView",
    "NonNegativeCLIP",
    "PairEmbeddings",
    "build_hf_clip",
    "build_open_clip",
    "encode_pairs",
    "nonneg_clip",
]

#: open_clip model configs (JSON, open_clip's format) shipped with ncl_ext, e.g. ``digits-tiny``:
#: a CLIP small enough to train from scratch on a CPU (8x8 ViT with 2x2 patches, 2-layer text tower).
MODEL_CONFIGS = Path(__file__).with_name("open_clip_configs")

_FEATURE_KEYS = ("image_features", "text_features")


class _CLIPInterface(nn.Module):
    """open_clip's ``forward`` and ``get_logits``, written once over ``encode_image``,
    ``encode_text``, ``logit_scale`` (a log-scale parameter) and ``logit_bias``."""

    output_dict: bool
    logit_scale: torch.Tensor
    logit_bias: torch.Tensor | None

    def encode_image(self, image: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        raise NotImplementedError

    def encode_text(self, text: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        raise NotImplementedError

    def forward(
        self, image: torch.Tensor | None = None, text: torch.Tensor | None = None
    ) -> tuple[torch.Tensor | None, ...] | dict[str, torch.Tensor | None]:
        """L2-normalised embeddings and ``logit_scale.exp()`` (and ``logit_bias``), as open_clip returns them."""
        image_features = self.encode_image(image, normalize=True) if image is not None else None
        text_features = self.encode_text(text, normalize=True) if text is not None else None
        logit_scale, logit_bias = self.logit_scale.exp(), self.logit_bias
        if self.output_dict:
            output = {"image_features": image_features, "text_features": text_features, "logit_scale": logit_scale}
            if logit_bias is not None:
                output["logit_bias"] = logit_bias
            return output
        if logit_bias is not None:
            return image_features, text_features, logit_scale, logit_bias
        return image_features, text_features, logit_scale

    def get_logits(self, image: torch.Tensor, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(logits_per_image, logits_per_text)`` of every image against every text."""
        return self._logits(self.encode_image(image, normalize=True), self.encode_text(text, normalize=True))

    def _logits(self, image_features: torch.Tensor, text_features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.logit_scale.exp() * image_features @ text_features.T
        if self.logit_bias is not None:
            logits = logits + self.logit_bias
        return logits, logits.T


class NonNegativeCLIP(_CLIPInterface):
    """An open_clip ``CLIP`` / ``CustomTextCLIP`` whose image and text embeddings are non-negative.

    Built by :func:`nonneg_clip`. The wrapped model is ``self.model`` (attributes it has and
    the wrapper does not, such as ``visual``, ``logit_scale`` or ``lock_text_tower``, are
    read from it) and the head is ``self.head``.
    """

    def __init__(self, model: nn.Module, mode: str = "relu") -> None:
        super().__init__()
        self.model = model
        self.head = NonNegative(mode)
        # The head has no weights: save and load under the wrapped model's own keys.
        register_save_hook = getattr(self, "register_state_dict_post_hook", None) or self._register_state_dict_hook
        register_save_hook(_drop_model_prefix)
        if hasattr(self, "register_load_state_dict_pre_hook"):  # torch >= 2.5; older versions: the private spelling
            self.register_load_state_dict_pre_hook(_add_model_prefix)
        else:
            self._register_load_state_dict_pre_hook(_add_model_prefix, with_module=True)

    @property
    def mode(self) -> str:
        return self.head.mode

    @property
    def output_dict(self) -> bool:
        return bool(getattr(self.model, "output_dict", False))

    @output_dict.setter
    def output_dict(self, value: bool) -> None:
        self.model.output_dict = value

    def encode_image(self, image: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """The non-negative image embedding; L2-normalised when ``normalize``."""
        features = self.head(self.model.encode_image(image, normalize=False))
        return F.normalize(features, dim=-1) if normalize else features

    def encode_text(self, text: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """The non-negative text embedding; L2-normalised when ``normalize``."""
        features = self.head(self.model.encode_text(text, normalize=False))
        return F.normalize(features, dim=-1) if normalize else features

    def forward_intermediates(
        self,
        image: torch.Tensor | None = None,
        text: torch.Tensor | None = None,
        *,
        normalize: bool = True,
        intermediates_only: bool = False,
        output_logits: bool = False,
        **kwargs: Any,
    ) -> dict[str, Any]:
        """open_clip's ``forward_intermediates`` with non-negative final features (intermediates unchanged)."""
        if output_logits and (image is None or text is None):
            raise ValueError("output_logits=True needs both image and text")
        output = self.model.forward_intermediates(
            image, text, normalize=False, intermediates_only=intermediates_only, output_logits=False, **kwargs
        )
        for key in _FEATURE_KEYS:
            if key in output:
                output[key] = self.head(output[key])
                if normalize and not intermediates_only:
                    output[key] = F.normalize(output[key], dim=-1)
        if output_logits and not intermediates_only:
            output["image_logits"], output["text_logits"] = self._logits(*(output[key] for key in _FEATURE_KEYS))
        return output

    def no_weight_decay(self) -> set[str]:
        """The wrapped model's no-weight-decay names, as this module's parameter names (timm optimizers)."""
        names = self.model.no_weight_decay() if hasattr(self.model, "no_weight_decay") else set()
        return {f"model.{name}" for name in names}

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            model = self.__dict__.get("_modules", {}).get("model")
            if model is None or name.startswith("__"):
                raise
            return getattr(model, name)


def _drop_model_prefix(module: nn.Module, state_dict: dict, prefix: str, local_metadata: dict) -> None:
    """``state_dict`` post-hook: ``PREFIX.model.visual...`` -> ``PREFIX.visual...`` (order kept)."""
    inner = prefix + "model."
    for key in [key for key in state_dict if key.startswith(inner)]:
        state_dict[prefix + key[len(inner):]] = state_dict.pop(key)


def _add_model_prefix(module: nn.Module, state_dict: dict, prefix: str, *args: Any) -> None:
    """``load_state_dict`` pre-hook: accept open_clip's keys (and the wrapper's own, prefixed ones)."""
    inner = prefix + "model."
    for key in [key for key in state_dict if key.startswith(prefix) and not key.startswith(inner)]:
        state_dict[inner + key[len(prefix):]] = state_dict.pop(key)


def nonneg_clip(model: nn.Module, mode: str = "relu") -> NonNegativeCLIP:
    """Make an open_clip model's image and text embeddings non-negative; its interface is unchanged.

    Args:
        model: an open_clip ``CLIP`` or ``CustomTextCLIP`` (pretrained or not); it is kept,
            not copied. A :class:`NonNegativeCLIP` of the same ``mode`` is returned as is.
        mode: the non-negative map (``relu``, ``rep_relu``, ``softplus``, ...; see
            :func:`ncl_ext.nonneg`).

    Returns:
        A :class:`NonNegativeCLIP`: ``encode_image`` / ``encode_text`` return
        ``mode(embedding)``, L2-normalised when ``normalize=True``; ``forward`` and
        ``get_logits`` use the normalised non-negative embeddings. Its ``state_dict`` keys are
        the model's, so open_clip checkpoints load into it and its checkpoints load into
        open_clip. Train it with a plain loss (``ncl_ext.losses.ClipLoss()``): the model is
        already non-negative.

    Examples:
        >>> import open_clip                                                      # doctest: +SKIP
        >>> model, _, preprocess = open_clip.create_model_and_transforms(
        ...     "ViT-B-32", pretrained="laion2b_s34b_b79k")                       # doctest: +SKIP
        >>> model = nonneg_clip(model, mode="relu")                               # doctest: +SKIP
        >>> model.encode_image(images, normalize=True)   # sparse, >= 0           # doctest: +SKIP
    """
    import open_clip

    if isinstance(model, NonNegativeCLIP):
        if model.mode != mode:
            raise ValueError(
                f"model is already a NonNegativeCLIP with mode={model.mode!r}; wrap model.model to use mode={mode!r}"
            )
        return model
    if not isinstance(model, (open_clip.CLIP, open_clip.CustomTextCLIP)):
        raise ValueError(
            f"model must be an open_clip CLIP or CustomTextCLIP, got {type(model).__name__}; "
            "for a Hugging Face CLIPModel / SiglipModel use ncl_ext.patch(model)"
        )
    return NonNegativeCLIP(model, mode)


class HFCLIPView(_CLIPInterface):
    """A Hugging Face ``CLIPModel`` or ``SiglipModel`` behind open_clip's interface.

    ``encode_image(pixel_values)`` and ``encode_text(input_ids)`` return the models'
    ``get_image_features`` / ``get_text_features`` (a tensor in transformers 4.x, the
    output's ``pooler_output`` in 5.x); ``logit_scale`` (a log-scale, as in open_clip) and
    ``logit_bias`` (SigLIP) are the model's parameters. Patch the model first with
    :func:`ncl_ext.patch` for non-negative embeddings. Text is passed as ``input_ids``
    alone, padded as the model was trained (CLIP pools at the end-of-text token behind a
    causal mask, SigLIP at the last position of ``max_length`` padding).

    Examples:
        >>> from transformers import CLIPModel                                    # doctest: +SKIP
        >>> view = HFCLIPView(ncl_ext.patch(CLIPModel.from_pretrained(folder)))   # doctest: +SKIP
        >>> image_features, text_features, logit_scale = view(pixel_values, input_ids)   # doctest: +SKIP
    """

    def __init__(self, model: nn.Module, output_dict: bool = False) -> None:
        super().__init__()
        if not all(hasattr(model, name) for name in ("get_image_features", "get_text_features", "logit_scale")):
            raise ValueError(
                f"model must be a Hugging Face dual encoder (CLIPModel, SiglipModel), got {type(model).__name__}"
            )
        self.model = model
        self.output_dict = output_dict

    @property
    def logit_scale(self) -> torch.Tensor:
        return self.model.logit_scale

    @property
    def logit_bias(self) -> torch.Tensor | None:
        return getattr(self.model, "logit_bias", None)

    def encode_image(self, image: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        features = _embedding(self.model.get_image_features(pixel_values=image))
        return F.normalize(features, dim=-1) if normalize else features

    def encode_text(self, text: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        features = _embedding(self.model.get_text_features(input_ids=text))
        return F.normalize(features, dim=-1) if normalize else features

    def lock_image_tower(self, unlocked_groups: int = 0, freeze_bn_stats: bool = False) -> None:
        """Freeze the image tower; ``unlocked_groups > 0`` keeps its output projection trainable."""
        self._lock("vision_model", "visual_projection", unlocked_groups)

    def lock_text_tower(self, unlocked_layers: int = 0, freeze_layer_norm: bool = True) -> None:
        """Freeze the text tower; ``unlocked_layers > 0`` keeps its output projection trainable."""
        self._lock("text_model", "text_projection", unlocked_layers)

    def _lock(self, tower_name: str, projection_name: str, unlocked: int) -> None:
        tower = getattr(self.model, tower_name)
        # CLIP projects with a separate linear layer; SigLIP's towers end in their own `head`.
        projection = getattr(self.model, projection_name, None) or getattr(tower, "head", None)
        for module in (tower, projection):
            if module is not None:
                module.requires_grad_(False)
        if unlocked > 0 and projection is not None:
            projection.requires_grad_(True)


def _embedding(output: Any) -> torch.Tensor:
    """transformers 4.x returns the embedding tensor, 5.x an output whose ``pooler_output`` it is."""
    return output if isinstance(output, torch.Tensor) else select_output(output, "pooler_output")



# ------------------------------------------------------------------ building and saving models


class ClipParts(NamedTuple):
    """A CLIP model behind open_clip's interface, what feeds it, and how to save it."""

    model: nn.Module  #: encode_image / encode_text (normalize=), forward, logit_scale, logit_bias
    tokenizer: Callable[[list[str]], torch.Tensor]
    train_transform: Callable[[Any], torch.Tensor]
    eval_transform: Callable[[Any], torch.Tensor]
    export: Callable[[nn.Module, Path], None]  #: ``export(trained_model, folder)``


def build_open_clip(
    name: str,
    pretrained: str | None = None,
    nonneg: str | None = None,
    init_temperature: float | None = None,
    crop_scale: tuple[float, float] = (0.9, 1.0),
) -> ClipParts:
    """An open_clip model by name (``ViT-B-32``, ``local-dir:PATH``, ``hf-hub:...`` or a config of
    :data:`MODEL_CONFIGS`), non-negative under ``nonneg``, with its tokenizer and transforms.

    Args:
        name: an open_clip model name.
        pretrained: an open_clip pretrained tag (downloads) or a local checkpoint file.
        nonneg: ``None`` (CL) or the mode of :func:`nonneg_clip` (NCL).
        init_temperature: models from random init start with ``logit_scale = log(1 / init_temperature)``.
        crop_scale: the random-resized-crop area range of the training transform.

    Examples:
        >>> parts = build_open_clip("digits-tiny", nonneg="relu", init_temperature=0.2)
        >>> type(parts.model).__name__, round(float(parts.model.logit_scale.detach().exp()), 3)
        ('NonNegativeCLIP', 5.0)
    """
    import open_clip

    open_clip.add_model_config(MODEL_CONFIGS)
    extra = {} if init_temperature is None or pretrained else {"init_logit_scale": math.log(1 / init_temperature)}
    is_path = pretrained is not None and ("/" in pretrained or pretrained.endswith((".bin", ".pt", ".safetensors")))
    if is_path and not Path(pretrained).is_file():
        raise FileNotFoundError(f"pretrained={pretrained!r} is not a checkpoint file")
    try:
        model, train_transform, eval_transform = open_clip.create_model_and_transforms(
            name, pretrained=pretrained, aug_cfg={"scale": tuple(crop_scale)}, **extra
        )
    except RuntimeError as error:
        raise ValueError(
            f"could not build open_clip model={name!r} with pretrained={pretrained!r} ({error}). "
            "Pretrained tags are downloaded from the Hugging Face hub; without it, pass a local checkpoint "
            "file (pretrained=/path/open_clip_pytorch_model.bin) or folder (model=local-dir:/path)"
        ) from None
    if nonneg is not None:
        model = nonneg_clip(model, nonneg)
    export = functools.partial(_export_open_clip, model_cfg=open_clip.get_model_config(name), nonneg=nonneg)
    return ClipParts(model, open_clip.get_tokenizer(name), train_transform, eval_transform, export)


def _export_open_clip(model: nn.Module, folder: Path, model_cfg: dict | None, nonneg: str | None) -> None:
    """An open_clip ``local-dir:`` folder: weights under open_clip's keys, config and the NCL mode."""
    import open_clip
    from safetensors.torch import save_file

    from ncl_ext.checkpoint import write_text_atomically

    folder.mkdir(parents=True, exist_ok=True)
    weights = {key: value.detach().contiguous().cpu() for key, value in model.state_dict().items()}
    save_file(weights, folder / "open_clip_model.safetensors")
    if model_cfg is not None:
        preprocess_cfg = open_clip.get_model_preprocess_cfg(model)
        config = {"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg, "ncl_nonneg": nonneg}
        write_text_atomically(folder / "open_clip_config.json", json.dumps(config, indent=2, default=list))


def build_hf_clip(folder: str | Path, nonneg: str | None = None) -> ClipParts:
    """A local Hugging Face ``CLIPModel`` / ``SiglipModel`` folder behind open_clip's interface (:class:`HFCLIPView`).

    ``nonneg`` patches the model with :func:`ncl_ext.patch` (a head saved in the folder is
    removed first, so ``nonneg=None`` is the plain model). Texts are padded to the model's
    full length, as SigLIP was trained (CLIP's causal mask ignores the padding).
    """
    import transformers

    from ncl_ext.adapters.hf import patch, unpatch

    if folder is None or not Path(folder).is_dir():
        raise FileNotFoundError(
            f"model={folder!r} is not a folder; expected a local Hugging Face CLIP / SigLIP folder "
            "(config, weights, tokenizer, image processor)"
        )
    model = unpatch(transformers.AutoModel.from_pretrained(folder))
    if nonneg is not None:
        patch(model, nonneg)
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    processor = transformers.AutoImageProcessor.from_pretrained(folder)
    max_length = model.config.text_config.max_position_embeddings

    tokenize = functools.partial(_hf_tokenize, tokenizer, max_length)  # partials pickle into DataLoader workers
    transform = functools.partial(_hf_transform, processor)

    def export(trained: nn.Module, target: Path) -> None:
        trained.model.save_pretrained(target)
        tokenizer.save_pretrained(target)
        processor.save_pretrained(target)

    return ClipParts(HFCLIPView(model), tokenize, transform, transform, export)


def _hf_tokenize(tokenizer: Any, max_length: int, texts: list[str]) -> torch.Tensor:
    encoded = tokenizer(texts, padding="max_length", truncation=True, max_length=max_length, return_tensors="pt")
    return encoded["input_ids"]


def _hf_transform(processor: Any, image: Any) -> torch.Tensor:
    return processor(images=image, return_tensors="pt")["pixel_values"][0]


class PairEmbeddings(NamedTuple):
    """The embeddings of image-caption pairs, as :func:`encode_pairs` returns them."""

    images: torch.Tensor  #: (N, D) L2-normalised image embeddings
    texts: torch.Tensor  #: (N, D) L2-normalised embeddings of each pair's first caption
    labels: torch.Tensor  #: (N,) class indices, -1 without


@torch.no_grad()
def encode_pairs(parts: ClipParts, pairs: Any, batch_size: int, device: Any, num_workers: int = 0) -> PairEmbeddings:
    """Embed an :class:`~ncl_ext.data.image_text.ImageTextDataset` with ``parts``' eval transform and tokenizer."""
    from ncl_ext.data.image_text import ImageTextCollate

    loader = torch.utils.data.DataLoader(
        pairs, batch_size=batch_size, num_workers=num_workers,
        collate_fn=ImageTextCollate(parts.eval_transform, parts.tokenizer),
    )
    images, texts, labels = [], [], []
    for pixels, tokens, batch_labels in loader:
        images.append(parts.model.encode_image(pixels.to(device), normalize=True).float().cpu())
        texts.append(parts.model.encode_text(tokens.to(device), normalize=True).float().cpu())
        labels.append(batch_labels)
    return PairEmbeddings(torch.cat(images), torch.cat(texts), torch.cat(labels))
