"""Where :func:`ncl_ext.patch` puts the non-negative head of a HuggingFace model.

A target is ``{"module": path in the transformers model, "fields": [...] or None}``:
``fields=None`` maps the module's whole output, a list maps those fields of the
``ModelOutput`` it returns. :func:`resolve_targets` turns ``patch``'s ``target=``
argument (or ``None``: chosen by architecture) into that list, reading the output
fields a module declares from the return annotation of its ``forward``.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

#: The output fields of an encoder that carry its embeddings.
ENCODER_FIELDS = ("last_hidden_state", "pooler_output")
#: Modalities of a multi-tower model, found by its ``get_<modality>_features`` methods.
MODALITIES = ("image", "text", "audio", "video")
#: Dual encoders: the modules whose outputs are the embeddings, per family; first match wins.
DUAL_ENCODER_HEADS = (
    # CLIP, AltCLIP, Chinese-CLIP, MetaCLIP 2, CLAP, ...
    {"image": "visual_projection", "text": "text_projection", "audio": "audio_projection"},
    {"image": "vision_model.head", "text": "text_model.head"},  # SigLIP, SigLIP 2
)
#: Single towers with a projection (CLIPVisionModelWithProjection, ...): their embedding modules.
TOWER_PROJECTIONS = ("visual_projection", "text_projection")


def resolve_targets(model: nn.Module, transformers_model: nn.Module, target: str | Sequence[str] | None) -> list[dict]:
    """The targets of ``patch(model, target=...)``: chosen by architecture for ``None``, else
    one per module that owns named output fields (the backbone is preferred over the model),
    then one per named submodule. ``transformers_model`` is ``model`` or the model a PEFT
    wrapper holds.
    """
    if target is None:
        return _default_targets(transformers_model)
    names = [target] if isinstance(target, str) else target
    if not isinstance(names, Sequence) or not names or not all(isinstance(n, str) and n for n in names):
        raise ValueError(f"target must be None, an output field / submodule name, or a list of them; got {target!r}")
    modules: list[str] = []
    fields: dict[str, list[str]] = {}
    for name in names:
        path = _module_path(model, transformers_model, name)
        if path is not None:
            modules.append(path)
        else:
            fields.setdefault(_field_owner(transformers_model, name), []).append(name)
    field_targets = [{"module": path, "fields": list(dict.fromkeys(owned))} for path, owned in fields.items()]
    return field_targets + [{"module": path, "fields": None} for path in dict.fromkeys(modules)]


def _default_targets(model: nn.Module) -> list[dict]:
    name = type(model).__name__
    if getattr(model.config, "is_encoder_decoder", False):
        raise ValueError(
            f"{name} is an encoder-decoder model: it has no single embedding output to patch by default; pass "
            f"target= a submodule among {child_names(model.base_model)} (e.g. target='encoder') or an output field"
        )
    if model.can_generate() or _is_decoder_only(model.config):
        raise ValueError(
            f"{name} is a language model: by default the head would sit on the hidden states its language "
            "model head reads, not on an embedding; pass target= what to make non-negative, e.g. "
            "target='last_hidden_state' when you pool the hidden states into an embedding yourself"
        )
    base = base_path(model)
    for root in dict.fromkeys(["", base]):  # the model itself, then its backbone (CLIPSeg, ...)
        targets = _dual_encoder_targets(model, root)
        if targets:
            return targets
    projections = [path for path in TOWER_PROJECTIONS if path in model._modules]
    if projections:
        return [{"module": path, "fields": None} for path in projections]
    declared = output_fields(model.base_model)
    if declared is not None and "last_hidden_state" not in declared:
        raise ValueError(
            f"{name} has no single embedding output to patch by default (it is neither an encoder nor a "
            f"CLIP/SigLIP dual encoder); pass target= an output field among {_tensor_fields(declared)} or a "
            f"submodule among {child_names(model.base_model)}"
        )
    if declared is None:
        fields = ["last_hidden_state", *(["pooler_output"] if getattr(model.base_model, "pooler", None) else [])]
    else:
        fields = [field for field in ENCODER_FIELDS if field in declared]
    return [{"module": base, "fields": fields}]


def _dual_encoder_targets(model: nn.Module, root: str) -> list[dict]:
    """The embedding modules of the multi-tower model at ``root``; [] if it is not one."""
    tower_model = model.get_submodule(root)
    modalities = [m for m in MODALITIES if callable(getattr(tower_model, f"get_{m}_features", None))]
    if not modalities:
        return []
    for heads in DUAL_ENCODER_HEADS:
        paths = [join_path(root, heads[m]) for m in modalities if m in heads]
        if len(paths) == len(modalities) and all(find_submodule(model, path) is not None for path in paths):
            return [{"module": path, "fields": None} for path in paths]
    raise ValueError(
        f"cannot find the {' and '.join(modalities)} embedding modules of {type(tower_model).__name__} (looked "
        f"for {list(DUAL_ENCODER_HEADS)}); pass target= the submodules whose outputs are the embeddings, among "
        f"{child_names(tower_model)}"
    )


def _is_decoder_only(config: Any) -> bool:
    """A model type with a causal language model but no masked one: a decoder (GPT-2, Llama, ...)."""
    from transformers.models.auto import modeling_auto

    model_type = getattr(config, "model_type", None)
    return (
        model_type in modeling_auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
        and model_type not in modeling_auto.MODEL_FOR_MASKED_LM_MAPPING_NAMES
    )


def _module_path(model: nn.Module, transformers_model: nn.Module, name: str) -> str | None:
    """The path in ``transformers_model`` of the submodule ``name`` names, or None.

    ``name`` may be given relative to the transformers model, to its backbone, or to a
    wrapper around it (a PEFT model: ``"base_model.model.bert.pooler"``).
    """
    candidates = [name, join_path(base_path(transformers_model), name)]
    for prefix, module in model.named_modules():
        if module is transformers_model and prefix and name.startswith(prefix + "."):
            candidates.append(name[len(prefix) + 1 :])
    modules = dict(transformers_model.named_modules())
    return next((path for path in candidates if path in modules), None)


def _field_owner(model: nn.Module, name: str) -> str:
    """The path of the module whose output has the tensor field ``name``: the backbone, else the model."""
    base = base_path(model)
    owners = [(base, output_fields(model.base_model)), ("", output_fields(model))]
    for path, declared in owners:
        if declared is None and path == base:
            return base  # unknown output fields: checked when the model runs
        if declared is not None and name in declared:
            if not declared[name]:
                owner = type(model.get_submodule(path)).__name__
                raise ValueError(
                    f"target={name!r} is not a tensor field of the output of {owner} (it holds a tuple or "
                    f"another object); pass a tensor field among {_tensor_fields(declared)} or a submodule"
                )
            return path
    declared = owners[0][1] or {}
    raise ValueError(
        f"target={name!r} is neither a tensor output field nor a submodule of {type(model).__name__}; pass an "
        f"output field among {_tensor_fields(declared)} or a submodule among {child_names(model.base_model)} "
        "(dotted paths such as 'encoder.layer.1' also work)"
    )


def base_path(model: nn.Module, pending: Mapping[str, nn.Module] | None = None) -> str:
    """The path of ``model.base_model`` in ``model`` ("" when the model is its own backbone)."""
    prefix = getattr(model, "base_model_prefix", "")
    return prefix if prefix and (prefix in model._modules or prefix in (pending or {})) else ""


def join_path(*parts: str) -> str:
    return ".".join(part for part in parts if part)


def child_names(module: nn.Module) -> list[str]:
    return [name for name, _ in module.named_children()]


def find_submodule(module: nn.Module, path: str) -> nn.Module | None:
    try:
        return module.get_submodule(path)
    except AttributeError:
        return None


def _tensor_fields(declared: Mapping[str, bool]) -> list[str]:
    return sorted(field for field, is_tensor in declared.items() if is_tensor)


def output_fields(module: nn.Module) -> dict[str, bool] | None:
    """Fields of the ModelOutput(s) ``module.forward`` is annotated to return, each with
    whether it holds a tensor; None when the annotation names none."""
    return _output_fields_of(type(module))


@functools.cache
def _output_fields_of(module_class: type) -> dict[str, bool] | None:
    try:
        returned = typing.get_type_hints(module_class.forward).get("return")
    except Exception:  # annotations that cannot be evaluated at runtime: fields unknown
        return None
    fields: dict[str, bool] = {}
    for output_class in _union_members(returned):
        if isinstance(output_class, type) and dataclasses.is_dataclass(output_class):
            for name, is_tensor in _field_kinds(output_class).items():
                fields[name] = fields.get(name, False) or is_tensor
    return fields or None


def _field_kinds(output_class: type) -> dict[str, bool]:
    try:
        hints = typing.get_type_hints(output_class)
    except Exception:  # unknown field types: assume tensors, checked when the model runs
        return dict.fromkeys(dataclass_fields(output_class), True)
    return {name: _is_tensor_type(hints.get(name)) for name in dataclass_fields(output_class)}


def _is_tensor_type(hint: Any) -> bool:
    members = [m for m in _union_members(hint) if m is not type(None)]
    return bool(members) and all(isinstance(m, type) and _is_tensor_class(m) for m in members)


def _is_tensor_class(cls: type) -> bool:
    # torch.FloatTensor and the other legacy types (transformers 4.x annotations) are no subclasses of Tensor
    return issubclass(cls, torch.Tensor) or (cls.__module__ == "torch" and cls.__name__.endswith("Tensor"))


def _union_members(hint: Any) -> tuple:
    is_union = typing.get_origin(hint) is typing.Union or isinstance(hint, types.UnionType)
    return typing.get_args(hint) if is_union else (hint,)


def dataclass_fields(cls: type) -> set[str]:
    return {field.name for field in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else set()
