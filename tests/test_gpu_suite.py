"""benchmarks/gpu_suite.py in its reduced CPU mode: every section runs and writes its table; a failure stays local."""

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.fake_data import write_cifar

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_suite.py"
SECTIONS = ("throughput", "loss_tiling", "ssl", "supervised", "folder")


def run_suite(*arguments, timeout=600):
    environment = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, str(SCRIPT), *arguments], capture_output=True, text=True,
                          timeout=timeout, env=environment)


def test_cpu_smoke_runs_every_section_and_writes_the_tables(tmp_path):
    done = run_suite("--cpu-smoke", "--results-dir", str(tmp_path))
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_suite_cpu-smoke.json").read_text())
    table = (tmp_path / "gpu_suite_cpu-smoke.md").read_text()
    assert report["mode"] == "cpu-smoke" and report["environment"]["torch"] == torch.__version__
    assert {name: outcome["status"] for name, outcome in report["sections"].items()} == dict.fromkeys(SECTIONS, "ok")
    for heading in ("(a) Training throughput", "(a') Tiled InfoNCE", "(b) Self-supervised", "(c) Supervised",
                    "(e) Image folder", "CPU smoke check", f"torch {torch.__version__}"):
        assert heading in table

    throughput = report["sections"]["throughput"]["result"]
    images_per_epoch = throughput["settings"]["images_per_epoch"]
    assert images_per_epoch == 64 // 16 * 16  # 4 steps of 16: the whole resident set, last partial batch dropped
    for run in ("cl", "ncl"):
        timing = throughput["runs"][run]
        assert len(timing["epoch_seconds"]) == 2 and timing["best_epoch_seconds"] == min(timing["epoch_seconds"])
        assert timing["images_per_second"] == pytest.approx(images_per_epoch / timing["best_epoch_seconds"])
        assert 0 < timing["last_loss"] < 10
    assert throughput["runs"]["ncl_over_cl"]["best"] > 0

    for row in report["sections"]["loss_tiling"]["result"]["rows"]:
        if row["variant"] == "tiled":  # the tiled loss computes the same value and gradients
            assert row["loss_difference"] < 1e-5 and row["gradient_difference"] < 1e-6

    ssl = report["sections"]["ssl"]["result"]["runs"]
    for run in ("cl", "ncl"):
        assert all(0 <= ssl[run][key] <= 1 for key in ("linear_probe_acc", "knn_acc", "precision@10_ea25"))
    assert ssl["cl"]["sparsity"] < 0.01 < ssl["ncl"]["sparsity"]  # only the ReLU head makes exact zeros

    supervised = report["sections"]["supervised"]["result"]["runs"]
    assert set(supervised) == {"ce", "nce", "ce_mlp", "nce_mlp"}
    assert all(len(run["acc_curve"]) == 2 and run["acc_curve"][-1] == run["test_acc"] for run in supervised.values())

    paths = report["sections"]["folder"]["result"]["paths"]
    assert (paths["dataloader"]["resident"], paths["resident"]["resident"]) == (False, True)


def test_a_failing_section_is_reported_and_the_next_one_still_runs(tmp_path):
    folder, *_ = write_cifar(tmp_path / "data", "cifar10", [2] * 5, 2, 10)
    marker = tmp_path / "marker"

    class RunsCode:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    with open(folder / "batches.meta", "wb") as handle:
        pickle.dump({"label_names": RunsCode()}, handle, protocol=2)
    done = run_suite("--cpu-smoke", "--results-dir", str(tmp_path / "out"), "--data-root", str(tmp_path / "data"),
                     "--sections", "ssl,loss_tiling")
    assert done.returncode == 0, done.stderr[-3000:]
    sections = json.loads((tmp_path / "out" / "gpu_suite_cpu-smoke.json").read_text())["sections"]
    assert sections["ssl"]["status"] == "failed" and "batches.meta" in sections["ssl"]["note"]
    assert "refused without running it" in sections["ssl"]["note"] and not marker.exists()
    assert sections["loss_tiling"]["status"] == "ok"
    assert "| ssl | failed |" in (tmp_path / "out" / "gpu_suite_cpu-smoke.md").read_text()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message given without a GPU")
def test_without_a_gpu_the_full_suite_says_how_to_run_the_smoke_check(tmp_path):
    done = run_suite("--results-dir", str(tmp_path), timeout=120)
    assert done.returncode == 2 and "--cpu-smoke" in done.stderr and not list(tmp_path.iterdir())
