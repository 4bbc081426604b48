"""Recipe settings: a dataclass schema, preset files, ``key=value`` overrides, checks and hashes.

A recipe's ``Config`` dataclass is the schema: every field is declared with :func:`setting`
(default, one-line help, and the checks its values must pass). Values come, later ones
winning, from the field defaults, a preset file (``recipes/<recipe>/<preset>.yaml``,
shipped in the package), a user's ``--config FILE.yaml``, ``key=value`` overrides and the
command-line flags. :func:`build_config` merges and checks them all before any work starts,
so a misspelt key or a bad value fails with a one-line error naming it.

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
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from ncl_ext.nonneg import check_mode

__all__ = [
    "Settings",
    "build_config",
    "config_to_dict",
    "format_results_table",
    "load_config_file",
    "parse_value",
    "preset_names",
    "read_preset",
    "setting",
    "training_hash",
    "training_settings",
    "write_config_file",
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


# ------------------------------------------------------------------ preset files


def _presets_folder(recipe: str) -> Any:
    return resources.files("ncl_ext.presets").joinpath(recipe)


def preset_names(recipe: str) -> list[str]:
    """The presets shipped for ``recipe``: the stems of ``recipes/<recipe>/*.yaml``."""
    folder = _presets_folder(recipe)
    if not folder.is_dir():
        return []
    return sorted(entry.name.removesuffix(".yaml") for entry in folder.iterdir() if entry.name.endswith(".yaml"))


def read_preset(recipe: str, preset: str) -> tuple[dict[str, Any], str]:
    """``(settings, one-line description)`` of a shipped preset; the description is the file's first comment."""
    names = preset_names(recipe)
    if preset not in names:
        raise ValueError(f"preset={preset!r} is unknown for recipe {recipe}; expected one of {names}")
    text = _presets_folder(recipe).joinpath(f"{preset}.yaml").read_text(encoding="utf-8")
    return _settings_of(yaml.safe_load(text), f"preset {recipe}/{preset}.yaml", recipe), _description(text)


def _description(text: str) -> str:
    first = text.lstrip().splitlines()[0] if text.strip() else ""
    return first.lstrip("#").strip() if first.startswith("#") else ""


def load_config_file(path: str | Path, recipe: str) -> tuple[dict[str, Any], str | None]:
    """``(settings, preset)`` of a user's YAML: a flat preset, or an ``OUTPUT/config.yaml`` a run wrote."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"--config {path}: no such file")
    try:
        content = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        reason = str(error).strip().splitlines()[0]
        raise ValueError(f"--config {path} is not a readable YAML file ({reason})") from None
    preset = content.get("preset") if isinstance(content, dict) and "settings" in content else None
    return _settings_of(content, f"--config {path}", recipe), preset


def _settings_of(content: Any, where: str, recipe: str) -> dict[str, Any]:
    if content is None:
        return {}
    if not isinstance(content, dict):
        raise ValueError(f"{where} must hold a mapping of settings (key: value), got {type(content).__name__}")
    if "settings" in content:  # a resolved config written by a run
        if content.get("recipe") not in (None, recipe):
            raise ValueError(f"{where} was written by recipe {content['recipe']!r}, not {recipe!r}")
        content = content["settings"] or {}
        if not isinstance(content, dict):
            raise ValueError(f"{where}: 'settings' must be a mapping of key: value")
    return dict(content)


def write_config_file(path: Path | None, recipe: str, preset: str, config: Any, derived: Mapping[str, Any]) -> str:
    """Write (unless ``path`` is None) and return the resolved config as YAML; ``ncl-ext run RECIPE --config PATH``
    repeats the run."""
    document = {
        "recipe": recipe,
        "preset": preset,
        "training_hash": training_hash(config),
        "settings": config_to_dict(config),
    }
    text = (
        f"# Resolved settings of an ncl-ext run. Repeat it with: ncl-ext run {recipe} --config "
        f"{path.name if path is not None else 'config.yaml'}\n"
        + yaml.safe_dump(document, sort_keys=False, default_flow_style=None, width=120)
        + "# Computed from the settings (e.g. the learning rate after batch scaling); read-only.\n"
        + yaml.safe_dump({"derived": dict(derived)}, sort_keys=False, default_flow_style=False, width=120)
    )
    if path is not None:
        from ncl_ext.checkpoint import write_text_atomically

        write_text_atomically(path, text)
    return text


# ------------------------------------------------------------------ results table


def format_results_table(results: Mapping[str, Any]) -> str:
    """A markdown table of the scalar metrics: one row per run, or one row per metric when runs are fewer.

    Examples:
        >>> results = {"recipe": "r", "preset": "p", "runs": {"cl": {"acc": 0.5}, "ncl": {"acc": 0.25}}}
        >>> print(format_results_table(results))
        ### r (p)
        <BLANKLINE>
        | run | acc |
        |---|---:|
        | cl | 0.5000 |
        | ncl | 0.2500 |
    """
    runs: Mapping[str, Mapping[str, Any]] = results["runs"]
    metrics: list[str] = []
    for run in runs.values():
        metrics += [k for k, v in run.items() if isinstance(v, (int, float)) and k not in metrics]
    lines = [f"### {results['recipe']} ({results['preset']})", ""]
    if len(metrics) <= 12:
        lines += ["| run | " + " | ".join(metrics) + " |", "|---|" + "---:|" * len(metrics)]
        lines += [f"| {name} | " + " | ".join(_format_number(run.get(m)) for m in metrics) + " |"
                  for name, run in runs.items()]
    else:  # many metrics (e.g. one per budget): a long table reads better than a wide one
        lines += ["| metric | " + " | ".join(runs) + " |", "|---|" + "---:|" * len(runs)]
        lines += [f"| {m} | " + " | ".join(_format_number(run.get(m)) for run in runs.values()) + " |"
                  for m in metrics]
    return "\n".join(lines)


def _format_number(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, int) or (isinstance(value, float) and value.is_integer() and abs(value) >= 2):
        return str(int(value))
    return f"{value:.4f}"


# ------------------------------------------------------------------ settings the image recipes share


@dataclasses.dataclass
class ImageRunSettings(Settings):
    """The settings every image recipe shares: the data :class:`~ncl_ext.data.image_data.ImageData` loads,
    the device and the training machinery."""

    dataset: str = setting(
        "digits", "which images to train on", choices=("digits", "cifar10", "cifar100", "imagenet100", "imagefolder")
    )
    data_root: str | None = setting(None, "folder holding the dataset (never written to); not needed for digits")
    download: bool = setting(False, "download CIFAR into data_root when it is missing (needs internet)")
    holdout: float = setting(
        0.0, "share of the training images (per class) held out as a validation split that replaces the test "
        "images in evaluation: choose settings with it, then report with 0", minimum=0, below=1,
    )
    device: str | None = setting(None, "cpu, cuda or mps; default: the best available", choices=DEVICES)
    image_size: int | None = setting(None, "side of the square training images; default: the dataset's", minimum=1)
    momentum: float = setting(0.9, "SGD / LARS momentum", minimum=0, below=1)
    grad_accum_steps: int = setting(1, "batches per optimizer step", minimum=1)
    mixed_precision: str = setting("no", "autocast precision", choices=("no", "bf16", "fp16"))
    channels_last: bool = setting(False, "channels-last memory format (faster convolutions on GPUs)")
    compile: bool = setting(False, "compile the model with TorchInductor")
    seed: int = setting(0, "seeds weights, augmentations and batch order (every run of a command uses the same)")
    checkpoint_every: int = setting(200, "batches between checkpoints", minimum=1)
    num_workers: int = setting(8, "DataLoader workers for folder datasets (and for decoding them once)", minimum=0)
    resident_budget_mb: float = setting(
        4096, "MiB a folder dataset's decoded images may take to be kept on the device and augmented there in "
        "batches; larger folders are read by DataLoader workers every epoch (0: always)", minimum=0,
    )
    eval_batch_size: int = setting(512, "batch size of feature extraction for evaluation", minimum=1, evaluation=True)


def image_train_config(config: Any, num_processes: int, name: str) -> Any:
    """The :class:`~ncl_ext.training.TrainConfig` of an image recipe's settings.

    The learning rate follows the linear scaling rule of SimCLR and of the official NCL code
    (solo-learn): ``base_lr * global_batch / 256``, ``global_batch = batch_size * processes *
    grad_accum_steps``.
    """
    from ncl_ext.training import TrainConfig

    global_batch = config.batch_size * num_processes * config.grad_accum_steps
    return TrainConfig(
        epochs=config.epochs,
        lr=config.base_lr * global_batch / 256,
        optimizer=config.optimizer,
        momentum=config.momentum,
        weight_decay=config.weight_decay,
        lars_trust_coeff=config.lars_eta,
        lars_clip=config.lars_clip,
        warmup_epochs=config.warmup_epochs,
        warmup_start_lr=config.warmup_start_lr,
        grad_accum_steps=config.grad_accum_steps,
        mixed_precision=config.mixed_precision,
        seed=config.seed,
        checkpoint_every=config.checkpoint_every,
        name=name,
    )


def optimizer_summary(train_config: Any) -> dict[str, Any]:
    """The optimizer and schedule a :class:`~ncl_ext.training.TrainConfig` builds, for ``--dry-run``."""
    start = train_config.lr * 1e-3 if train_config.warmup_start_lr is None else train_config.warmup_start_lr
    summary = {
        "name": train_config.optimizer,
        "lr": train_config.lr,
        "weight_decay": train_config.weight_decay,
        "schedule": (
            f"linear warm-up over {train_config.warmup_epochs:g} epochs from {start:g}, "
            f"then cosine to {train_config.min_lr:g}, per step"
        ),
        "no_weight_decay": "biases and normalisation weights (1-D parameters)",
    }
    if train_config.optimizer != "adamw":
        summary["momentum"] = train_config.momentum
    if train_config.optimizer == "lars":
        summary.update(
            trust_coefficient=train_config.lars_trust_coeff,
            trust_clip=train_config.lars_clip,
            lars_excludes="biases and normalisation weights (no trust ratio, no weight decay)",
            implementation="timm.optim.Lars",
        )
    if train_config.max_grad_norm:
        summary["max_grad_norm"] = train_config.max_grad_norm
    return summary
