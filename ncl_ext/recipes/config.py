"""Recipe configuration: presets plus ``key=value`` overrides, typed by the recipe's dataclass.

Examples:
    >>> from dataclasses import dataclass
    >>> @dataclass
    ... class Config:
    ...     epochs: int = 10
    ...     projector: tuple[int, ...] = (2048, 256)
    ...     data_root: str | None = None
    ...     device: str | None = None
    >>> build_config(Config, {"epochs": 5}, ["projector=512,128"]).projector
    (512, 128)
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Mapping, Sequence

__all__ = ["build_config", "format_results_table", "parse_value", "setting"]


def setting(default: Any, help: str) -> Any:
    """A config field with its one-line documentation (shown by ``ncl-ext run RECIPE --help``).

    Examples:
        >>> from dataclasses import dataclass, fields
        >>> @dataclass
        ... class Config:
        ...     epochs: int = setting(10, "passes over the training data")
        >>> fields(Config)[0].metadata["help"]
        'passes over the training data'
    """
    return dataclasses.field(default=default, metadata={"help": help})


def build_config(
    config_class: type,
    preset: Mapping[str, Any],
    overrides: Sequence[str] | Mapping[str, Any] = (),
    **flags: Any,
) -> Any:
    """``config_class(**preset)`` with ``overrides`` and the non-None ``flags`` applied."""
    fields = {f.name: f for f in dataclasses.fields(config_class)}
    values = dict(preset)
    if not isinstance(overrides, Mapping):
        pairs = {}
        for item in overrides:
            if "=" not in item:
                raise ValueError(f"override {item!r} must look like KEY=VALUE, e.g. epochs=10")
            key, text = item.split("=", 1)
            pairs[key.strip()] = text.strip()
        overrides = pairs
    hints = typing.get_type_hints(config_class)
    for key, value in list(overrides.items()) + [(k, v) for k, v in flags.items() if v is not None]:
        if key not in fields:
            raise ValueError(f"{key!r} is not a setting of this recipe; known settings: {', '.join(sorted(fields))}")
        values[key] = parse_value(value, hints[key], key) if isinstance(value, str) else value
    return config_class(**values)


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
            return tuple(parse_value(part, options[0], name) for part in text.split(",") if part)
        if annotation in (int, float, str):
            return annotation(text)
    except ValueError:
        raise ValueError(f"{name}={text!r} is not a valid {getattr(annotation, '__name__', annotation)}") from None
    return text


def format_results_table(results: Mapping[str, Any]) -> str:
    """A markdown table with one row per run and one column per scalar metric."""
    runs: Mapping[str, Mapping[str, Any]] = results["runs"]
    metrics = []
    for run in runs.values():
        metrics += [k for k, v in run.items() if isinstance(v, (int, float)) and k not in metrics]
    lines = [
        f"### {results['recipe']} ({results['preset']})",
        "",
        "| run | " + " | ".join(metrics) + " |",
        "|---|" + "---:|" * len(metrics),
    ]
    for name, run in runs.items():
        cells = [_format_number(run.get(metric)) for metric in metrics]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _format_number(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, int) or (isinstance(value, float) and value.is_integer() and abs(value) >= 2):
        return str(int(value))
    return f"{value:.4f}"
