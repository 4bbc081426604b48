"""The ``ncl-ext`` command line (also ``python -m ncl_ext``): run recipes, analyse saved features.

Examples:
    ncl-ext run vision-ssl                       # offline default: CL vs NCL on digits
    ncl-ext run vision-ssl --help                # its presets and every setting, with defaults
    ncl-ext run vision-ssl --preset cifar10 --dry-run
    ncl-ext run vision-ssl --preset cifar10 --data-root ~/data epochs=10
    ncl-ext run vision-ssl --config runs/vision-ssl-digits-1a2b3c4d/config.yaml
    ncl-ext report features.pt --labels labels.pt --output report/
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import textwrap
import typing
from pathlib import Path
from typing import Any

from ncl_ext import __version__
from ncl_ext.recipes.runner import RECIPES

__all__ = ["build_parser", "main", "recipe_help"]

class _RecipeHelp(argparse.Action):
    """``-h`` after ``run RECIPE`` prints that recipe's presets and settings; before it, the usual help."""

    def __init__(self, option_strings: list[str], dest: str = argparse.SUPPRESS, **kwargs: Any) -> None:
        super().__init__(option_strings, dest=dest, nargs=0, default=argparse.SUPPRESS, help="show this help and exit")

    def __call__(self, parser: argparse.ArgumentParser, namespace: Any, values: Any, option_string: Any = None) -> None:
        recipe = getattr(namespace, "recipe", None)
        print(recipe_help(recipe) if recipe else parser.format_help())
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ncl-ext", description="Non-negative contrastive learning: run recipes and analyse features."
    )
    parser.add_argument("--version", action="version", version=f"ncl-ext {__version__}")
    verbosity = parser.add_mutually_exclusive_group()
    verbosity.add_argument("-q", "--quiet", action="store_const", const=-1, dest="verbosity", default=0,
                           help="warnings and errors only (no progress bars)")
    verbosity.add_argument("-v", "--verbose", action="store_const", const=1, dest="verbosity", help="debug messages")
    commands = parser.add_subparsers(dest="command", required=True, metavar="{run,report}")

    run = commands.add_parser(
        "run", add_help=False, help="train CL and NCL side by side and write OUTPUT/results.json",
        usage="ncl-ext run RECIPE [--preset NAME | --config FILE] [options] [key=value ...]",
        description="Train CL and NCL side by side. `ncl-ext run RECIPE --help` lists its presets and settings.",
    )
    run.add_argument("-h", "--help", action=_RecipeHelp)
    run.add_argument("recipe", choices=list(RECIPES), help="which recipe to run")
    run.add_argument("--preset", default=None, help="a preset of the recipe (default: its offline default)")
    run.add_argument("--config", default=None, metavar="FILE", help="a YAML of settings, e.g. OUTPUT/config.yaml")
    run.add_argument("--data-root", default=None, help="folder holding the dataset (never written to)")
    run.add_argument("--output", default=None, help="output folder (default: runs/RECIPE-PRESET-HASH)")
    run.add_argument("--device", default=None, help="cpu, cuda or mps (default: the best available)")
    run.add_argument("--fresh", action="store_true", help="discard the runs already in --output and train anew")
    run.add_argument("--dry-run", action="store_true", help="print the resolved settings as YAML and exit")

    report = commands.add_parser("report", help="feature report (sparsity, consistency, ...) of a saved feature file")
    report.add_argument("features", help="features as .pt, .npy or .safetensors (N x D)")
    report.add_argument("--labels", default=None, help="labels (N,) as .pt, .npy or .safetensors")
    report.add_argument("--output", default=None, help="folder for report.json and plots (default: beside FEATURES)")
    return parser


def recipe_help(name: str) -> str:
    """``ncl-ext run NAME --help``: the recipe's summary, its presets and every setting with type, default and help."""
    from ncl_ext.recipes import load_recipe
    from ncl_ext.recipes.presets import preset_names, read_preset

    recipe = load_recipe(name)
    summary = (recipe.__doc__ or "").strip().split("\n\n")[0]
    lines = [
        f"usage: ncl-ext run {name} [--preset NAME | --config FILE] [--data-root DIR] [--output DIR] "
        "[--device DEVICE] [--fresh] [--dry-run] [key=value ...]",
        "",
        textwrap.fill(" ".join(summary.split()), 100),
        "",
        f"presets (recipes/{name}/NAME.yaml; --dry-run shows one resolved):",
    ]
    for preset in preset_names(name):
        label = f"{preset} (default)" if preset == recipe.DEFAULT_PRESET else preset
        lines.append(f"  {label:<22}{read_preset(name, preset)[1]}")
    lines += ["", "settings (key=value; the defaults below, unless the preset sets them):"]
    hints = typing.get_type_hints(recipe.Config)
    for field in dataclasses.fields(recipe.Config):
        kind = _type_name(hints[field.name])
        choices = (field.metadata.get("checks") or {}).get("choices")
        notes = f"; one of {', '.join(str(choice) for choice in choices)}" if choices else ""
        notes += " [evaluation only]" if field.metadata.get("evaluation") else ""
        lines.append(f"  {field.name} ({kind}, default {_default(field)}): {field.metadata.get('help', '')}{notes}")
    lines += [
        "",
        "options:",
        "  --preset NAME       a preset above (default: the offline default)",
        "  --config FILE       settings from a YAML file (a preset of your own or a run's OUTPUT/config.yaml)",
        "  --data-root DIR     folder holding the dataset (never written to)",
        "  --output DIR        output folder (default: runs/RECIPE-PRESET-HASH, HASH of the training settings)",
        "  --device DEVICE     cpu, cuda or mps (default: the best available)",
        "  --fresh             discard the runs already in --output and train anew",
        "  --dry-run           print the resolved settings (and the optimizer they build) as YAML and exit",
    ]
    return "\n".join(lines)


def _type_name(annotation: Any) -> str:
    text = str(annotation).replace("typing.", "").replace("<class '", "").replace("'>", "")
    return text.replace("NoneType", "None")


def _default(field: dataclasses.Field) -> str:
    value = field.default
    if isinstance(value, tuple):
        return ",".join(str(item) for item in value) or "()"
    return repr(value) if isinstance(value, str) else str(value)


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(argv)
    except BrokenPipeError:
        # The reader went away (``ncl-ext run vision-ssl --help | head``): stop quietly, as Unix tools do.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


def _main(argv: list[str] | None) -> int:
    parser = build_parser()
    # key=value overrides may come before or after the options, so collect them from the leftovers.
    args, leftovers = parser.parse_known_args(argv)
    unknown = [item for item in leftovers if args.command != "run" or "=" not in item or item.startswith("-")]
    words = [item for item in unknown if args.command == "run" and not item.startswith("-")]
    if words:
        parser.error(f"override {words[0]!r} must look like KEY=VALUE, e.g. epochs=10")
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    from ncl_ext.log import configure_cli_logging

    configure_cli_logging(args.verbosity)
    try:
        if args.command == "run":
            return _run(args, leftovers)
        return _report(args)
    except (ValueError, FileNotFoundError, NotADirectoryError, PermissionError, FloatingPointError) as error:
        # A user's mistake or a damaged file is reported on one line, not as a stack trace from deep inside.
        print(f"ncl-ext: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ncl-ext: interrupted; run the same command again to resume from the last checkpoint", file=sys.stderr)
        return 130


def _run(args: argparse.Namespace, overrides: list[str]) -> int:
    from ncl_ext.recipes import derived_settings, resolve_config, run_recipe
    from ncl_ext.recipes.presets import write_config_file

    if args.dry_run:
        config, preset = resolve_config(args.recipe, args.preset, overrides, args.data_root, args.device, args.config)
        print(write_config_file(None, args.recipe, preset, config, derived_settings(args.recipe, config)), end="")
        return 0
    run_recipe(
        args.recipe, preset=args.preset, overrides=overrides, data_root=args.data_root, output=args.output,
        device=args.device, config_file=args.config, fresh=args.fresh,
    )
    return 0


def _report(args: argparse.Namespace) -> int:
    from ncl_ext.analysis.report import report_command

    if args.output is not None and Path(args.output).exists() and not Path(args.output).is_dir():
        raise ValueError(f"--output {args.output} is a file, not a folder; pass a folder for report.json and the plots")
    report_command(args.features, labels_path=args.labels, output=args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
