"""feature_report, the ``ncl-ext report`` command on saved files, and the plots."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from ncl_ext.analysis import (
    active_dims,
    effective_rank,
    effective_rank_entropy,
    feature_correlation,
    feature_report,
    format_table,
    plot_correlation_heatmap,
    plot_top_activating_images,
    report_command,
    semantic_consistency,
    sepin_at_k,
    sparsity,
    top_activating_samples,
    write_top_activating_texts,
)
from ncl_ext.cli import main as cli_main

# Many small tensor operations: one thread is faster than two fighting on a shared CPU.
pytestmark = pytest.mark.usefixtures("seed_and_one_thread")

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def sample_features(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(120) % 4
    z = torch.relu(torch.randn(120, 24, generator=generator) - 1.2)
    z[:, labels.unique()] += torch.eye(4)[labels] * 2.0  # dims 0-3 follow the class
    z[:, 23] = 0.0
    return z, labels


def test_feature_report_collects_the_metrics() -> None:
    z, labels = sample_features()
    report = feature_report(z, labels, sepin_samples=64)
    mean, median = feature_correlation(z)
    assert report["num_samples"] == 120 and report["num_dims"] == 24 and report["num_classes"] == 4
    assert report["sparsity"] == pytest.approx(sparsity(z), abs=1e-12)
    assert report["semantic_consistency"] == pytest.approx(semantic_consistency(z, labels))
    assert report["correlation"] == pytest.approx(mean) and report["correlation_median"] == pytest.approx(median)
    assert report["effective_rank"] == pytest.approx(effective_rank(z))
    assert report["effective_rank_entropy"] == pytest.approx(effective_rank_entropy(z))
    assert report["dead_dims"] == 1 and report["active_dims"] == len(active_dims(z)) == 23
    assert report["non_negative"] is True and report["activation_frequency_max"] <= 1.0
    sepin = {key: report[key] for key in report if key.startswith("sepin@")}
    assert sepin == sepin_at_k(z, num_samples=64)
    assert json.loads(json.dumps(report)) == report  # serialisable as is


def test_feature_report_defines_every_number_it_reports() -> None:
    z, labels = sample_features()
    report = feature_report(-z, labels, sepin_samples=32)  # signed: always <= 0
    definitions = report["definitions"]
    for key, value in report.items():
        if isinstance(value, float) and key != "definitions":
            name = "sepin@k" if key.startswith("sepin@") else key.removesuffix("_mean").removesuffix("_median")
            name = name.removesuffix("_max")
            assert name in definitions or key in definitions, key
    assert "simclr.py" in definitions["sparsity"] and "1e-05" in definitions["sparsity"]
    assert "orthogonality" in definitions["correlation"] and "erank" in definitions["effective_rank_entropy"]
    assert "32 samples" in definitions["sepin@k"]
    # Magnitudes: a non-positive copy has the same sparsity and active dims as the original.
    assert report["non_negative"] is False and report["active_dims"] == 23
    assert report["sparsity"] == pytest.approx(sparsity(z), abs=1e-12)


def test_feature_report_without_labels_or_active_dims() -> None:
    report = feature_report(torch.zeros(10, 3), sepin_samples=None)
    assert report["semantic_consistency"] is None and report["correlation"] is None
    assert report["sparsity"] == 1.0 and report["dead_dims"] == 3 and report["effective_rank"] == 0.0
    assert not any(key.startswith("sepin") for key in report) and "sepin@k" not in report["definitions"]


def test_format_table_lists_every_scalar_key() -> None:
    z, labels = sample_features()
    report = feature_report(z, labels, sepin_samples=32)
    table = format_table(report)
    for key in report:
        assert (key in table) == (key != "definitions")
    assert "n/a" in format_table({"semantic_consistency": None})


def save(array: torch.Tensor, path: Path, name: str) -> Path:
    if path.suffix == ".npy":
        np.save(path, array.numpy())
    elif path.suffix == ".safetensors":
        save_file({name: array.contiguous()}, str(path))
    else:
        torch.save(array, path)
    return path


@pytest.mark.parametrize("suffix", [".pt", ".npy", ".safetensors"])
def test_report_command_writes_json_and_plots(tmp_path: Path, suffix: str, capsys) -> None:
    z, labels = sample_features()
    features_path = save(z, tmp_path / f"features{suffix}", "features")
    labels_path = save(labels, tmp_path / f"labels{suffix}", "labels")
    report = report_command(features_path, labels_path, output=tmp_path / "out")
    written = json.loads((tmp_path / "out" / "report.json").read_text())
    assert written == report  # floats round-trip exactly through JSON
    assert written["semantic_consistency"] == pytest.approx(semantic_consistency(z, labels))
    for name in ("activation_frequency.png", "correlation_heatmap.png"):
        assert (tmp_path / "out" / name).read_bytes()[:8] == PNG_SIGNATURE
    assert "semantic_consistency" in capsys.readouterr().out


def test_report_command_default_folder_and_cli(tmp_path: Path, capsys) -> None:
    z, _ = sample_features()
    torch.save({"features": z, "step": torch.tensor(3)}, tmp_path / "feats.pt")
    assert cli_main(["report", str(tmp_path / "feats.pt")]) == 0
    assert (tmp_path / "feats_report" / "report.json").is_file()
    assert cli_main(["report", str(tmp_path / "missing.pt")]) == 2
    assert "features file not found" in capsys.readouterr().err


def test_report_command_bad_inputs(tmp_path: Path) -> None:
    z, labels = sample_features()
    with pytest.raises(FileNotFoundError, match="features file not found"):
        report_command(tmp_path / "nope.pt")
    (tmp_path / "features.csv").write_text("1,2\n")
    with pytest.raises(ValueError, match="unsupported type '.csv'"):
        report_command(tmp_path / "features.csv")
    (tmp_path / "broken.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="could not read features file"):
        report_command(tmp_path / "broken.pt")
    torch.save(torch.ones(2, 3, 4), tmp_path / "cube.pt")
    with pytest.raises(ValueError, match="must be 2-D"):
        report_command(tmp_path / "cube.pt")
    torch.save({"a": z, "b": z}, tmp_path / "two.pt")
    with pytest.raises(ValueError, match="holds several arrays"):
        report_command(tmp_path / "two.pt")
    save(z, tmp_path / "z.npy", "features")
    save(labels[:50], tmp_path / "short.npy", "labels")
    with pytest.raises(ValueError, match="has 50 entries but features have 120"):
        report_command(tmp_path / "z.npy", tmp_path / "short.npy")
    bad = z.clone()
    bad[0, 0] = float("nan")
    save(bad, tmp_path / "nan.npy", "features")
    with pytest.raises(ValueError, match="NaN"):
        report_command(tmp_path / "nan.npy")


def test_top_activating_samples_match_argsort() -> None:
    z, _ = sample_features(1)
    dims, indices = top_activating_samples(z, dims=[0, 5], per_dim=6)
    assert dims.tolist() == [0, 5]
    for row, dim in enumerate([0, 5]):
        assert indices[row].tolist() == list(np.argsort(-z[:, dim].numpy(), kind="stable")[:6])


@pytest.mark.parametrize("shape", [(120, 3, 8, 8), (120, 8, 8), (120, 1, 8, 8)])
def test_image_grid_and_heatmap_are_pngs(tmp_path: Path, shape: tuple[int, ...]) -> None:
    z, _ = sample_features(2)
    images = torch.rand(shape)
    path = plot_top_activating_images(z, images, tmp_path / "grid.png", num_dims=3, per_dim=4)
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    heatmap = plot_correlation_heatmap(z, tmp_path / "heat.png", num_dims=10)
    assert heatmap.read_bytes()[:8] == PNG_SIGNATURE
    with pytest.raises(ValueError, match="images must be"):
        plot_top_activating_images(z, torch.rand(5, 8, 8), tmp_path / "bad.png")


def test_texts_are_listed_per_dimension_in_activation_order(tmp_path: Path) -> None:
    z, _ = sample_features(3)
    texts = [f"sentence number {n}" for n in range(120)]
    path = write_top_activating_texts(z, texts, tmp_path / "dims.md", dims=[1, 2], per_dim=3)
    content = path.read_text()
    for dim in (1, 2):
        section = content.split(f"## dim {dim} ")[1].split("## dim")[0]
        top = np.argsort(-z[:, dim].numpy(), kind="stable")[:3]
        positions = [section.index(f"sentence number {n}\n") for n in top]
        assert positions == sorted(positions)
    with pytest.raises(ValueError, match="texts must be a sequence of 120 strings"):
        write_top_activating_texts(z, texts[:5], tmp_path / "bad.md")
