"""Preset files: the YAML settings shipped per recipe, a user's ``--config`` file, the ``config.yaml`` a run writes.

The presets live in the top-level ``recipes/<recipe>/<preset>.yaml`` folder of the repository
and ship inside the package as ``ncl_ext.presets``, so ``ncl-ext run`` finds them from a plain
``pip install``. A preset is a flat mapping of settings; its first comment line describes it.

Examples:
    >>> "digits" in preset_names("vision-ssl")
    True
    >>> settings, description = read_preset("vision-ssl", "cifar10")
    >>> settings["lars_eta"]
    0.02
"""

from __future__ import annotations

from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from ncl_ext.recipes.config import config_to_dict, training_hash

__all__ = ["load_config_file", "preset_names", "read_preset", "write_config_file"]


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
