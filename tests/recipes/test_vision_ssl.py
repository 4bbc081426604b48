"""The vision SSL recipe end to end: offline default, CIFAR on-disk format, resume, errors, 2 processes."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from ncl_ext.cli import main
from ncl_ext.recipes import run_recipe
from tests.fake_data import write_cifar, write_png_tree

VISION_METRICS = {
    "linear_probe_acc", "knn_acc", "sparsity", "semantic_consistency", "correlation", "effective_rank",
    "active_dims", "dead_dims", "precision@10", "precision@10_ea25", "precision@10_random25",
}
TINY = ["epochs=2", "batch_size=64", "projector=64,32", "probe_epochs=5", "knn_k=5", "random_draws=2"]
FRACTIONS = ("linear_probe_acc", "knn_acc", "sparsity", "semantic_consistency", "precision@10")


def test_digits_default_writes_results_with_the_design_metric_names(tmp_path):
    results = run_recipe("vision-ssl", overrides=TINY, output=tmp_path, device="cpu")
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved == json.loads(json.dumps(results))
    assert saved["recipe"] == "vision-ssl" and saved["preset"] == "digits"
    assert set(saved["runs"]) == {"cl", "ncl"}
    for run in saved["runs"].values():
        assert set(run) >= VISION_METRICS
        assert all(0.0 <= run[name] <= 1.0 for name in FRACTIONS)
    assert saved["runs"]["ncl"]["sparsity"] > saved["runs"]["cl"]["sparsity"]
    assert (tmp_path / "results.md").read_text().count("| ncl |") == 1
    for run in ("cl", "ncl"):
        names = ("log.csv", "log.jsonl", "activation_frequency.png", "correlation.png", "top_activating_images.png")
        for name in names:
            assert (tmp_path / run / name).is_file(), name


def test_cifar10_preset_reads_the_python_batch_format(tmp_path):
    write_cifar(tmp_path / "data", "cifar10", [40] * 5, 40, 10)
    overrides = TINY + ["backbone=small_cnn", "runs=ncl", "mixed_precision=no", "channels_last=false"]
    results = run_recipe(
        "vision-ssl", preset="cifar10", overrides=overrides, data_root=str(tmp_path / "data"),
        output=tmp_path / "out", device="cpu",
    )
    assert results["config"]["dataset"] == "cifar10" and results["runs"]["ncl"]["active_dims"] <= 32


def test_imagefolder_preset_runs_on_a_folder_of_class_subfolders(tmp_path):
    write_png_tree(tmp_path / "data", ["train", "val"], ["cat", "dog"], per_class=8, size=(20, 20))
    overrides = TINY + ["batch_size=8", "image_size=16", "backbone=small_cnn", "runs=ncl", "num_workers=0",
                        "mixed_precision=no", "channels_last=false", "eval_batch_size=4"]
    results = run_recipe(
        "vision-ssl", preset="imagefolder", overrides=overrides, data_root=str(tmp_path / "data"),
        output=tmp_path / "out", device="cpu",
    )
    assert 0.0 <= results["runs"]["ncl"]["linear_probe_acc"] <= 1.0


def test_paper_presets_match_the_published_settings():
    from ncl_ext.recipes import resolve_config

    cifar, _ = resolve_config("vision-ssl", "cifar10")
    assert cifar.backbone == "resnet18_cifar" and cifar.projector == (2048, 256)
    assert (cifar.temperature, cifar.base_lr, cifar.weight_decay) == (0.2, 0.4, 1e-4)
    assert (cifar.batch_size, cifar.epochs, cifar.optimizer, cifar.nonneg) == (256, 200, "lars", "rep_relu")
    assert (cifar.lars_eta, cifar.lars_clip, cifar.warmup_epochs, cifar.warmup_start_lr) == (0.02, True, 10, 3e-5)
    assert resolve_config("vision-ssl", "cifar100")[0].epochs == 200
    imagenet, _ = resolve_config("vision-ssl", "imagenet100")
    assert imagenet.backbone == "resnet18" and imagenet.projector == (16384, 2048)
    assert (imagenet.epochs, imagenet.nonneg, imagenet.batch_size, imagenet.base_lr) == (100, "relu", 128, 0.3)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["run", "vision-ssl", "--preset", "cifar10"], "needs a data root"),
        (["run", "vision-ssl", "--preset", "cifar10", "--data-root", "/nonexistent"], "cifar-10-batches-py"),
        (["run", "vision-ssl", "--preset", "mnist"], "preset='mnist' is unknown"),
        (["run", "vision-ssl", "backbone=resnet7"], "backbone name='resnet7' is unknown"),
        (["run", "vision-ssl", "epochs=many"], "epochs='many'"),
    ],
)
def test_bad_input_is_one_clear_line(argv, message, capsys, tmp_path):
    assert main(argv + ["--output", str(tmp_path)]) == 2
    error = capsys.readouterr().err
    assert message in error and error.count("\n") == 1 and "Traceback" not in error


def _command(output, *extra):
    return [sys.executable, "-m", "ncl_ext", "run", "vision-ssl", "--device", "cpu", "--output", str(output),
            *TINY, "epochs=3", "checkpoint_every=4", *extra]


def test_killed_run_resumes_and_ends_with_the_same_numbers(tmp_path):
    environment = dict(os.environ, OMP_NUM_THREADS="1")
    subprocess.run(_command(tmp_path / "straight"), check=True, env=environment, capture_output=True)
    expected = json.loads((tmp_path / "straight" / "results.json").read_text())["runs"]

    killed = subprocess.Popen(_command(tmp_path / "killed"), env=environment,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    pointer = tmp_path / "killed" / "ncl" / "checkpoints" / "latest"
    deadline = time.time() + 300
    while not pointer.exists() and time.time() < deadline:  # kill the NCL run after its first checkpoint
        time.sleep(0.05)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert not (tmp_path / "killed" / "results.json").exists()
    resumed = subprocess.run(_command(tmp_path / "killed"), check=True, env=environment, capture_output=True, text=True)
    assert "resuming from step" in resumed.stdout + resumed.stderr
    assert json.loads((tmp_path / "killed" / "results.json").read_text())["runs"] == expected


@pytest.mark.distributed
def test_two_processes_on_gloo_complete_an_epoch_with_gathered_negatives(tmp_path):
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533",
               "-m", "ncl_ext.cli", "run", "vision-ssl", "--device", "cpu", "--output", str(tmp_path), *TINY,
               "epochs=1", "batch_size=32"]
    environment = dict(os.environ, OMP_NUM_THREADS="1")
    done = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert set(results["runs"]) == {"cl", "ncl"}
    log = [json.loads(line) for line in (tmp_path / "ncl" / "log.jsonl").read_text().splitlines()]
    from ncl_ext.data.images import load_digits

    assert log[-1]["step"] == len(load_digits().train) // 64  # global batches of 2 processes x 32
