"""Patch any HuggingFace ``transformers`` model with a non-negative output head.

Non-negative Contrastive Learning (Wang, Zhang, Guo, Wang, ICLR 2024,
https://arxiv.org/abs/2403.12459) only needs a non-negative map on the embedding a
model already produces. :func:`patch` adds it to a ``PreTrainedModel`` in place, with
forward hooks (nothing in ``transformers`` is edited):

- encoders (BERT, RoBERTa, DistilBERT, ModernBERT, ViT, SigLIP towers, ...): the
  backbone's ``last_hidden_state`` and ``pooler_output``, so task heads built on the
  backbone (``BertForSequenceClassification``, ``ViTForImageClassification``) see them too;
- dual encoders (CLIP, SigLIP, SigLIP 2, AltCLIP, Chinese-CLIP, CLAP): the modules whose
  outputs are the embeddings, hence ``get_image_features`` / ``get_text_features`` (a
  tensor in transformers 4.x, an output whose ``pooler_output`` is the embedding in 5.x)
  and ``forward``'s ``image_embeds`` / ``text_embeds``;
- single CLIP towers with a projection (``CLIPVisionModelWithProjection``,
  ``CLIPTextModelWithProjection``): the projection, hence ``image_embeds`` / ``text_embeds``.

Language models (GPT-2, Llama, any model with a generation head) and encoder-decoders
have no single embedding output: patching them needs an explicit ``target=``.

The patch is recorded in the model's config as ``config.ncl_nonneg`` (mode, targets, the
path of the backbone, version), so ``save_pretrained`` stores it and :func:`from_pretrained`
rebuilds the model with its head. The model gets its own copy of its config first: other models built from
the same config object stay unpatched. The head follows its module when a wrapper
replaces it (PEFT/LoRA layers), so it survives ``get_peft_model``. Importing ``ncl_ext``
installs no hook anywhere: the one process-wide hook that lets heads follow their modules
is installed by the first head created, and the restoring of heads by every loader
(``AutoModel.from_pretrained``, ``from_config``) is opt-in: :func:`enable_auto_restore`.

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
    >>> hasattr(config, "ncl_nonneg")      # the config the model was built from is untouched
    False
"""

from __future__ import annotations

import copy
import inspect
import os
import sys
import threading
import types
import warnings
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar, overload

import torch
from torch import nn
from torch.nn.modules.module import register_module_module_registration_hook

from ncl_ext import __version__
from ncl_ext.adapters._hf_targets import (
    ENCODER_FIELDS,
    base_path,
    child_names,
    dataclass_fields,
    find_submodule,
    join_path,
    output_fields,
    resolve_targets,
)
from ncl_ext.nonneg import NonNegative, check_mode, select_output

if TYPE_CHECKING:
    from peft import PeftModel
    from transformers import PretrainedConfig, PreTrainedModel

__all__ = ["RECORD_ATTRIBUTE", "enable_auto_restore", "from_pretrained", "patch", "unpatch"]

#: A torch module whose class :func:`patch`, :func:`unpatch` and :func:`from_pretrained` preserve.
ModelT = TypeVar("ModelT", bound=nn.Module)

#: Name of the ``model.config`` attribute that records the patch (saved in config.json).
RECORD_ATTRIBUTE = "ncl_nonneg"
# The attribute of a hooked module that holds its head (and the hook handles).
_HEAD_ATTRIBUTE = "_ncl_nonneg_head"
# The hub arguments of from_pretrained that config / adapter look-ups also accept.
_HUB_KWARGS = ("cache_dir", "force_download", "proxies", "token", "revision", "local_files_only", "subfolder")


class _ModuleHead:
    """The non-negative head of one module: forward hooks mapping (fields of) its output.

    ``fields=None``: a Tensor output is mapped, a ``ModelOutput`` has its
    ``last_hidden_state`` and ``pooler_output`` (``ENCODER_FIELDS``) mapped. ``fields=[...]``:
    those fields of a ``ModelOutput`` are mapped; the module is asked for a ``ModelOutput``
    even when the caller wants a tuple (``return_dict=False``), which is rebuilt afterwards
    with ``to_tuple()``.
    """

    def __init__(self, mode: str, fields: list[str] | None) -> None:
        self.nonneg = NonNegative(mode)
        self.fields = fields
        self.handles: list[torch.utils.hooks.RemovableHandle] = []
        self.asks_for_model_output = False
        self._tuple_requests = threading.local()
        _install_registration_hook()  # so that this head follows its module into a wrapper

    def matches(self, mode: str, fields: list[str] | None) -> bool:
        return self.nonneg.mode == mode and self.fields == fields

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
                if output.get(key) is None and key in dataclass_fields(type(output)):
                    continue  # a declared field this call did not compute (e.g. no pooling layer)
                output[key] = self.nonneg(select_output(output, key))
            return output
        if isinstance(output, (tuple, list)) and self.fields is None and output:
            return type(output)([self.nonneg(select_output(output, 0)), *output[1:]])
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
        _install_registration_hook()  # a head unpickled in a fresh process follows its module too


def patch(model: ModelT, mode: str = "relu", target: str | Sequence[str] | None = None) -> ModelT:
    """Make a HuggingFace model's embedding outputs non-negative, in place; returns ``model``.

    Args:
        model: a ``transformers.PreTrainedModel``, or a PEFT model wrapping one.
        mode: the non-negative map (``relu``, ``rep_relu``, ``softplus``, ...; see
            :func:`ncl_ext.nonneg`).
        target: ``None`` chooses by architecture: encoders get ``last_hidden_state`` and
            ``pooler_output`` of ``model.base_model``; CLIP / SigLIP / CLAP models and
            CLIP towers with a projection get the modules whose outputs are their
            embeddings (``visual_projection``, ``vision_model.head``, ...). Otherwise a
            tensor field of the output of ``model.base_model`` (``"pooler_output"``) or of
            ``model``, a submodule (``"visual_projection"``, ``"bert.pooler"``; names
            relative to ``model.base_model`` work too), or a list of them.

    Raises:
        ValueError: ``target=None`` on a model without a single embedding output (a
            language model such as GPT-2, an encoder-decoder such as T5); a target that
            is neither a submodule nor a tensor field (``"hidden_states"`` is a tuple);
            a model already patched differently.

    Patching again with the same arguments is a no-op; use :func:`unpatch` to remove it.
    The patch is recorded in ``model.config.ncl_nonneg`` and so saved by
    ``save_pretrained``; ``model`` first gets its own copy of its config, so other models
    built from the same config object are not patched (nor saved as patched).

    The head is made of forward hooks, so it acts when the model is called
    (``model(...)``, ``get_image_features(...)``), not when ``model.forward(...)`` is
    called directly, as the ``Transformer`` module of sentence-transformers 6 does: for a
    ``SentenceTransformer`` use :func:`ncl_ext.adapters.text.add_nonneg_head`.

    Only the targeted outputs change: with ``output_hidden_states=True``,
    ``hidden_states`` still holds each layer's own (signed) output, so
    ``hidden_states[-1]`` differs from the non-negative ``last_hidden_state``, as it
    already does in models whose last layer is followed by a norm (ViT). Read the
    embedding from ``last_hidden_state`` / ``pooler_output``.

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
    record = {
        "mode": mode,
        "targets": resolve_targets(model, transformers_model, target),
        # where the backbone sits: a model of another class sharing it can place the head too
        "base_model": base_path(transformers_model),
        "version": __version__,
    }
    existing = getattr(transformers_model.config, RECORD_ATTRIBUTE, None)
    existing = None if existing is None else _checked_record(existing)
    if existing is not None and _same_patch(transformers_model, existing, record):
        _attach(transformers_model, existing)  # no-op unless the model lacks the recorded head
        return model
    if existing is not None and _carries_heads(model):
        raise ValueError(
            f"the model is already patched with mode={existing['mode']!r}, targets={existing['targets']}; "
            "call ncl_ext.unpatch(model) before patching it differently"
        )
    if existing is not None:
        warnings.warn(
            f"model.config records a non-negative head (mode={existing['mode']!r}, targets={existing['targets']}) "
            "that the model does not carry; replacing that record with the patch asked for",
            stacklevel=2,
        )
    _detach_all(model)
    _attach(transformers_model, record)
    setattr(_own_config(model, transformers_model), RECORD_ATTRIBUTE, record)
    return model


def unpatch(model: ModelT) -> ModelT:
    """Remove the non-negative head added by :func:`patch` (and its config record); returns ``model``.

    Like :func:`patch`, it edits only ``model``'s own copy of its config.

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
        delattr(_own_config(model, transformers_model), RECORD_ATTRIBUTE)
    return model


@overload
def from_pretrained(path: str | os.PathLike, model_class: type[ModelT], **kwargs: Any) -> ModelT: ...
@overload
def from_pretrained(
    path: str | os.PathLike, model_class: type | None = None, **kwargs: Any
) -> PreTrainedModel | PeftModel: ...
def from_pretrained(path: str | os.PathLike, model_class: type | None = None, **kwargs: Any) -> nn.Module:
    """Load a checkpoint saved from a patched model, with its non-negative head.

    Args:
        path: a model folder written by ``save_pretrained`` (or a hub model id).
        model_class: the class to build (``transformers.BertModel``, ``AutoModel``, ...);
            ``None`` builds the architecture named in ``config.architectures``
            (``AutoModel`` when that class is unknown). A different class than the saved
            one works when the recorded head lies in the shared backbone (the
            ``BertModel`` of a ``BertForSequenceClassification`` checkpoint).
        kwargs: passed to the ``from_pretrained`` of ``transformers`` (``dtype``,
            ``revision``, ...).

    The head recorded in ``config.ncl_nonneg`` is then applied (a warning says when
    there is none). A PEFT adapter folder loads its base model this way, then the adapter
    on top (the head is recorded in the base model's config) and returns the
    ``PeftModel``; ``model_class`` is refused there.

    Raises:
        FileNotFoundError: ``path`` is neither a folder nor a model id that can be loaded.
        ValueError: ``model_class`` is not a model class; the recorded head has no place
            in the model built.

    Examples:
        >>> import tempfile
        >>> from transformers import BertConfig, BertForSequenceClassification, BertModel
        >>> config = BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=1,
        ...                     num_attention_heads=2, intermediate_size=37)
        >>> classifier = patch(BertForSequenceClassification(config))
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     classifier.save_pretrained(folder)
        ...     same = from_pretrained(folder)
        ...     backbone = from_pretrained(folder, model_class=BertModel)
        >>> type(same).__name__, type(backbone).__name__
        ('BertForSequenceClassification', 'BertModel')
        >>> bool((backbone(input_ids=torch.tensor([[1, 5, 7]])).last_hidden_state >= 0).all())
        True
    """
    if model_class is not None and not (isinstance(model_class, type) and hasattr(model_class, "from_pretrained")):
        raise ValueError(
            f"model_class must be a transformers model class (e.g. transformers.BertModel or AutoModel), "
            f"got {model_class!r}"
        )
    transformers = _import_transformers()
    given, path = path, os.fspath(path)
    if not os.path.exists(path) and _names_a_local_path(given):
        raise FileNotFoundError(f"path={path!r} does not exist; pass the folder written by save_pretrained")
    is_adapter, architectures = _read_checkpoint(path, kwargs)
    if is_adapter:
        if model_class is not None:
            raise ValueError(
                f"{path} is a PEFT adapter: model_class applies to a full checkpoint; load the base with "
                "ncl_ext.from_pretrained(base_path, model_class=...), then peft.PeftModel.from_pretrained(base, path)"
            )
        return _load_adapter(path, **kwargs)
    named_class = getattr(transformers, architectures[0], None) if architectures else None
    model = (model_class or named_class or transformers.AutoModel).from_pretrained(path, **kwargs)
    record = getattr(model.config, RECORD_ATTRIBUTE, None)
    if record is None:
        warnings.warn(
            f"{path} records no non-negative head (no config.{RECORD_ATTRIBUTE}); the model is returned "
            "unpatched. Call ncl_ext.patch(model) to add one.",
            stacklevel=2,
        )
        return model
    _attach(model, _checked_record(record))
    return model


def enable_auto_restore(enabled: bool = True) -> None:
    """Let every transformers loader restore a recorded head, not only :func:`from_pretrained`.

    Off by default. Once on (for the whole process, until ``enable_auto_restore(False)``),
    every ``PreTrainedModel`` built from a config that records a patch gets its head
    while it is built, whichever loader builds it: ``AutoModel.from_pretrained(folder)``
    (also the bare backbone of a patched classifier), ``from_config``, a constructor, or
    a library that loads through them (a ``pipeline``). With it off,
    those loaders return the model without its head, although its config still
    records one: ``ncl_ext.patch(model)`` (same arguments) or :func:`from_pretrained`
    puts it back.

    Examples:
        >>> import tempfile
        >>> from transformers import AutoModel, BertConfig, BertModel
        >>> config = BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=1,
        ...                     num_attention_heads=2, intermediate_size=37)
        >>> enable_auto_restore()
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     patch(BertModel(config)).save_pretrained(folder)
        ...     loaded = AutoModel.from_pretrained(folder)
        >>> enable_auto_restore(False)
        >>> bool((loaded(input_ids=torch.tensor([[1, 5, 7]])).pooler_output >= 0).all())
        True
    """
    global _auto_restore
    if not isinstance(enabled, bool):
        raise ValueError(f"enabled must be True or False, got {enabled!r}")
    _auto_restore = enabled
    if enabled:
        _install_registration_hook()


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


def _read_checkpoint(path: str, kwargs: dict[str, Any]) -> tuple[bool, list[str]]:
    """Whether ``path`` holds a PEFT adapter, and the architectures its config names.

    A ``path`` that exists neither locally nor as a loadable model id raises a
    FileNotFoundError instead of the hub's error about repository ids.
    """
    transformers = _import_transformers()
    hub_kwargs = {key: kwargs[key] for key in _HUB_KWARGS if key in kwargs}
    try:
        if transformers.utils.find_adapter_config_file(path, **hub_kwargs) is not None:
            return True, []
        if "config" in kwargs:
            return False, getattr(kwargs["config"], "architectures", None) or []
        # the raw config.json: AutoConfig does not know every config class (SiglipTextConfig in 4.x)
        config_dict = transformers.PretrainedConfig.get_config_dict(path, **hub_kwargs)[0]
        return False, config_dict.get("architectures") or []
    except OSError as error:
        if os.path.exists(path):
            raise
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise FileNotFoundError(
            f"path={path!r} is neither a local folder nor a model id that could be loaded ({reason})"
        ) from error


def _names_a_local_path(path: str | os.PathLike) -> bool:
    """Whether ``path`` can only mean a local path (not a hub model id)."""
    if isinstance(path, os.PathLike) or os.path.isabs(path) or path.startswith((".", "~")):
        return True
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(path)
    except HFValidationError:
        return True
    return False


# ---------------------------------------------------------------------------------------
# Placing, attaching and detaching heads
# ---------------------------------------------------------------------------------------


def _attach(model: nn.Module, record: dict, pending: Mapping[str, nn.Module] | None = None) -> None:
    """Attach the heads ``record`` describes to the modules of ``model`` that lack them.

    ``pending`` maps child names to modules about to be assigned to ``model`` (a model
    being built); a target that cannot be placed raises unless ``pending`` is given.
    """
    for target in record["targets"]:
        module = _locate(model, record, target, pending)
        if module is None:
            if pending is not None:
                continue
            raise ValueError(
                f"the recorded target module {target['module']!r} (fields {target['fields']}) has no place in "
                f"{type(model).__name__}; its submodules are {child_names(model)}"
            )
        head = module.__dict__.get(_HEAD_ATTRIBUTE)
        if head is not None and head.matches(record["mode"], target["fields"]):
            continue
        if head is not None:
            head.detach(module)
        _ModuleHead(record["mode"], target["fields"]).attach(module)


def _locate(model: nn.Module, record: dict, target: dict, pending: Mapping[str, nn.Module] | None) -> nn.Module | None:
    """The module of ``model`` that ``target`` names: at the recorded path, or at the same
    place in ``model``'s backbone when the recorded path lies in the saved model's backbone."""
    path, saved_base = target["module"], record.get("base_model", "")
    candidates = [path]
    if not saved_base or path == saved_base or path.startswith(saved_base + "."):
        candidates.append(join_path(base_path(model, pending), path[len(saved_base) :].lstrip(".")))
    for candidate in dict.fromkeys(candidates):
        module = _find(model, candidate, pending)
        if module is not None and _produces(module, target["fields"]):
            return module
    return None


def _produces(module: nn.Module, fields: list[str] | None) -> bool:
    declared = None if fields is None else output_fields(module)
    return declared is None or set(fields) <= declared.keys()


def _find(model: nn.Module, path: str, pending: Mapping[str, nn.Module] | None) -> nn.Module | None:
    if not path:
        return model
    first, _, rest = path.partition(".")
    child = pending[first] if pending and first in pending else model._modules.get(first)
    if child is None or not rest:
        return child
    return find_submodule(child, rest)


def _detach_all(model: nn.Module) -> None:
    for module in model.modules():
        head = module.__dict__.get(_HEAD_ATTRIBUTE)
        if head is not None:
            head.detach(module)


def _carries_heads(model: nn.Module) -> bool:
    return any(_HEAD_ATTRIBUTE in module.__dict__ for module in model.modules())


def _same_patch(model: nn.Module, record: dict, other: dict) -> bool:
    """Whether both records put the same heads on the same modules of ``model``."""
    placements = _placements(model, record)
    return record["mode"] == other["mode"] and placements is not None and placements == _placements(model, other)


def _placements(model: nn.Module, record: dict) -> set[tuple[int, tuple[str, ...] | None]] | None:
    placed = set()
    for target in record["targets"]:
        module = _locate(model, record, target, None)
        if module is None:
            return None
        placed.add((id(module), None if target["fields"] is None else tuple(target["fields"])))
    return placed


def _checked_record(record: Any) -> dict:
    """``record`` if it has the shape :func:`patch` writes, else a ValueError naming the problem."""
    targets = record.get("targets") if isinstance(record, Mapping) else None
    well_formed = isinstance(targets, list) and all(
        isinstance(t, Mapping) and isinstance(t.get("module"), str) and _is_field_list(t.get("fields")) for t in targets
    )
    if not well_formed or not isinstance(record.get("base_model", ""), str):
        raise ValueError(
            f"config.{RECORD_ATTRIBUTE} is malformed: expected {{'mode': ..., 'targets': [{{'module': str, "
            f"'fields': [str] or None}}, ...], 'base_model': str}}, got {record!r}"
        )
    check_mode(record.get("mode"), argument=f"config.{RECORD_ATTRIBUTE}['mode']")
    return dict(record)


def _is_field_list(fields: Any) -> bool:
    return fields is None or (isinstance(fields, list) and all(isinstance(field, str) for field in fields))


def _own_config(model: nn.Module, transformers_model: nn.Module) -> PretrainedConfig:
    """Give ``transformers_model`` a private copy of its config, and return it.

    Every module of ``model`` that held the config (or one of its sub-configs) gets the
    copy's counterpart, so the model stays consistent while models built from the same
    config object keep theirs untouched.
    """
    config_class = _import_transformers().PretrainedConfig
    copies: dict[int, Any] = {}  # deepcopy's memo: id(original object) -> its copy
    config = copy.deepcopy(transformers_model.config, copies)
    for module in model.modules():
        for name, value in list(vars(module).items()):
            if isinstance(value, config_class) and id(value) in copies:
                setattr(module, name, copies[id(value)])
    return config


# ---------------------------------------------------------------------------------------
# Keeping the head. One process-wide module-registration hook, installed by the first
# head created (never at import): a head follows its module when a wrapper (a PEFT LoRA
# layer) replaces that module, and, once enable_auto_restore() is called, a model being
# built from a config that records a patch gets its heads as its modules are assigned.
# ---------------------------------------------------------------------------------------

_auto_restore = False
_registration_hook: torch.utils.hooks.RemovableHandle | None = None
_registration_lock = threading.Lock()


def _install_registration_hook() -> None:
    global _registration_hook
    with _registration_lock:
        if _registration_hook is None:
            _registration_hook = register_module_module_registration_hook(_keep_heads)


def _keep_heads(parent: nn.Module, name: str, submodule: nn.Module | None) -> None:
    """Runs before ``parent.<name> = submodule``, for every module of the process."""
    replaced = parent._modules.get(name)
    head = None if replaced is None else replaced.__dict__.get(_HEAD_ATTRIBUTE)
    if head is not None and submodule is not replaced:
        head.detach(replaced)
        if submodule is not None:
            _detach_all(submodule)  # heads copied inside the wrapper would apply the map twice
            _ModuleHead(head.nonneg.mode, head.fields).attach(submodule)
    if _auto_restore and submodule is not None:
        model_class = _pretrained_model_class()
        record = getattr(parent.__dict__.get("config"), RECORD_ATTRIBUTE, None)
        if record is not None and model_class is not None and isinstance(parent, model_class):
            _attach(parent, _checked_record(record), pending={name: submodule})


# ---------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------


def _pretrained_model_class() -> type | None:
    """``transformers.PreTrainedModel`` if transformers is loaded (no model exists otherwise)."""
    modeling_utils = sys.modules.get("transformers.modeling_utils")
    return getattr(modeling_utils, "PreTrainedModel", None)


def _accepts_return_dict(module: nn.Module) -> bool:
    model_class = _pretrained_model_class()
    is_model = model_class is not None and isinstance(module, model_class)
    return is_model or "return_dict" in inspect.signature(module.forward).parameters


def _import_transformers() -> types.ModuleType:
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
