"""The non-negative output head: the one-line trick of Non-negative Contrastive Learning.

Wang, Zhang, Guo, Wang, "Non-negative Contrastive Learning", ICLR 2024
(https://arxiv.org/abs/2403.12459): applying a non-negative map to a contrastive
model's output features turns the loss into a non-negative matrix factorisation, whose
solutions are unique up to permutation, so the features become sparse and each
dimension tends to fire for one latent class.

Examples:
    >>> import torch, ncl_ext
    >>> z = torch.randn(4, 8)
    >>> bool((ncl_ext.nonneg(z, "relu") >= 0).all())
    True
    >>> head = ncl_ext.NonNegative("rep_relu")      # ReLU forward, GELU gradient
    >>> model = ncl_ext.make_nonneg(torch.nn.Linear(16, 8), mode="relu")
    >>> bool((model(torch.randn(2, 16)) >= 0).all())
    True
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "MODES",
    "NON_NEGATIVE_MODES",
    "NonNegative",
    "NonNegativeWrapper",
    "check_mode",
    "make_nonneg",
    "nonneg",
    "rep_relu",
    "select_output",
]


class _RepReLU(torch.autograd.Function):
    """ReLU in the forward pass, GELU's derivative in the backward pass.

    A re-parameterised ReLU: outputs are exactly ReLU's (so exactly sparse), but the
    gradient ``Phi(x) + x * phi(x)`` is non-zero for negative inputs, so units that
    went dead can come back. The official NCL code uses it by default on CIFAR.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return x.clamp_min(0)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        cdf = 0.5 * (1.0 + torch.erf(x * (1.0 / math.sqrt(2.0))))
        pdf = torch.exp(-0.5 * x * x) * (1.0 / math.sqrt(2.0 * math.pi))
        return grad_output * (cdf + x * pdf)


def rep_relu(x: torch.Tensor) -> torch.Tensor:
    """ReLU forward, GELU gradient backward (see :class:`_RepReLU`)."""
    return _RepReLU.apply(x)


_MODE_FUNCTIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "relu": F.relu,
    "rep_relu": rep_relu,
    "softplus": F.softplus,
    "sigmoid": torch.sigmoid,
    "exp": torch.exp,
    "identity": lambda z: z,
    # Ablations only: these can be negative, so they are NOT non-negative heads.
    "gelu": F.gelu,
    "leaky_relu": F.leaky_relu,
}

#: Every mode accepted by :func:`nonneg` and :class:`NonNegative`.
MODES: tuple[str, ...] = tuple(_MODE_FUNCTIONS)
#: The modes whose output is guaranteed >= 0 (``identity``, ``gelu`` and ``leaky_relu`` are not).
NON_NEGATIVE_MODES: tuple[str, ...] = ("relu", "rep_relu", "softplus", "sigmoid", "exp")


def check_mode(mode: str | None, argument: str = "mode", allow_none: bool = False) -> str | None:
    """Return ``mode`` if valid, else raise a ValueError naming ``argument`` and the valid modes."""
    if mode is None and allow_none:
        return None
    if not isinstance(mode, str) or mode not in _MODE_FUNCTIONS:
        valid = ", ".join(repr(m) for m in MODES)
        none_hint = " or None (plain contrastive learning)" if allow_none else ""
        raise ValueError(f"{argument}={mode!r} is not a known mode; expected one of {valid}{none_hint}")
    return mode


def nonneg(z: torch.Tensor, mode: str | None = "relu") -> torch.Tensor:
    """Apply the non-negative map ``mode`` to ``z`` (``None`` returns ``z`` unchanged).

    Modes: ``relu`` (the paper's default), ``rep_relu`` (ReLU forward, GELU gradient),
    ``softplus``, ``sigmoid``, ``exp``, ``identity``; ``gelu`` and ``leaky_relu`` are
    ablations that are **not** non-negative (the paper finds them much worse).

    Examples:
        >>> nonneg(torch.tensor([-1.0, 0.5]), "relu")
        tensor([0.0000, 0.5000])
    """
    if check_mode(mode, allow_none=True) is None:
        return z
    return _MODE_FUNCTIONS[mode](z)


class NonNegative(nn.Module):
    """The non-negative output head ``z -> mode(z)`` as a module (no parameters).

    Args:
        mode: one of :data:`MODES`; see :func:`nonneg`.

    Examples:
        >>> head = NonNegative("relu")
        >>> head(torch.tensor([[-2.0, 3.0]]))
        tensor([[0., 3.]])
    """

    def __init__(self, mode: str = "relu") -> None:
        super().__init__()
        self.mode = check_mode(mode)

    @property
    def is_non_negative(self) -> bool:
        """Whether this mode guarantees outputs >= 0."""
        return self.mode in NON_NEGATIVE_MODES

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return _MODE_FUNCTIONS[self.mode](z)

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}"


OutputField = int | str | Sequence[int | str] | None


class NonNegativeWrapper(nn.Module):
    """Wraps a model so that (chosen fields of) its output pass through :class:`NonNegative`.

    Built by :func:`make_nonneg`. The wrapped model is ``self.model`` and the head is
    ``self.head``, so ``state_dict`` keys are the original keys prefixed by ``model.``.
    """

    def __init__(self, model: nn.Module, mode: str = "relu", field: OutputField = None) -> None:
        super().__init__()
        if not isinstance(model, nn.Module):
            raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        import sys  # transformers is never imported here: a model of it exists only once it is loaded

        pretrained_model = getattr(sys.modules.get("transformers.modeling_utils"), "PreTrainedModel", None)
        get_base_model = getattr(model, "get_base_model", None)  # a PEFT model wrapping one
        inner = get_base_model() if callable(get_base_model) else model
        if pretrained_model is not None and isinstance(inner, pretrained_model):
            raise ValueError(
                f"model is a transformers {type(model).__name__}: wrapping it would hide its .config, "
                "save_pretrained and .device and rename its state-dict keys; use ncl_ext.patch(model, "
                f"mode={mode!r}), which adds the head in place and saves it with the model"
            )
        self.model = model
        self.head = NonNegative(mode)
        self.field = field

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.apply_head(self.model(*args, **kwargs))

    def apply_head(self, output: Any) -> Any:
        """Make the selected fields of ``output`` non-negative; other fields are untouched."""
        if isinstance(output, torch.Tensor):
            if self.field is not None:
                raise ValueError(f"field={self.field!r} was given but the model returned a single Tensor")
            return self.head(output)
        fields = self.field if isinstance(self.field, (list, tuple)) else [self.field]
        if isinstance(output, Mapping):  # dict and transformers' ModelOutput
            output = copy.copy(output)
            for field in fields:
                key = _default_field(output) if field is None else field
                output[key] = self.head(select_output(output, key))
            return output
        if isinstance(output, (tuple, list)):
            items = list(output)
            for field in fields:
                index = 0 if field is None else field
                items[index] = self.head(select_output(output, index))
            return type(output)(items) if not hasattr(output, "_fields") else type(output)(*items)
        raise ValueError(_unsupported_output(output))


def select_output(output: Any, field: int | str | None = None) -> torch.Tensor:
    """The feature tensor of a model's output: the one place that reads fields out of outputs.

    ``output`` is a Tensor (``field`` must be ``None``), a tuple / list (``field`` an int
    index, ``None`` the first element) or a dict / HF ``ModelOutput`` (``field`` a key,
    ``None`` the first tensor field).

    Raises:
        ValueError: the field is missing or not a tensor; the message lists what there is.

    Examples:
        >>> select_output({"pooler_output": torch.ones(2, 3)}, "pooler_output").shape
        torch.Size([2, 3])
        >>> select_output((torch.zeros(2), "extra")).shape
        torch.Size([2])
    """
    if isinstance(output, torch.Tensor):
        if field is not None:
            raise ValueError(f"field={field!r} was given but the model returned a single Tensor")
        return output
    if isinstance(output, Mapping):
        key = _default_field(output) if field is None else field
        value = output.get(key) if isinstance(key, str) else None
        if not isinstance(value, torch.Tensor):
            available = list(output.keys())
            raise ValueError(f"field={key!r} is not a tensor in the model's output; available fields: {available}")
        return value
    if isinstance(output, (tuple, list)):
        index = 0 if field is None else field
        if isinstance(index, bool) or not isinstance(index, int) or not -len(output) <= index < len(output):
            raise ValueError(f"field={index!r} must be an int index into the model's {len(output)}-tuple output")
        if not isinstance(output[index], torch.Tensor):
            raise ValueError(f"field={index!r} of the model's output is a {type(output[index]).__name__}, not a Tensor")
        return output[index]
    raise ValueError(_unsupported_output(output))


def _unsupported_output(output: Any) -> str:
    return (
        f"cannot find features in a model output of type {type(output).__name__}; "
        "the model must return a Tensor, a tuple/list, a dict or a ModelOutput"
    )


def _default_field(output: Mapping) -> str:
    for key, value in output.items():
        if isinstance(value, torch.Tensor):
            return key
    raise ValueError(f"the model's output has no tensor field; fields: {list(output.keys())}")


def make_nonneg(model: nn.Module, mode: str = "relu", field: OutputField = None) -> NonNegativeWrapper:
    """Wrap any ``nn.Module`` so its output features are non-negative.

    A transformers ``PreTrainedModel`` (or a PEFT model wrapping one) is refused with a
    ValueError: :func:`ncl_ext.patch` adds the head to it in place, keeping its
    ``config``, ``save_pretrained`` and state-dict keys.

    Args:
        model: the module to wrap (it is kept, not copied, as ``wrapper.model``).
        mode: the non-negative map, see :func:`nonneg`.
        field: which part of the output to map. ``None``: a Tensor output, the first
            element of a tuple, or the first tensor field of a dict / HF ``ModelOutput``.
            An ``int`` indexes a tuple, a ``str`` names a dict/ModelOutput field; a list
            maps several fields.

    Examples:
        >>> encoder = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.Linear(32, 8))
        >>> model = make_nonneg(encoder, mode="relu")
        >>> model
        NonNegativeWrapper(
          (model): Sequential(
            (0): Linear(in_features=16, out_features=32, bias=True)
            (1): Linear(in_features=32, out_features=8, bias=True)
          )
          (head): NonNegative(mode='relu')
        )
    """
    return NonNegativeWrapper(model, mode=mode, field=field)
