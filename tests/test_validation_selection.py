"""benchmarks/validation_selection.py on the tiny digits CE-vs-NCE recipe: the rule, --require, resuming, refusals."""

import importlib.metadata
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np
import yaml

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "validation_selection.py"
FIXED = ["runs=ce,nce", "batch_size=256", "projector=16,16"]


def select(results_dir, *arguments, setting="epochs", threads=1):
    environment = dict(os.environ, OMP_NUM_THREADS=str(threads), TQDM_DISABLE="1")
    command = [sys.executable, str(SCRIPT), "supervised-nce", setting, *arguments, "--results-dir", str(results_dir)]
    return subprocess.run(command, capture_output=True, text=True, timeout=600, env=environment)


def saved(results_dir, name="selection_supervised_nce_epochs"):
    return json.loads((results_dir / f"{name}.json").read_text())


def mean_of(rows, value, run, metric):
    return float(np.mean([row[metric] for row in rows if row["value"] == value and row["run"] == run]))


def test_a_sweep_scores_held_out_training_data_picks_the_best_mean_and_resumes(tmp_path):
    done = select(tmp_path, "1", "2", "--choose", "nce:test_acc", "--seeds", "0", "1", "--set", *FIXED)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = saved(tmp_path)["rows"]
    assert {(row["value"], row["seed"], row["run"]) for row in rows} == {
        (value, seed, run) for value in ("1", "2") for seed in (0, 1) for run in ("ce", "nce")}
    assert all(0 <= row["test_acc"] <= 1 and row["seconds"] > 0 for row in rows)
    best = max(("1", "2"), key=lambda value: mean_of(rows, value, "nce", "test_acc"))
    assert saved(tmp_path)["chosen"] == best
    table = (tmp_path / "selection_supervised_nce_epochs.md").read_text()
    assert "`holdout=0.2`" in table and f"Chosen: `epochs={best}`." in table
    assert f"| 1 | nce | {mean_of(rows, '1', 'nce', 'test_acc'):.4f} |" in table

    # A new candidate extends the sweep: only its (value, seed) pairs run, the others are read back.
    extended = select(tmp_path, "1", "2", "3", "--choose", "nce:test_acc", "--seeds", "0", "1", "--set", *FIXED)
    assert extended.returncode == 0, extended.stderr[-3000:]
    assert [line.split(":")[0] for line in extended.stdout.splitlines() if " seed=" in line] == [
        "epochs=3 seed=0", "epochs=3 seed=1"]
    assert saved(tmp_path)["rows"][:len(rows)] == rows

    # Several RUN:METRIC: their mean is maximised (a shared setting tuned for both runs), from the saved rows.
    both = select(tmp_path, "1", "2", "3", "--choose", "ce:test_acc,nce:test_acc", "--seeds", "0", "1",
                  "--set", *FIXED, "--rerender")
    assert both.returncode == 0, both.stderr[-3000:]
    rows = saved(tmp_path)["rows"]
    expected = max(("1", "2", "3"),
                   key=lambda value: mean_of(rows, value, "ce", "test_acc") + mean_of(rows, value, "nce", "test_acc"))
    assert saved(tmp_path)["chosen"] == expected
    assert "highest mean of `ce:test_acc`, `nce:test_acc`" in both.stdout and " seed=" not in both.stdout

    # A misspelled metric is named, not turned into an empty choice.
    misspelled = select(tmp_path, "1", "2", "3", "--choose", "nce:test_accuracy", "--seeds", "0", "1",
                        "--set", *FIXED, "--rerender")
    assert misspelled.returncode != 0 and "check the run and metric names" in misspelled.stderr

    # A floor no value meets chooses nothing, and says so; active_fraction derives from the saved counts.
    floored = select(tmp_path, "1", "2", "3", "--choose", "nce:test_acc", "--seeds", "0", "1", "--set", *FIXED,
                     "--require", "nce:sparsity>=1.5")
    assert floored.returncode == 0, floored.stderr[-3000:]
    assert saved(tmp_path)["chosen"] is None and "Chosen: none (no value meets `nce:sparsity>=1.5`)." in floored.stdout
    alive = float(np.mean([row["active_dims"] / (row["active_dims"] + row["dead_dims"])
                           for row in rows if row["value"] == "1" and row["run"] == "nce"]))
    fraction = select(tmp_path, "1", "--choose", "nce:test_acc", "--seeds", "0", "1", "--set", *FIXED,
                      "--require", f"nce:active_fraction>={alive + 1e-6}", "--rerender")
    assert fraction.returncode == 0 and "Chosen: none (no value meets" in fraction.stdout
    assert f"| {alive:.4f} |" in fraction.stdout.split("| 1 | nce |")[1].splitlines()[0]
    absent = select(tmp_path, "1", "--choose", "nce:test_acc", "--seeds", "0", "1", "--set", *FIXED,
                    "--require", "nce:active_share>=0.5", "--rerender")
    assert absent.returncode != 0 and "holds 'active_share'" in absent.stderr

    # The sweep records the resolved settings its candidates share (the preset's, then --set) ...
    path, record = tmp_path / "selection_supervised_nce_epochs.json", saved(tmp_path)
    fixed = record["fixed"]
    preset = yaml.safe_load((SCRIPT.parents[1] / "recipes" / "supervised-nce" / "digits.yaml").read_text())
    assert fixed["base_lr"] == preset["base_lr"] and fixed["weight_decay"] == preset["weight_decay"]
    assert fixed["batch_size"] == 256 and fixed["projector"] == [16, 16] and fixed["holdout"] == 0.2
    assert "epochs" not in fixed and "seed" not in fixed

    def refused(result, message):
        assert result.returncode != 0 and message in result.stderr, result.stderr[-3000:]
        assert " seed=" not in result.stdout and saved(tmp_path) == record  # nothing ran, nothing written

    # ... and the environment its rows ran in (libraries the runs loaded included): rows from
    # another thread count or library version are refused, since the same seed gives other numbers.
    environment, torch_version = record["environment"], importlib.metadata.version("torch")
    assert environment["cpu_threads"] == 1 and environment["python"] == platform.python_version()
    assert environment["versions"]["torch"] == torch_version
    assert environment["versions"]["scikit-learn"] == importlib.metadata.version("scikit-learn")
    assert f"torch {torch_version}" in table and "1 torch threads." in table
    refused(select(tmp_path, "4", "--choose", "nce:test_acc", "--seeds", "0", "--set", *FIXED, threads=2),
            "its rows ran in another environment (cpu_threads 1 -> 2)")
    for name, installed in (("torch", torch_version), ("scikit-learn", importlib.metadata.version("scikit-learn"))):
        environment["versions"][name] = "1.0"  # scikit-learn: compared even before a run loads it
        path.write_text(json.dumps(record))
        refused(select(tmp_path, "4", "--choose", "nce:test_acc", "--seeds", "0", "--set", *FIXED),
                f"{name} 1.0 -> {installed}")
        environment["versions"][name] = installed

    # ... so new rows after a default changed are refused, and re-scoring the saved rows says so.
    record["fixed"]["base_lr"] = fixed["base_lr"] * 2
    path.write_text(json.dumps(record))
    refused(select(tmp_path, "4", "--choose", "nce:test_acc", "--seeds", "0", "--set", *FIXED),
            f"base_lr {fixed['base_lr']!r} -> {fixed['base_lr'] / 2!r}")
    rescored = select(tmp_path, "1", "2", "--choose", "nce:test_acc", "--seeds", "0", "1", "--set", *FIXED)
    assert rescored.returncode == 0 and "trained before these settings changed: base_lr" in rescored.stderr
    assert saved(tmp_path)["fixed"] == record["fixed"]

    # A sweep saved before settings were recorded can be re-scored, never extended.
    del record["fixed"]
    path.write_text(json.dumps(record))
    refused(select(tmp_path, "4", "--choose", "nce:test_acc", "--seeds", "0", "--set", *FIXED),
            "predates recorded settings")
    old = select(tmp_path, "1", "2", "--choose", "nce:test_acc", "--seeds", "0", "1", "--set", *FIXED, "--rerender")
    assert old.returncode == 0 and saved(tmp_path)["fixed"] is None
    unknown = select(tmp_path, "1", "--choose", "nce:test_acc", "--seeds", "0", setting="epoch")
    assert unknown.returncode != 0 and "'epoch' is not a setting of supervised-nce" in unknown.stderr

    # Other fixed settings under the same name would mix two sweeps' rows: refused.
    mixed = select(tmp_path, "1", "--choose", "nce:test_acc", "--seeds", "0", "--set", "runs=ce,nce")
    assert mixed.returncode != 0 and "give this one its own --name" in mixed.stderr


def test_a_candidate_whose_loss_diverges_is_recorded_and_never_chosen(tmp_path):
    done = select(tmp_path, "0.1", "1e6", "--choose", "ce:test_acc,nce:test_acc", "--seeds", "0",
                  "--set", *FIXED, "epochs=2", "warmup_epochs=0", setting="base_lr")
    assert done.returncode == 0, done.stderr[-3000:]
    result = saved(tmp_path, "selection_supervised_nce_base_lr")
    assert result["chosen"] == "0.1"
    assert [row["run"] for row in result["rows"] if row["value"] == "1e6"] == ["diverged"]
    assert "base_lr=1e6 seed=0: diverged (the loss became" in done.stdout
    assert "Diverged (the loss became NaN or Inf; never chosen): `base_lr=1e6`." in done.stdout


def test_bad_arguments_are_refused_before_any_run(tmp_path):
    for arguments, expected in (
        (["1", "--choose", "test_acc"], "expected RUN:METRIC"),
        (["1", "--choose", "nce:test_acc,test_acc"], "expected RUN:METRIC[,RUN:METRIC...]"),
        (["1", "--choose", "nce:test_acc", "--require", "nce:sparsity>0.5"], "expected RUN:METRIC>=NUMBER"),
        (["1", "--choose", "nce:test_acc", "--rerender"], "does not exist"),
    ):
        done = select(tmp_path, *arguments)
        assert done.returncode != 0 and expected in done.stderr, (arguments, done.stderr[-2000:])
    assert not list(tmp_path.iterdir())
