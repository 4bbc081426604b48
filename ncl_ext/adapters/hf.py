"""Patch any HuggingFace ``transformers`` model with a non-negative output head.

Non-negative Contrastive Learning (Wang, Zhang, Guo, Wang, ICLR 2024,
https://arxiv.org/abs/2403.12459) only needs a non-negative map on the embedding a
model already produces. :func:`patch` adds it to a ``PreTrainedModel`` in place, with
forward hooks (nothing in ``transformers`` is edited):

- encoders (BERT, RoBERTa, DistilBERT, ModernBERT, ViT, ...): the backbone's
  ``last_hidden_state`` and ``pooler_output``, so task heads built on the backbone
  (``BertForSequenceClassification``, ``ViTForImageClassification``) see them too;
- dual encoders (CLIP, SigLIP): the image and text embeddings, hence
  ``get_image_features`` / ``get_text_features`` (a tensor in transformers 4.x, an output
  whose ``pooler_output`` is the embedding in 5.x) and ``forward``'s ``image_embeds`` /
  ``text_embeds``.

The patch is recorded in ``model.config.ncl_nonneg`` (mode, targets, version), so
``save_pretrained`` stores it, and once this module is imported every model built from
such a config gets its head back, whichever loader builds it (``AutoModel``,
``from_config``, :func:`from_pretrained`). The head also follows its module when a
wrapper replaces it (PEFT/LoRA layers), so it survives ``get_peft_model``.

Examples:
    >>> import torch, ncl_ext
    >>> from transformers import BertConfig, BertModel
    >>> config = BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2,
    ...                     num_attention_heads=2, intermediate_size=37)
    >>> model = ncl_ext.patch(BertModel(config), mode="relu")
    >>> out = model(input_ids=torch.tensor([[1, 5, 7]]))
    >>> bool((out.last_hidden_state >= 0).all() and (out.pooler_output >= 0).all())
    True
    >>> model.config.ncl_nonneg["targets"]
    [{'module': '', 'fields': ['last_hidden_state', 'pooler_output']}]
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import os
import sys
import threading
import typing
import warnings
from types import ModuleType
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.nn.modules.module import register_module_module_registration_hook

from ncl_ext import __version__
from ncl_ext.nonneg import NonNegative, check_mode

if TYPE_CHECKING:
    from transformers import PreTrainedModel

__all__ = ["RECORD_ATTRIBUTE", "from_pretrained", "patch", "unpatch"]

#: Name of the ``model.config`` attribute that records the patch (saved in config.json).
RECORD_ATTRIBUTE = "ncl_nonneg"
#: The output fields of an encoder that carry its embeddings.
ENCODER_FIELDS = ("last_hidden_state", "pooler_output")
#: Dual encoders: modules whose output is the image / text embedding, first match wins.
DUAL_ENCODER_HEADS = (
    {"image": "visual_projection", "text": "text_projection"},  # CLIP, AltCLIP, ChineseCLIP, ...
    {"image": "vision_model.head", "text": "text_model.head"},  # SigLIP, SigLIP 2
)
# The attribute of a hooked module that holds its head (and the hook handles).
_HEAD_ATTRIBUTE = "_ncl_nonneg_head"
# The hub arguments of from_pretrained that config / adapter look-ups also accept.
_HUB_KWARGS = ("cache_dir", "force_download", "proxies", "token", "revision", "local_files_only", "subfolder")


class _ModuleHead:
    """The non-negative head of one module: forward hooks mapping (fields of) its output.

    ``fields=None``: a Tensor output is mapped, a ``ModelOutput`` has its
    :data:`ENCODER_FIELDS` mapped. ``fields=[...]``: those fields of a ``ModelOutput``
    are mapped; the module is asked for a ``ModelOutput`` even when the caller wants a
    tuple (``return_dict=False``), which is rebuilt afterwards with ``to_tuple()``.
    """

    def __init__(self, mode: str, fields: list[str] | None) -> None:
        self.nonneg = NonNegative(mode)
        self.fields = fields
        self.handles: list[torch.utils.hooks.RemovableHandle] = []
        self.asks_for_model_output = False
        self._tuple_requests = threading.local()

    def attach(self, module: nn.Module) -> None:
        self.asks_for_model_output = self.fields is not None and _accepts_return_dict(module)
        if self.asks_for_model_output:
            self.handles.append(module.register_forward_pre_hook(self.ask_for_model_output, with_kwargs=True))
        self.handles.append(module.register_forward_hook(self.map_output, with_kwargs=True))
        setattr(module, _HEAD_ATTRIBUTE, self)

    def detach(self, module: nn.Module) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()
        if _HEAD_ATTRIBUTE in module.__dict__:
            delattr(module, _HEAD_ATTRIBUTE)

    def ask_for_model_output(self, module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        config = getattr(module, "config", None)
        default = getattr(config, "return_dict", True) and not getattr(config, "torchscript", False)
        wants_tuple = kwargs.get("return_dict", default) is False
        self._pending().append(wants_tuple)
        return args, {**kwargs, "return_dict": True} if wants_tuple else kwargs

    def map_output(self, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
        wants_tuple = self._pending().pop() if self.asks_for_model_output else False
        output = self._map(module, output)
        return output.to_tuple() if wants_tuple else output

    def _map(self, module: nn.Module, output: Any) -> Any:
        name = type(module).__name__
        if isinstance(output, torch.Tensor):
            if self.fields is not None:
                raise ValueError(f"fields {self.fields} were targeted but {name} returned a single Tensor")
            return self.nonneg(output)
        if isinstance(output, Mapping):  # transformers' ModelOutput and plain dicts
            fields = self.fields or [key for key in ENCODER_FIELDS if output.get(key) is not None]
            if not fields:
                raise ValueError(
                    f"{name} returned {type(output).__name__} without any of {list(ENCODER_FIELDS)}; "
                    f"patch with target= one of its fields {list(output.keys())}"
                )
            for key in fields:
                value = output.get(key)
                if value is None and key in _dataclass_fields(type(output)):
                    continue  # a declared field this call did not compute (e.g. no pooling layer)
                if not isinstance(value, torch.Tensor):
                    raise ValueError(
                        f"target field {key!r} is not a tensor in the {type(output).__name__} returned by "
                        f"{name}; available fields: {list(output.keys())}"
                    )
                output[key] = self.nonneg(value)
            return output
        if isinstance(output, (tuple, list)) and self.fields is None and output:
            return type(output)([self.nonneg(output[0]), *output[1:]])
        raise ValueError(
            f"{name} returned a {type(output).__name__}; the non-negative head needs a Tensor or a "
            "ModelOutput (call the model with return_dict=True)"
        )

    def _pending(self) -> list[bool]:
        if not hasattr(self._tuple_requests, "stack"):
            self._tuple_requests.stack = []
        return self._tuple_requests.stack

    def __getstate__(self) -> dict:  # threading.local can be neither copied nor pickled
        return {key: value for key, value in self.__dict__.items() if key != "_tuple_requests"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._tuple_requests = threading.local()


def patch(model: nn.Module, mode: str = "relu", target: str | Sequence[str] | None = None) -> nn.Module:
    """Make a HuggingFace model's embedding outputs non-negative, in place; returns ``model``.

    Args:
        model: a ``transformers.PreTrainedModel``, or a PEFT model wrapping one.
        mode: the non-negative map (``relu``, ``rep_relu``, ``softplus``, ...; see
            :func:`ncl_ext.nonneg`).
        target: ``None`` chooses by architecture (encoders: ``last_hidden_state`` and
            ``pooler_output`` of ``model.base_model``; CLIP/SigLIP: the image and text
            embedding modules). Otherwise an output field of ``model.base_model``
            (``"pooler_output"``) or a submodule name (``"visual_projection"``,
            ``"bert.pooler"``), or a list of them.

    Patching again with the same arguments is a no-op; use :func:`unpatch` to remove it.
    The patch is recorded in ``model.config.ncl_nonneg`` and so saved by ``save_pretrained``.

    Examples:
        >>> from transformers import CLIPConfig, CLIPModel
        >>> clip = CLIPModel(CLIPConfig(
        ...     text_config=dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2,
        ...                      num_attention_heads=2, vocab_size=99),
        ...     vision_config=dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2,
        ...                        num_attention_heads=2, image_size=32, patch_size=8),
        ...     projection_dim=16))
        >>> clip = patch(clip, mode="relu")
        >>> [t["module"] for t in clip.config.ncl_nonneg["targets"]]
        ['visual_projection', 'text_projection']
    """
    mode = check_mode(mode)
    transformers_model = _transformers_model(model)
    backbone = transformers_model.base_model
    record = {"mode": mode, "targets": _resolve_targets(model, backbone, target), "version": __version__}
    existing = getattr(transformers_model.config, RECORD_ATTRIBUTE, None)
    if existing is not None:
        if _same_patch(existing, record):
            _attach(backbone, existing)  # no-op unless a head was lost
            return model
        raise ValueError(
            f"the model is already patched with mode={existing['mode']!r}, targets={existing['targets']}; "
            "call ncl_ext.unpatch(model) before patching it differently"
        )
    _detach_all(model)
    _attach(backbone, record)
    setattr(transformers_model.config, RECORD_ATTRIBUTE, record)
    return model


def unpatch(model: nn.Module) -> nn.Module:
    """Remove the non-negative head added by :func:`patch` (and its config record); returns ``model``.

    Examples:
        >>> from transformers import BertConfig, BertModel
        >>> model = unpatch(patch(BertModel(BertConfig(hidden_size=32, num_hidden_layers=2,
        ...     num_attention_heads=2, intermediate_size=37, vocab_size=99))))
        >>> hasattr(model.config, "ncl_nonneg")
        False
    """
    transformers_model = _transformers_model(model)
    _detach_all(model)
    if hasattr(transformers_model.config, RECORD_ATTRIBUTE):
        delattr(transformers_model.config, RECORD_ATTRIBUTE)
    return model


def from_pretrained(path: str | os.PathLike, **kwargs: Any) -> nn.Module:
    """Load a checkpoint saved from a patched model, with its non-negative head.

    ``path`` is a model directory or hub id written by ``save_pretrained``: the model is
    built as the architecture named in its ``config.architectures`` (``AutoModel`` when
    that class is unknown), then the head recorded in ``config.ncl_nonneg`` is applied.
    A PEFT adapter directory loads its base model this way, then the adapter on top
    (the head is recorded in the base model's config). ``kwargs`` go to the
    ``from_pretrained`` of ``transformers`` (``dtype``, ``revision``, ...).

    Examples:
        >>> model.save_pretrained("out")                    # doctest: +SKIP
        >>> model = ncl_ext.from_pretrained("out")          # doctest: +SKIP
    """
    transformers = _import_transformers()
    hub_kwargs = {key: kwargs[key] for key in _HUB_KWARGS if key in kwargs}
    path = os.fspath(path)
    if transformers.utils.find_adapter_config_file(path, **hub_kwargs) is not None:
        return _load_adapter(path, **kwargs)
    config = kwargs.get("config") or transformers.AutoConfig.from_pretrained(
        path, trust_remote_code=kwargs.get("trust_remote_code", False), **hub_kwargs
    )
    architectures = getattr(config, "architectures", None) or []
    model_class = getattr(transformers, architectures[0], None) if architectures else None
    model = (model_class or transformers.AutoModel).from_pretrained(path, **kwargs)
    record = getattr(model.config, RECORD_ATTRIBUTE, None)
    if record is None:
        warnings.warn(
            f"{path} records no non-negative head (no config.{RECORD_ATTRIBUTE}); the model is returned "
            "unpatched. Call ncl_ext.patch(model) to add one.",
            stacklevel=2,
        )
        return model
    _attach(model.base_model, record)
    return model


def _load_adapter(path: str, **kwargs: Any) -> nn.Module:
    try:
        from peft import PeftConfig, PeftModel
    except ImportError as error:
        raise ImportError(f"{path} is a PEFT adapter; install peft (pip install 'ncl_ext[hf]')") from error
    hub_kwargs = {key: kwargs[key] for key in _HUB_KWARGS if key in kwargs}
    base_path = PeftConfig.from_pretrained(path, **hub_kwargs).base_model_name_or_path
    if not base_path:
        raise ValueError(
            f"the adapter at {path} names no base model (base_model_name_or_path is empty); load the base "
            "with ncl_ext.from_pretrained(base_path) and then peft.PeftModel.from_pretrained(base, adapter)"
        )
    return PeftModel.from_pretrained(from_pretrained(base_path, **kwargs), path)


# ---------------------------------------------------------------------------------------
# Choosing the targets
# ---------------------------------------------------------------------------------------


def _resolve_targets(model: nn.Module, backbone: nn.Module, target: str | Sequence[str] | None) -> list[dict]:
    """Turn ``target`` into ``[{"module": path in backbone, "fields": [...] or None}, ...]``."""
    if target is None:
        return _default_targets(backbone)
    names = [target] if isinstance(target, str) else target
    if not isinstance(names, Sequence) or not names or not all(isinstance(n, str) and n for n in names):
        raise ValueError(f"target must be None, an output field / submodule name, or a list of them; got {target!r}")
    submodules = dict(backbone.named_modules())
    declared = _declared_output_fields(backbone)
    modules, fields = [], []
    for name in names:
        path = _path_in_backbone(model, backbone, name)
        if path in submodules:
            modules.append(path)
        elif name in declared if declared is not None else name not in dict(model.named_modules()):
            fields.append(name)
        else:
            raise ValueError(_unknown_target_message(model, backbone, name, declared))
    targets = [{"module": "", "fields": list(dict.fromkeys(fields))}] if fields else []
    return targets + [{"module": path, "fields": None} for path in dict.fromkeys(modules)]


def _default_targets(backbone: nn.Module) -> list[dict]:
    name = type(backbone).__name__
    modalities = [m for m in ("image", "text") if callable(getattr(backbone, f"get_{m}_features", None))]
    if modalities:
        for heads in DUAL_ENCODER_HEADS:
            if all(_submodule(backbone, heads[m]) is not None for m in modalities):
                return [{"module": heads[m], "fields": None} for m in modalities]
        raise ValueError(
            f"cannot find the {' and '.join(modalities)} embedding modules of {name} (looked for "
            f"{list(DUAL_ENCODER_HEADS)}); pass target= the submodules whose outputs are the embeddings, "
            f"among {_children(backbone)}"
        )
    projections = [p for p in ("visual_projection", "text_projection") if _submodule(backbone, p) is not None]
    if projections:  # single-tower CLIP models (CLIPVisionModelWithProjection, ...)
        return [{"module": p, "fields": None} for p in projections]
    declared = _declared_output_fields(backbone)
    if getattr(backbone.config, "is_encoder_decoder", False) or (
        declared is not None and "last_hidden_state" not in declared
    ):
        raise ValueError(
            f"{name} has no single embedding output to patch by default (it is not an encoder or a "
            f"CLIP/SigLIP dual encoder); pass target= an output field among {sorted(declared or [])} or a "
            f"submodule among {_children(backbone)} (e.g. target='encoder')"
        )
    if declared is None:
        fields = ["last_hidden_state", *(["pooler_output"] if getattr(backbone, "pooler", None) else [])]
    else:
        fields = [f for f in ENCODER_FIELDS if f in declared]
    return [{"module": "", "fields": fields}]


def _path_in_backbone(model: nn.Module, backbone: nn.Module, name: str) -> str:
    """``name`` relative to the backbone, whether given relative to it or to ``model``."""
    prefixes = [prefix for prefix, module in model.named_modules() if module is backbone and prefix]
    for prefix in prefixes:
        if name == prefix:
            return ""
        if name.startswith(prefix + "."):
            return name[len(prefix) + 1 :]
    return name


def _unknown_target_message(model: nn.Module, backbone: nn.Module, name: str, declared: set[str] | None) -> str:
    outside = name in dict(model.named_modules())
    reason = (
        f"target={name!r} is a submodule outside the backbone model.base_model ({type(backbone).__name__}), "
        "whose outputs are the embeddings"
        if outside
        else f"target={name!r} is neither an output field nor a submodule of {type(backbone).__name__}"
    )
    return (
        f"{reason}; pass an output field among {sorted(declared or [])} or a submodule among "
        f"{_children(backbone)} (dotted paths such as 'encoder.layer.1' also work)"
    )


def _children(module: nn.Module) -> list[str]:
    return [name for name, _ in module.named_children()]


def _submodule(module: nn.Module, path: str) -> nn.Module | None:
    try:
        return module.get_submodule(path)
    except AttributeError:
        return None


def _declared_output_fields(module: nn.Module) -> set[str] | None:
    """Fields of the ModelOutput class(es) ``module.forward`` is annotated to return, or None."""
    return _declared_output_fields_of(type(module))


@functools.cache
def _declared_output_fields_of(module_class: type) -> set[str] | None:
    try:
        returned = typing.get_type_hints(module_class.forward).get("return")
    except Exception:  # annotations that cannot be evaluated at runtime: fields unknown
        return None
    candidates = typing.get_args(returned) or (returned,)
    fields = {name for cls in candidates if isinstance(cls, type) for name in _dataclass_fields(cls)}
    return fields or None


def _dataclass_fields(cls: type) -> set[str]:
    return {field.name for field in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else set()


def _accepts_return_dict(module: nn.Module) -> bool:
    model_class = _pretrained_model_class()
    is_model = model_class is not None and isinstance(module, model_class)
    return is_model or "return_dict" in inspect.signature(module.forward).parameters


# ---------------------------------------------------------------------------------------
# Attaching and detaching heads
# ---------------------------------------------------------------------------------------


def _attach(backbone: nn.Module, record: dict, pending: dict[str, nn.Module] | None = None) -> None:
    """Attach the heads ``record`` describes to the modules of ``backbone`` that lack them.

    ``pending`` maps child names to modules about to be assigned to ``backbone`` (models
    under construction); a target that cannot be found raises unless ``pending`` is given.
    """
    for target in record["targets"]:
        module = _find(backbone, target["module"], pending)
        if module is None:
            if pending is not None:
                continue
            raise ValueError(
                f"the recorded target module {target['module']!r} does not exist in {type(backbone).__name__}; "
                f"its submodules are {_children(backbone)}"
            )
        head = module.__dict__.get(_HEAD_ATTRIBUTE)
        if head is not None and head.nonneg.mode == record["mode"] and head.fields == target["fields"]:
            continue
        if head is not None:
            head.detach(module)
        _ModuleHead(record["mode"], target["fields"]).attach(module)


def _find(backbone: nn.Module, path: str, pending: dict[str, nn.Module] | None) -> nn.Module | None:
    if not path:
        return backbone
    first, _, rest = path.partition(".")
    child = pending.get(first) if pending and first in pending else backbone._modules.get(first)
    if child is None or not rest:
        return child
    return _submodule(child, rest)


def _detach_all(model: nn.Module) -> None:
    for module in model.modules():
        head = module.__dict__.get(_HEAD_ATTRIBUTE)
        if head is not None:
            head.detach(module)


def _same_patch(record: dict, other: dict) -> bool:
    return record["mode"] == other["mode"] and record["targets"] == other["targets"]


# ---------------------------------------------------------------------------------------
# Keeping the head: restore it when a recorded config builds a model, and let it follow
# its module when a wrapper (a PEFT LoRA layer) replaces that module.
# ---------------------------------------------------------------------------------------


def _keep_heads(parent: nn.Module, name: str, submodule: nn.Module | None) -> None:
    """Global module-registration hook: runs before ``parent.<name> = submodule``."""
    replaced = parent._modules.get(name)
    head = None if replaced is None else replaced.__dict__.get(_HEAD_ATTRIBUTE)
    if head is not None and submodule is not replaced:
        head.detach(replaced)
        if submodule is not None:
            _detach_all(submodule)  # heads copied inside the wrapper would apply the map twice
            _ModuleHead(head.nonneg.mode, head.fields).attach(submodule)
    model_class = _pretrained_model_class()
    record = getattr(parent.__dict__.get("config"), RECORD_ATTRIBUTE, None)
    if submodule is not None and record is not None and model_class is not None and isinstance(parent, model_class):
        _restore_during_construction(parent, name, submodule, record)


def _restore_during_construction(model: nn.Module, name: str, submodule: nn.Module, record: dict) -> None:
    """Attach the recorded head to a model being built, as soon as its target modules exist."""
    if name == model.base_model_prefix:  # a task model receiving its backbone
        _attach(submodule, record, pending={})
        return
    backbone = model._modules.get(model.base_model_prefix, model)
    if backbone is model:
        declared = _declared_output_fields(model)
        field_targets = [t for t in record["targets"] if t["fields"]]
        if declared is not None and any(not set(t["fields"]) <= declared for t in field_targets):
            return  # a task model whose backbone is not assigned yet
    _attach(backbone, record, pending={name: submodule} if backbone is model else {})


def _pretrained_model_class() -> type | None:
    """``transformers.PreTrainedModel`` if transformers is loaded (no model exists otherwise)."""
    modeling_utils = sys.modules.get("transformers.modeling_utils")
    return getattr(modeling_utils, "PreTrainedModel", None)


# Installed once, when this module is first imported; it only acts on modules that carry a
# head or on transformers models whose config records one.
_KEEP_HEADS_HANDLE = register_module_module_registration_hook(_keep_heads)


# ---------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------


def _import_transformers() -> ModuleType:
    try:
        import transformers
    except ImportError as error:
        raise ImportError("ncl_ext.patch needs transformers: pip install 'ncl_ext[hf]'") from error
    return transformers


def _transformers_model(model: nn.Module) -> PreTrainedModel:
    """The ``PreTrainedModel`` inside ``model`` (itself, or the base of a PEFT model)."""
    transformers = _import_transformers()
    inner = model.get_base_model() if callable(getattr(model, "get_base_model", None)) else model
    if not isinstance(inner, transformers.PreTrainedModel):
        raise ValueError(
            f"model must be a transformers PreTrainedModel (or a PEFT model wrapping one), got "
            f"{type(model).__name__}; for any other torch module use ncl_ext.make_nonneg(model, mode=...)"
        )
    return inner
