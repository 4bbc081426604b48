"""Choose a recipe setting on a validation split carved from the training data, never on the test split.

For each candidate value of one setting and each seed, runs the recipe with its validation
split on (``holdout=0.2`` for the image and CLIP recipes, ``validation=true`` for the
sentence recipe: evaluation then scores held-out training data instead of the test / dev
data), and picks the value with the best mean of the chosen ``run:metric`` among the values
that meet ``--require`` (e.g. a sparsity floor, or ``active_fraction``: the share of the head's
dimensions active on some sample, which the trainer's collapse warning watches). A setting
both runs share is chosen on the mean of both runs' scores (``--choose cl:M,ncl:M``), so that
it is not tuned for NCL at CL's expense (NCL's score alone picks the sentence recipe's
transformer learning rate 1e-4, where CL's validation Spearman is 0.2 points below its value
at 5e-5). The test / dev data are not touched; the per-seed benchmarks (``vision_digits.py``,
...) report the chosen value on them. graph-contrastive reports its validation-node accuracy
(``node_val_acc_mean``) in every run and is chosen on that (``graph_robustness.py``);
sparse-retrieval tunes nothing.

Rows go to ``benchmarks/results/selection_RECIPE_SETTING.json`` (and a ``.md`` table), with the
resolved settings every candidate shares (``fixed``: the recipe's config without the swept
setting and the seed). A rerun of the same sweep runs only the (value, seed) pairs missing
there, so an interrupted sweep resumes and a new candidate value extends it; it refuses to add
rows when a default has changed since (its ``fixed`` settings differ), which would mix rows
trained under different settings, or when the library versions, Python or torch's thread
count differ from those of the saved rows (``environment``): CPU runs are reproducible for a
given seed only in the same environment, so rows from two would compare noise. A candidate
whose training stops on a non-finite loss is recorded as diverged and never chosen.

Usage:
    python benchmarks/validation_selection.py vision-ssl projector 256,256 512,512 1024,1024 2048,2048 \\
        --choose cl:precision@10_ea25,ncl:precision@10_ea25 --seeds 0 1 --require 'ncl:active_fraction>=0.1'
    python benchmarks/validation_selection.py clip-finetune epochs 50 100 --choose cl:zero_shot_acc,ncl:zero_shot_acc
    python benchmarks/validation_selection.py supervised-nce base_lr 0.03 0.1 0.3 \\
        --choose ce:test_acc,nce:test_acc,ce_mlp:test_acc,nce_mlp:test_acc --require 'nce:sparsity>=0.5'
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import math
import sys
import tempfile
import time
from pathlib import Path

from ncl_ext.recipes import resolve_config, run_recipe
from ncl_ext.recipes.config import evaluation_settings, training_settings
from ncl_ext.recipes.provenance import provenance

RESULTS = Path(__file__).resolve().parent / "results"
#: The ``run`` of a row whose training stopped on a non-finite loss.
DIVERGED = "diverged"
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
    parser.add_argument("--choose", required=True,
                        help="RUN:METRIC to maximise, e.g. ncl:precision@10_ea25, or several joined by commas: "
                             "their mean (a setting both runs share, so that neither is tuned at the other's expense)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--require", default=None, metavar="RUN:METRIC>=X",
                        help="only values whose mean RUN:METRIC is at least X may be chosen, e.g. ncl:sparsity>=0.7")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="other settings, fixed")
    parser.add_argument("--name", default=None,
                        help="results file stem; default selection_RECIPE_SETTING (a second sweep of the same "
                             "setting with other --set values needs its own)")
    parser.add_argument("--rerender", action="store_true",
                        help="rewrite the tables from the saved rows, running nothing")
    parser.add_argument("--results-dir", type=Path, default=RESULTS,
                        help="where the rows and tables go (default benchmarks/results)")
    args = parser.parse_args()
    if args.recipe not in VALIDATION:
        parser.error(f"recipe {args.recipe!r} has no validation split here; expected one of {', '.join(VALIDATION)}")
    if not all(":" in part for part in args.choose.split(",")):
        parser.error(f"--choose {args.choose!r}: expected RUN:METRIC[,RUN:METRIC...], e.g. ncl:precision@10_ea25")
    objective = [tuple(part.split(":", 1)) for part in args.choose.split(",")]
    if args.require is not None:
        require, _, bound = (part.strip() for part in args.require.partition(">="))
        if ":" not in require or not _is_number(bound):
            parser.error(f"--require {args.require!r}: expected RUN:METRIC>=NUMBER, e.g. ncl:sparsity>=0.7")
        require_run, require_metric = require.split(":", 1)
    validation = VALIDATION[args.recipe]
    name = args.name or f"selection_{args.recipe}_{args.setting}".replace("-", "_")
    saved_rows = args.results_dir / f"{name}.json"
    # The settings every candidate shares: today's, unless only saved rows are re-rendered.
    current = None if args.rerender else _fixed_settings(args, validation)
    rows, fixed, environment = _saved_rows(saved_rows, args, current, _environment())
    done = {(row["value"], row["seed"]) for row in rows}
    for value in [] if args.rerender else args.values:
        for seed in args.seeds:
            if (value, seed) in done:
                continue
            started = time.perf_counter()
            overrides = [*args.set, f"{args.setting}={value}", f"seed={seed}", validation]
            try:
                with tempfile.TemporaryDirectory() as output:
                    results = run_recipe(args.recipe, overrides=overrides, data_root=args.data_root, output=output,
                                         device="cpu")
            except FloatingPointError as error:  # the trainer stops on a non-finite loss: never chosen
                rows.append({"value": value, "seed": seed, "run": DIVERGED, "error": str(error)})
                print(f"{args.setting}={value} seed={seed}: diverged ({error}); recorded, not retried", flush=True)
                _save_rows(saved_rows, rows, args, fixed, environment)
                continue
            seconds = round(time.perf_counter() - started, 1)
            if environment is not None:  # the libraries the run loaded, e.g. scikit-learn for its probes
                environment["versions"].update(_environment(results["provenance"])["versions"])
            for run, metrics in results["runs"].items():
                scalars = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
                rows.append({"value": value, "seed": seed, "run": run, "seconds": seconds, **scalars})
            for run, metric in objective:
                if metric not in results["runs"].get(run, {}):
                    raise SystemExit(f"--choose {args.choose}: run {run!r} reported no {metric!r}; "
                                     f"its metrics: {', '.join(results['runs'].get(run, {})) or 'none'}")
            score = sum(results["runs"][run][metric] for run, metric in objective) / len(objective)
            print(f"{args.setting}={value} seed={seed}: {args.choose} = {score}, {seconds} s", flush=True)
            _save_rows(saved_rows, rows, args, fixed, environment)  # after every run, so an interrupted sweep resumes

    def mean(value: str, run: str, metric: str) -> float:
        values = [row_value for row in rows
                  if row["value"] == value and row["run"] == run and row["seed"] in args.seeds
                  and (row_value := _metric(row, metric)) is not None]
        return sum(values) / len(values) if values else float("nan")

    def score(value: str) -> float:
        return sum(mean(value, run, metric) for run, metric in objective) / len(objective)

    diverged = list(dict.fromkeys(row["value"] for row in rows if row["run"] == DIVERGED and row["seed"] in args.seeds))
    scored = [value for value in args.values if value not in diverged and not math.isnan(score(value))]  # has rows
    if not scored and len(diverged) < len(args.values):  # nothing to choose from, and not for divergence
        raise SystemExit(f"--choose {args.choose}: no candidate's saved rows hold it; check the run and metric names")
    if args.require is not None and scored and all(math.isnan(mean(v, require_run, require_metric)) for v in scored):
        raise SystemExit(f"--require {args.require}: no saved row of run {require_run!r} holds {require_metric!r}")
    allowed = [value for value in scored
               if args.require is None or mean(value, require_run, require_metric) >= float(bound)]
    chosen = max(allowed, key=score) if allowed else None
    runs = list(dict.fromkeys(row["run"] for row in rows if row["run"] != DIVERGED))
    metrics = list(dict.fromkeys(k for row in rows if row["run"] != DIVERGED
                                 for k in row if k not in ("value", "seed", "run", "seconds")))
    if {"active_dims", "dead_dims"} <= set(metrics) and "active_fraction" not in metrics:
        metrics.append("active_fraction")
    lines = [
        f"# {args.recipe}: choosing `{args.setting}` on a validation split",
        "",
        f"`python benchmarks/validation_selection.py {args.recipe} {args.setting} {' '.join(args.values)} "
        f"--choose {args.choose} --seeds {' '.join(map(str, args.seeds))}"
        + (f" --data-root {args.data_root}" if args.data_root else "")
        + (f" --require '{args.require}'" if args.require else "")
        + (f" --name {args.name}" if args.name else "")
        + (f" --set {' '.join(args.set)}" if args.set else "") + "`",
        "",
        f"Evaluation on held-out training data (`{validation}`); the test / dev data are not used. Rule: the "
        + (f"value with the highest `{args.choose}`" if len(objective) == 1 else
           "value with the highest mean of " + ", ".join(f"`{run}:{metric}`" for run, metric in objective))
        + f", mean over seeds {args.seeds}"
        + (f", among those with `{args.require}`." if args.require else "."),
        "",
        *([_describe(environment), ""] if environment else []),
        f"| {args.setting} | run | " + " | ".join(metrics) + " |",
        "|---|---|" + "---:|" * len(metrics),
    ]
    for value in (value for value in args.values if value not in diverged):
        for run in runs:
            cells = (mean(value, run, metric) for metric in metrics)
            lines.append(f"| {value} | {run} | " + " | ".join("-" if c != c else f"{c:.4f}" for c in cells) + " |")
    verdict = (f"`{args.setting}={chosen}`" if chosen else "none (every candidate diverged)" if not scored
               else f"none (no value meets `{args.require}`)")
    if diverged:
        lines += ["", "Diverged (the loss became NaN or Inf; never chosen): "
                  + ", ".join(f"`{args.setting}={value}`" for value in diverged) + "."]
    lines += ["", "Rule score: " + ", ".join(f"{value}: {score(value):.4f}" for value in scored) + ".",
              "", f"Chosen: {verdict}."]
    _save_rows(saved_rows, rows, args, fixed, environment, chosen)  # creates the results folder
    saved_rows.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def _fixed_settings(args: argparse.Namespace, validation: str) -> dict:
    """The resolved settings every candidate shares: the recipe's config without the swept setting and the seed.

    The settings that decide a trained model and its evaluation, as the run folders' training hash
    counts them (paths, the device and the list of runs aside).
    """
    config, _ = resolve_config(args.recipe, overrides=[*args.set, validation], data_root=args.data_root)
    settings = {**training_settings(config), **evaluation_settings(config)}
    if args.setting not in settings:
        raise SystemExit(f"setting {args.setting!r} is not a setting of {args.recipe}; expected one of "
                         f"{', '.join(sorted(settings))}")
    return {key: value for key, value in settings.items() if key not in (args.setting, "seed")}


def _environment(info: dict | None = None) -> dict:
    """What a CPU row depends on besides its settings and seed: library versions, Python, torch's thread count.

    From a run's ``provenance`` (``info``), or this process's (the libraries loaded so far).
    """
    info = info or provenance("cpu")
    versions = {name: version for name, version in info["versions"].items() if name != "ncl_ext"}
    return {"versions": versions, "python": info["python"], "cpu_threads": info["cpu_threads"]}


def _environment_changes(recorded: dict, current: dict) -> list[str]:
    """``"name old -> new"`` for each difference, each recorded library against the version installed now."""
    changes = []
    for name, version in sorted(recorded["versions"].items()):
        try:
            installed = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            installed = "not installed"
        if installed != version:
            changes.append(f"{name} {version} -> {installed}")
    return changes + [f"{key} {recorded[key]} -> {current[key]}" for key in ("python", "cpu_threads")
                      if recorded[key] != current[key]]


def _describe(environment: dict) -> str:
    versions = ", ".join(f"{name} {version}" for name, version in sorted(environment["versions"].items()))
    return f"Ran with Python {environment['python']}, {versions}, {environment['cpu_threads']} torch threads."


def _saved_rows(path: Path, args: argparse.Namespace, current: dict | None,
                environment: dict) -> tuple[list[dict], dict | None, dict | None]:
    """Saved rows of the same sweep (recipe, setting, ``--set``, data), and the settings and environment to record.

    New rows are added only when the saved rows were trained with the ``current`` settings
    in the same ``environment``: a setting that changed since (a new default) would mix two
    sweeps, other library versions or thread counts give other numbers for the same seed,
    and a sweep saved before settings were recorded cannot tell. Re-scoring saved rows only warns.
    """
    saved = json.loads(path.read_text()) if path.is_file() else None
    if saved is None:
        if args.rerender:
            raise SystemExit(f"--rerender: {path} does not exist")
        return [], current, environment
    if any(saved["args"].get(key) != getattr(args, key) for key in ("recipe", "setting", "set", "data_root")):
        raise SystemExit(f"{path} holds another sweep ({saved['args']}); give this one its own --name")
    rows, recorded, ran_in = saved["rows"], saved.get("fixed"), saved.get("environment")
    if current is None:  # --rerender
        return rows, recorded, ran_in
    done = {(row["value"], row["seed"]) for row in rows}
    adds_rows = any((value, seed) not in done for value in args.values for seed in args.seeds)
    if recorded is None:
        if adds_rows:
            raise SystemExit(f"{path} predates recorded settings, so new rows could mix settings; "
                             "start a new sweep with --name")
        return rows, None, ran_in
    moved = _environment_changes(ran_in, environment) if ran_in is not None else []
    if moved and adds_rows:
        raise SystemExit(f"{path}: its rows ran in another environment ({', '.join(moved)}); the same seed gives "
                         "other numbers there, so new rows would not compare: rerun it there, or start a new "
                         "sweep with --name")
    if ran_in is None and adds_rows:
        print(f"note: {path.name} predates recorded environments: its rows may come from other library "
              "versions or thread counts", file=sys.stderr)
    changed = [f"{key} {recorded[key]!r} -> {current[key]!r}"
               for key in sorted(recorded.keys() & current.keys()) if recorded[key] != current[key]]
    if changed and adds_rows:
        raise SystemExit(f"{path}: settings changed since its rows were trained ({', '.join(changed)}); new rows "
                         "would mix them: pin the old values with --set, or start a new sweep with --name")
    if changed:
        print(f"note: {path.name}'s rows were trained before these settings changed: {', '.join(changed)}",
              file=sys.stderr)
    added = sorted(current.keys() - recorded.keys())
    if added and adds_rows:  # a setting new to the recipe; its default is assumed to keep the old behaviour
        print(f"note: settings new since {path.name} was started: {', '.join(added)}", file=sys.stderr)
    if not adds_rows:
        return rows, recorded, ran_in
    if ran_in is None:  # the earlier rows' environment is unknown: record none rather than claim this one
        return rows, current, None
    return rows, current, {**environment, "versions": {**ran_in["versions"], **environment["versions"]}}


def _metric(row: dict, metric: str) -> float | None:
    """A row's metric; ``active_fraction`` (the share of the head's dimensions active) derives from the counts."""
    if metric == "active_fraction" and metric not in row and {"active_dims", "dead_dims"} <= row.keys():
        return row["active_dims"] / (row["active_dims"] + row["dead_dims"])
    return row.get(metric)


def _save_rows(path: Path, rows: list[dict], args: argparse.Namespace, fixed: dict | None, environment: dict | None,
               chosen: str | None = None) -> None:
    saved = {key: value for key, value in vars(args).items() if key not in ("rerender", "results_dir")}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"rows": rows, "chosen": chosen, "args": saved, "fixed": fixed,
                                "environment": environment}, indent=2))


def _is_number(text: str) -> bool:
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


if __name__ == "__main__":
    main()
