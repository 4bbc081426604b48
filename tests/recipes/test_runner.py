"""The recipe runner: settings checked before work, stale runs refused, finished runs skipped, provenance written."""

import json
import os
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from ncl_ext.cli import main
from ncl_ext.recipes import RECIPES, run_recipe
from ncl_ext.recipes.presets import preset_names

QUICK = ["epochs=3", "eval_splits=2", "hidden=16", "projection_hidden=16", "inverse_regularization=1,16",
         "num_nodes=150", "num_features=40"]


def graph_run(output, *extra, **kwargs):
    return run_recipe("graph-contrastive", overrides=[*QUICK, *extra], output=output, device="cpu", **kwargs)


def test_results_carry_provenance_and_the_resolved_config(tmp_path):
    results = graph_run(tmp_path)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["config"]["epochs"] == 3 and saved["training_hash"] == results["training_hash"]
    provenance = saved["provenance"]
    assert provenance["versions"]["ncl_ext"] and provenance["versions"]["torch"] and provenance["seed"] == 0
    assert {"git_commit", "device", "python"} <= set(provenance)
    assert provenance["cpu_threads"] == torch.get_num_threads()
    assert set(saved["wall_seconds"]) == {"cl", "ncl"} and all(s > 0 for s in saved["wall_seconds"].values())
    written = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert written["recipe"] == "graph-contrastive" and written["settings"]["epochs"] == 3
    assert (tmp_path / "compare.png").stat().st_size > 10_000


def test_a_changed_training_setting_stops_before_any_work_and_fresh_retrains(tmp_path, capsys):
    graph_run(tmp_path)
    before = {path: path.stat().st_mtime_ns for path in tmp_path.rglob("*") if path.is_file()}
    argv = ["run", "graph-contrastive", "--output", str(tmp_path), "--device", "cpu", *QUICK, "epochs=4"]
    assert main(argv) == 2
    error = capsys.readouterr().err
    assert "epochs: 3 -> 4" in error and "--fresh" in error and error.count("\n") == 1
    assert {path: path.stat().st_mtime_ns for path in tmp_path.rglob("*") if path.is_file()} == before

    assert main([*argv, "--fresh"]) == 0
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["config"]["epochs"] == 4
    assert json.loads((tmp_path / "ncl" / "log.jsonl").read_text().splitlines()[-1])["epoch"] == 3


def test_a_finished_run_is_skipped_and_evaluation_changes_only_re_evaluate(tmp_path):
    first = graph_run(tmp_path)
    checkpoints = sorted(p.name for p in (tmp_path / "ncl" / "checkpoints").iterdir())
    started = time.perf_counter()
    again = graph_run(tmp_path)
    assert time.perf_counter() - started < 15 and again["runs"] == first["runs"]

    re_evaluated = graph_run(tmp_path, "eval_splits=3", "runs=ncl")
    assert sorted(p.name for p in (tmp_path / "ncl" / "checkpoints").iterdir()) == checkpoints  # no training
    assert len(re_evaluated["runs"]["ncl"]["node_accs"]) == 3
    assert set(re_evaluated["runs"]) == {"ncl"}  # cl was evaluated with other settings: not reported as if it were not


def test_runs_of_one_folder_add_up(tmp_path):
    graph_run(tmp_path, "runs=cl")
    both = graph_run(tmp_path, "runs=ncl")
    assert set(both["runs"]) == {"cl", "ncl"}


def test_the_default_output_folder_names_the_settings(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    first, second = graph_run(None), graph_run(None, "temperature=0.6")
    folders = sorted(p.name for p in (tmp_path / "runs").iterdir())
    assert folders == sorted([f"graph-contrastive-synthetic-{first['training_hash']}",
                              f"graph-contrastive-synthetic-{second['training_hash']}"])


def test_config_file_repeats_a_run(tmp_path):
    first = graph_run(tmp_path / "a")
    repeated = run_recipe("graph-contrastive", config_file=tmp_path / "a" / "config.yaml", output=tmp_path / "b",
                          device="cpu")
    assert repeated["runs"] == first["runs"] and repeated["training_hash"] == first["training_hash"]


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_every_recipe_explains_itself(recipe, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["run", recipe, "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert all(preset in text for preset in preset_names(recipe)) and "(default)" in text
    assert "settings (key=value" in text and "default" in text
    for preset in preset_names(recipe):
        if main(["run", recipe, "--preset", preset, "--dry-run"]) == 2:  # a preset that needs a value of the user's
            assert "needs" in capsys.readouterr().err
            continue
        printed = yaml.safe_load(capsys.readouterr().out)
        assert printed["recipe"] == recipe and printed["preset"] == preset and printed["settings"]


def test_the_cifar_dry_run_shows_the_official_lars():
    printed = subprocess.run(
        [sys.executable, "-m", "ncl_ext", "run", "vision-ssl", "--preset", "cifar10", "--dry-run"],
        capture_output=True, text=True, check=True,
    ).stdout
    optimizer = yaml.safe_load(printed)["derived"]["optimizer"]
    assert optimizer["name"] == "lars" and optimizer["trust_coefficient"] == 0.02 and optimizer["trust_clip"] is True
    assert "biases and normalisation weights" in optimizer["lars_excludes"]


@pytest.mark.parametrize(
    "override, message",
    [("nonneg=bogus", "nonneg='bogus'"), ("temperature=0", "temperature=0.0; expected a number > 0"),
     ("runs=cl,both", "runs=cl,both; expected one of"), ("drop_edge=0.2,1.5", "drop_edge=0.2,1.5"),
     ("hidden=0", "hidden=0"), ("train_fraction=0.95", "sum < 1")],
)
def test_bad_settings_fail_before_any_folder_is_written(override, message, tmp_path, capsys):
    output = tmp_path / "out"
    assert main(["run", "graph-contrastive", "--output", str(output), override]) == 2
    error = capsys.readouterr().err
    assert message in error and error.count("\n") == 1 and "Traceback" not in error
    assert not output.exists()


def test_an_unwritable_or_file_shadowed_output_fails_before_training(tmp_path, capsys):
    shadow = tmp_path / "file"
    shadow.write_text("x")
    assert main(["run", "graph-contrastive", "--output", str(shadow / "out"), *QUICK]) == 2
    assert "not a writable folder" in capsys.readouterr().err
    assert main(["run", "graph-contrastive", "--output", str(shadow), *QUICK]) == 2
    assert "is a file" in capsys.readouterr().err
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(stat.S_IREAD | stat.S_IEXEC)
        assert main(["run", "graph-contrastive", "--output", str(locked / "out"), *QUICK]) == 2
        assert "not a writable folder" in capsys.readouterr().err


def test_presets_ship_in_a_non_editable_install(tmp_path):
    # Build from a copy, so the checkout gets no build/ folder.
    repository = Path(__file__).resolve().parents[2]
    source, target = tmp_path / "source", tmp_path / "site"
    shutil.copytree(repository, source, ignore=shutil.ignore_patterns(".git", "build", "runs", "*.egg-info",
                                                                          "__pycache__", ".pytest_cache"))
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--quiet", "--target",
         str(target), str(source)],
        check=True, capture_output=True,
    )
    assert (target / "ncl_ext" / "presets" / "vision-ssl" / "cifar10.yaml").is_file()
    printed = subprocess.run(
        [sys.executable, "-m", "ncl_ext", "run", "vision-ssl", "--preset", "cifar10", "--dry-run"],
        capture_output=True, text=True, check=True, cwd=tmp_path, env=dict(os.environ, PYTHONPATH=str(target)),
    )
    assert yaml.safe_load(printed.stdout)["settings"]["projector"] == [2048, 256]
    located = subprocess.run([sys.executable, "-c", "import ncl_ext; print(ncl_ext.__file__)"], capture_output=True,
                             text=True, check=True, cwd=tmp_path, env=dict(os.environ, PYTHONPATH=str(target)))
    assert located.stdout.startswith(str(target))
