"""Recipe settings: a dataclass schema, preset files, ``key=value`` overrides, checks and hashes.

A recipe's ``Config`` dataclass is the schema: every field is declared with :func:`setting`
(default, one-line help, and the checks its values must pass). Values come, later ones
winning, from the field defaults, a preset file (``recipes/<recipe>/<preset>.yaml``,
shipped in the package, read by :mod:`ncl_ext.recipes.presets`), a user's ``--config
FILE.yaml``, ``key=value`` overrides and the command-line flags. :func:`build_config`
merges and checks them all before any work starts, so a misspelt key or a bad value fails
with a one-line error naming it.

Settings marked ``evaluation=True`` only change how a trained model is measured (probe
epochs, k of kNN, batch sizes of evaluation); the others decide the trained model and make
up its :func:`training_hash`, which the runner compares before resuming a run.

Examples:
    >>> from dataclasses import dataclass
    >>> @dataclass
    ... class Config:
    ...     epochs: int = setting(10, "passes over the data", minimum=1)
    ...     projector: tuple[int, ...] = setting((2048, 256), "MLP sizes", minimum=1)
    ...     knn_k: int = setting(20, "neighbours of the kNN probe", minimum=1, evaluation=True)
    >>> config = build_config(Config, {"epochs": 5}, ["projector=512,128"])
    >>> config.projector
    (512, 128)
    >>> build_config(Config, {}, ["epochs=0"])
    Traceback (most recent call last):
    ...
    ValueError: epochs=0; expected a number >= 1
    >>> training_hash(config) == training_hash(build_config(Config, {"epochs": 5}, ["projector=512,128", "knn_k=5"]))
    True
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import operator
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any

from ncl_ext.nonneg import check_mode

__all__ = [
    "DEVICES",
    "Settings",
    "build_config",
    "config_to_dict",
    "evaluation_settings",
    "parse_value",
    "setting",
    "settings_hash",
    "training_hash",
    "training_settings",
]

#: The values of a ``device`` setting (``None``: the best available).
DEVICES = (None, "cpu", "cuda", "mps")
#: Settings that never change a trained model: where data and results live, the device.
_NOT_TRAINING = ("data_root", "device", "runs", "num_workers")


def setting(
    default: Any,
    help: str,
    *,
    choices: Sequence[Any] | None = None,
    minimum: float | None = None,
    maximum: float | None = None,
    below: float | None = None,
    above: float | None = None,
    mode: bool = False,
    evaluation: bool = False,
) -> Any:
    """A config field: its default, its one-line help (``ncl-ext run RECIPE --help``) and its checks.

    Args:
        default: the default value (tuples for sequences).
        help: one line of documentation.
        choices: the allowed values (each element of a tuple setting must be one).
        minimum, maximum: inclusive bounds of a number (each element of a tuple setting).
        above, below: exclusive bounds (``above=0`` for a temperature, ``below=1`` for a rate).
        mode: the value is a non-negative map, a mode of :func:`ncl_ext.nonneg`.
        evaluation: the setting only changes evaluation; a finished run is re-evaluated, not retrained.

    Examples:
        >>> from dataclasses import dataclass, fields
        >>> @dataclass
        ... class Config:
        ...     epochs: int = setting(10, "passes over the training data", minimum=1)
        >>> fields(Config)[0].metadata["help"]
        'passes over the training data'
    """
    checks = {
        "choices": tuple(choices) if choices is not None else None,
        "minimum": minimum,
        "maximum": maximum,
        "above": above,
        "below": below,
        "mode": mode,
    }
    return dataclasses.field(default=default, metadata={"help": help, "evaluation": evaluation, "checks": checks})


@dataclasses.dataclass
class Settings:
    """Base class of a recipe's ``Config``: building one checks every field against its :func:`setting` checks.

    Subclasses that add checks of their own define ``__post_init__`` and call ``super().__post_init__()``.
    """

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            _check(field, getattr(self, field.name))


def build_config(
    config_class: type,
    preset: Mapping[str, Any],
    overrides: Sequence[str] | Mapping[str, Any] = (),
    **flags: Any,
) -> Any:
    """``config_class(**preset)`` with ``overrides`` and the non-None ``flags`` applied, every value checked.

    ``preset`` and ``flags`` may hold YAML values (lists for tuples); ``overrides`` are
    ``["key=value", ...]`` strings from the command line or a dict.
    """
    fields = {field.name: field for field in dataclasses.fields(config_class)}
    hints = typing.get_type_hints(config_class)
    if not isinstance(overrides, Mapping):
        pairs = {}
        for item in overrides:
            if "=" not in item:
                raise ValueError(f"override {item!r} must look like KEY=VALUE, e.g. epochs=10")
            key, text = item.split("=", 1)
            pairs[key.strip()] = text.strip()
        overrides = pairs
    values = {}
    for key, value in [*preset.items(), *overrides.items(), *((k, v) for k, v in flags.items() if v is not None)]:
        if key not in fields:
            raise ValueError(f"{key!r} is not a setting of this recipe; known settings: {', '.join(sorted(fields))}")
        values[key] = coerce_value(value, hints[key], key)
    config = config_class(**values)
    if not isinstance(config, Settings):  # a plain dataclass: check its fields here
        for field in fields.values():
            _check(field, getattr(config, field.name))
    return config


def coerce_value(value: Any, annotation: Any, name: str) -> Any:
    """``value`` (a command-line string or a YAML value) as a value of type ``annotation``."""
    if isinstance(value, str):
        return parse_value(value, annotation, name)
    options = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return None if value is None else coerce_value(value, options[0], name)
    if typing.get_origin(annotation) is tuple:
        if not isinstance(value, (list, tuple)):
            value = [value]
        return tuple(coerce_value(item, options[0], name) for item in value)
    if annotation is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if annotation in (int, float, bool, str) and type(value) is not annotation:
        raise ValueError(f"{name}={value!r} is not a valid {annotation.__name__}")
    return value


def parse_value(text: str, annotation: Any, name: str) -> Any:
    """Turn the command-line string ``text`` into a value of type ``annotation``."""
    options = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        if text.lower() in ("none", "null", ""):
            return None
        return parse_value(text, options[0], name)
    try:
        if annotation is bool:
            if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError
            return text.lower() in ("true", "1", "yes")
        if typing.get_origin(annotation) is tuple:
            return tuple(parse_value(part.strip(), options[0], name) for part in text.split(",") if part.strip())
        if annotation in (int, float, str):
            return annotation(text)
    except ValueError:
        raise ValueError(f"{name}={text!r} is not a valid {getattr(annotation, '__name__', annotation)}") from None
    return text


def _check(field: dataclasses.Field, value: Any) -> None:
    checks = field.metadata.get("checks")
    if not checks or value is None:
        return
    for item in value if isinstance(value, tuple) else (value,):
        problem = _problem(item, checks)
        if problem:
            shown = ",".join(str(v) for v in value) if isinstance(value, tuple) else repr(value)
            raise ValueError(f"{field.name}={shown}; expected {problem}")


def _problem(value: Any, checks: Mapping[str, Any]) -> str | None:
    if checks["mode"]:
        try:
            check_mode(value)
        except ValueError as error:
            return str(error).split("expected ", 1)[1]
    if checks["choices"] is not None and value not in checks["choices"]:
        return "one of " + ", ".join(repr(choice) for choice in checks["choices"])
    bounds = [(checks["minimum"], ">=", operator.ge), (checks["maximum"], "<=", operator.le),
              (checks["above"], ">", operator.gt), (checks["below"], "<", operator.lt)]
    if any(bound is not None for bound, _, _ in bounds):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return "a finite number"
        failed = [f"{sign} {bound:g}" for bound, sign, holds in bounds if bound is not None and not holds(value, bound)]
        if failed:
            return "a number " + " and ".join(failed)
    return None


# ------------------------------------------------------------------ what decides a trained model


def config_to_dict(config: Any) -> dict[str, Any]:
    """The config as plain YAML / JSON values (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(config)))


def training_settings(config: Any) -> dict[str, Any]:
    """The settings that decide the trained model: all but evaluation-only ones, paths and the device."""
    values = config_to_dict(config)
    return {
        field.name: values[field.name]
        for field in dataclasses.fields(config)
        if not field.metadata.get("evaluation") and field.name not in _NOT_TRAINING
    }


def evaluation_settings(config: Any) -> dict[str, Any]:
    """The evaluation-only settings (re-evaluating a finished run is enough when only these change)."""
    values = config_to_dict(config)
    return {field.name: values[field.name] for field in dataclasses.fields(config) if field.metadata.get("evaluation")}


def settings_hash(settings: Mapping[str, Any]) -> str:
    """A short, stable hash of a mapping of settings."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:8]


def training_hash(config: Any) -> str:
    """8 hex digits that change whenever a training setting does (see :func:`training_settings`)."""
    return settings_hash(training_settings(config))
