"""The ``ncl-ext`` command line: ``ncl-ext run RECIPE`` and ``ncl-ext report FEATURES``.

Examples:
    ncl-ext run vision-ssl                       # offline default: CL vs NCL on digits
    ncl-ext run vision-ssl --preset cifar10 --data-root ~/data epochs=10
    ncl-ext report features.pt --labels labels.pt --output report/
"""

from __future__ import annotations

import argparse
import sys

from ncl_ext.recipes import RECIPES, run_recipe


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ncl-ext", description="Non-negative contrastive learning: run recipes and analyse features."
    )
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="train CL and NCL side by side and write OUTPUT/results.json")
    run.add_argument("recipe", choices=sorted(RECIPES), help="which recipe to run")
    run.add_argument("--preset", default=None, help="a named preset of the recipe (default: its offline default)")
    run.add_argument("--data-root", default=None, help="folder holding the dataset (never written to)")
    run.add_argument("--output", default=None, help="output folder (default: runs/RECIPE-PRESET)")
    run.add_argument("--device", default=None, help="cpu, cuda, cuda:1, mps (default: best available)")
    run.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="override any config field, e.g. epochs=5")

    report = commands.add_parser("report", help="feature report (sparsity, consistency, ...) of a saved feature file")
    report.add_argument("features", help="features as .pt, .npy or .safetensors (N x D)")
    report.add_argument("--labels", default=None, help="labels (N,) as .pt, .npy or .safetensors")
    report.add_argument("--output", default=None, help="folder for report.json and plots (default: beside FEATURES)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # KEY=VALUE overrides may come before or after the options, so collect them from the leftovers.
    args, leftovers = parser.parse_known_args(argv)
    unknown = [item for item in leftovers if args.command != "run" or "=" not in item or item.startswith("-")]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if args.command == "run":
        args.overrides = list(args.overrides) + leftovers
    try:
        if args.command == "run":
            run_recipe(
                args.recipe,
                preset=args.preset,
                overrides=args.overrides,
                data_root=args.data_root,
                output=args.output,
                device=args.device,
            )
        else:
            from ncl_ext.analysis.report import report_command

            report_command(args.features, labels_path=args.labels, output=args.output)
    except (ValueError, FileNotFoundError) as error:
        # Bad input is reported on one line, not as a stack trace from deep inside.
        print(f"ncl-ext: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
