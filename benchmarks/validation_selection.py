"""Choose a recipe setting on a validation split carved from the training data, never on the test split.

For each candidate value of one setting and each seed, runs the recipe with its validation
split on (``holdout=0.2`` for the image and CLIP recipes, ``validation=true`` for the
sentence recipe: evaluation then scores held-out training data instead of the test / dev
data), and picks the value with the best mean of the chosen ``run:metric``. The test / dev
data are not touched; the per-seed benchmarks (``vision_digits.py``, ...) report the chosen
value on them. graph-contrastive reports its validation-node accuracy (``node_val_acc_mean``)
in every run and is chosen on that (``graph_robustness.py``); sparse-retrieval tunes nothing.

Usage:
    python benchmarks/validation_selection.py vision-ssl projector 256,256 512,512 1024,1024 2048,2048 \\
        --choose ncl:precision@10_ea25 --seeds 0 1
    python benchmarks/validation_selection.py clip-finetune epochs 50 100 --choose ncl:zero_shot_acc
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from ncl_ext.recipes import run_recipe

RESULTS = Path(__file__).resolve().parent / "results"
#: How each recipe scores held-out training data instead of its test / dev data.
VALIDATION = {
    "vision-ssl": "holdout=0.2", "supervised-nce": "holdout=0.2", "clip-finetune": "holdout=0.2",
    "sentence-embedding": "validation=true",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("recipe")
    parser.add_argument("setting", help="the setting to choose")
    parser.add_argument("values", nargs="+", help="its candidate values, as on the command line")
    parser.add_argument("--choose", required=True, help="RUN:METRIC to maximise, e.g. ncl:precision@10_ea25")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="other settings, fixed")
    parser.add_argument("--rerender", action="store_true",
                        help="rewrite the tables from the rows saved by an earlier run of the same command")
    args = parser.parse_args()
    if args.recipe not in VALIDATION:
        parser.error(f"recipe {args.recipe!r} has no validation split here; expected one of {', '.join(VALIDATION)}")
    if ":" not in args.choose:
        parser.error(f"--choose {args.choose!r}: expected RUN:METRIC, e.g. ncl:precision@10_ea25")
    choose_run, choose_metric = args.choose.split(":", 1)
    validation = VALIDATION[args.recipe]
    name = f"selection_{args.recipe}_{args.setting}".replace("-", "_")
    rows = json.loads((RESULTS / f"{name}.json").read_text())["rows"] if args.rerender else []
    for value in [] if args.rerender else args.values:
        for seed in args.seeds:
            started = time.perf_counter()
            overrides = [*args.set, f"{args.setting}={value}", f"seed={seed}", validation]
            with tempfile.TemporaryDirectory() as output:
                results = run_recipe(args.recipe, overrides=overrides, data_root=args.data_root, output=output,
                                     device="cpu")
            seconds = round(time.perf_counter() - started, 1)
            for run, metrics in results["runs"].items():
                scalars = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
                rows.append({"value": value, "seed": seed, "run": run, "seconds": seconds, **scalars})
            score = results["runs"].get(choose_run, {}).get(choose_metric)
            if score is None:
                raise SystemExit(f"--choose {args.choose}: run {choose_run!r} reported no {choose_metric!r}; "
                                 f"its metrics: {', '.join(results['runs'].get(choose_run, {})) or 'none'}")
            print(f"{args.setting}={value} seed={seed}: {args.choose} = {score}, {seconds} s", flush=True)

    def mean(value: str, run: str, metric: str) -> float:
        values = [row[metric] for row in rows if row["value"] == value and row["run"] == run and metric in row]
        return sum(values) / len(values) if values else float("nan")

    chosen = max(args.values, key=lambda value: mean(value, choose_run, choose_metric))
    runs = list(dict.fromkeys(row["run"] for row in rows))
    metrics = list(dict.fromkeys(k for row in rows for k in row if k not in ("value", "seed", "run", "seconds")))
    lines = [
        f"# {args.recipe}: choosing `{args.setting}` on a validation split",
        "",
        f"`python benchmarks/validation_selection.py {args.recipe} {args.setting} {' '.join(args.values)} "
        f"--choose {args.choose} --seeds {' '.join(map(str, args.seeds))}"
        + (f" --set {' '.join(args.set)}" if args.set else "") + "`",
        "",
        f"Evaluation on held-out training data (`{validation}`); the test / dev data are not used. Rule: the "
        f"value with the highest `{args.choose}`, mean over seeds {args.seeds}.",
        "",
        f"| {args.setting} | run | " + " | ".join(metrics) + " |",
        "|---|---|" + "---:|" * len(metrics),
    ]
    for value in args.values:
        for run in runs:
            cells = (mean(value, run, metric) for metric in metrics)
            lines.append(f"| {value} | {run} | " + " | ".join("-" if c != c else f"{c:.4f}" for c in cells) + " |")
    lines += ["", f"Chosen: `{args.setting}={chosen}`."]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.md").write_text("\n".join(lines) + "\n")
    saved = {key: value for key, value in vars(args).items() if key != "rerender"}
    (RESULTS / f"{name}.json").write_text(json.dumps({"rows": rows, "chosen": chosen, "args": saved}, indent=2))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
