"""Faults a user meets, each ending in a fallback with a warning or one clear line: no traceback, no stale result.

Damaged checkpoints, bad settings for every recipe, unwritable outputs and unreadable inputs of
``ncl-ext report``. (Loss numerics, unsafe pickles and the HF patch have their own tests
beside their modules; this file covers the command line and the training loop.)
"""

import datetime
import logging
import os
import shutil
import subprocess
import sys

import pytest
import torch

from ncl_ext.checkpoint import CheckpointError, latest_checkpoint, load_checkpoint, save_checkpoint
from ncl_ext.cli import main
from ncl_ext.recipes import RECIPES
from ncl_ext.training import TensorBatches, TrainConfig, Trainer


def _train(output, epochs=2):
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    data = TensorBatches(torch.randn(32, 4, generator=torch.Generator().manual_seed(1)), batch_size=8)
    config = TrainConfig(epochs=epochs, lr=0.1, optimizer="sgd", warmup_epochs=0, checkpoint_every=2, progress=False)
    return Trainer(model, lambda model, batch: model(batch).pow(2).mean(), data, config, output).fit()


def _truncate(path):
    path.write_bytes(path.read_bytes()[: max(1, path.stat().st_size // 3)])


DAMAGE = {
    "truncated weights": lambda checkpoint: _truncate(checkpoint / "model.safetensors"),
    "empty weights": lambda checkpoint: (checkpoint / "model.safetensors").write_bytes(b""),
    "truncated optimizer state": lambda checkpoint: _truncate(checkpoint / "state.pt"),
    "truncated trainer state": lambda checkpoint: _truncate(checkpoint / "trainer_state.json"),
    "missing trainer state": lambda checkpoint: (checkpoint / "trainer_state.json").unlink(),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_latest_checkpoint_falls_back_to_the_previous_one(damage, tmp_path, caplog):
    _train(tmp_path, epochs=1)  # 4 batches: checkpoints at steps 2 and 4
    folder = tmp_path / "checkpoints"
    assert sorted(p.name for p in folder.glob("step-*")) == ["step-000000002", "step-000000004"]
    DAMAGE[damage](latest_checkpoint(folder))
    with caplog.at_level(logging.WARNING, logger="ncl_ext"):
        state = load_checkpoint(folder, torch.nn.Linear(4, 2))
    assert state["step"] == 2
    assert "step-000000004" in caplog.text and "trying the previous one" in caplog.text


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_no_usable_checkpoint_is_one_error_naming_the_file(damage, tmp_path):
    save_checkpoint(tmp_path, torch.nn.Linear(4, 2), {"step": 1}, keep=1)
    DAMAGE[damage](latest_checkpoint(tmp_path))
    with pytest.raises(CheckpointError, match="step-000000001.*--fresh"):
        load_checkpoint(tmp_path, torch.nn.Linear(4, 2))


def test_a_dangling_latest_pointer_uses_the_newest_complete_checkpoint(tmp_path):
    save_checkpoint(tmp_path, torch.nn.Linear(4, 2), {"step": 3})
    (tmp_path / "latest").write_text("step-000000099")
    assert load_checkpoint(tmp_path, torch.nn.Linear(4, 2))["step"] == 3


def test_weights_of_another_architecture_name_the_file_and_the_way_out(tmp_path):
    save_checkpoint(tmp_path, torch.nn.Linear(4, 2), {"step": 1})
    with pytest.raises(CheckpointError, match="model.safetensors does not fit the model.*--fresh"):
        load_checkpoint(tmp_path, torch.nn.Linear(4, 3))


def test_a_resumed_trainer_with_other_settings_stops_with_the_differences(tmp_path):
    _train(tmp_path, epochs=1)
    with pytest.raises(ValueError, match="epochs: 1 -> 2"):
        _train(tmp_path, epochs=2)


QUICK_GRAPH = ["epochs=2", "eval_splits=1", "hidden=8", "projection_hidden=8", "inverse_regularization=1",
               "num_nodes=80", "num_features=20"]


def test_the_command_line_reports_an_unusable_checkpoint_on_one_line(tmp_path, capsys):
    argv = ["run", "graph-contrastive", "--output", str(tmp_path), "--device", "cpu", "runs=ncl", *QUICK_GRAPH]
    assert main(argv) == 0
    shutil.rmtree(tmp_path / "ncl" / "checkpoints" / "step-000000001")  # keep only the last checkpoint
    (tmp_path / "ncl" / "run.json").unlink()  # as if killed before evaluation
    (tmp_path / "ncl" / "checkpoints" / "step-000000002" / "model.safetensors").write_bytes(b"")
    capsys.readouterr()
    assert main(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in lines if line.startswith("ncl-ext: error:")]
    assert errors == [lines[-1]] and "no usable checkpoint" in errors[0] and "model.safetensors" in errors[0]
    assert "Traceback" not in "\n".join(lines)


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_a_bogus_nonneg_mode_fails_before_anything_is_written(recipe, tmp_path, capsys):
    assert main(["run", recipe, "--output", str(tmp_path / "out"), "nonneg=bogus"]) == 2
    error = capsys.readouterr().err
    assert "nonneg='bogus'" in error and error.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_report_refuses_an_output_that_is_a_file_and_unreadable_features(tmp_path, capsys):
    features = tmp_path / "features.pt"
    torch.save(torch.rand(20, 4), features)
    existing = tmp_path / "report"
    existing.write_text("not a folder")
    assert main(["report", str(features), "--output", str(existing)]) == 2
    assert "--output" in capsys.readouterr().err and existing.read_text() == "not a folder"

    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x80\x04not a pickle at all")
    assert main(["report", str(garbage)]) == 2
    error = capsys.readouterr().err
    assert "garbage.pt" in error and "weights_only=False" not in error and error.count("\n") == 1

    pickled = tmp_path / "object.pt"
    torch.save({"features": torch.rand(3, 2), "extra": datetime.date(2020, 1, 1)}, pickled)  # not weights-only
    assert main(["report", str(pickled)]) == 2
    error = capsys.readouterr().err
    assert "object.pt" in error and "weights_only=False" not in error and "refused" in error

    assert main(["report", str(tmp_path / "missing.pt")]) == 2
    assert "missing.pt" in capsys.readouterr().err


def test_help_piped_into_a_reader_that_has_gone_ends_without_a_traceback():
    read_end, write_end = os.pipe()
    os.close(read_end)  # like `ncl-ext ... --help | head -1` once head has exited
    try:
        done = subprocess.run([sys.executable, "-m", "ncl_ext", "run", "sentence-embedding", "--help"],
                              stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=120)
    finally:
        os.close(write_end)
    assert "Traceback" not in done.stderr and "BrokenPipeError" not in done.stderr


def _entry_points():
    """(call, expected error, text the message must contain) for the public Python entry points."""
    import ncl_ext
    from ncl_ext import analysis, losses, models
    from ncl_ext.recipes import run_recipe

    z = torch.randn(4, 8)
    return {
        "nonneg mode": (lambda: ncl_ext.nonneg(z, "bogus"), ValueError, "mode='bogus'"),
        "NonNegative mode": (lambda: ncl_ext.NonNegative("bogus"), ValueError, "mode='bogus'"),
        "make_nonneg model": (lambda: ncl_ext.make_nonneg("not a module"), ValueError, "model must be"),
        "InfoNCELoss temperature": (lambda: losses.InfoNCELoss(temperature=0), ValueError, "temperature"),
        "InfoNCELoss nonneg": (lambda: losses.InfoNCELoss(nonneg="bogus"), ValueError, "nonneg='bogus'"),
        "InfoNCELoss NaN": (lambda: losses.InfoNCELoss()(z * float("nan"), z), ValueError, "z1"),
        "InfoNCELoss shapes": (lambda: losses.InfoNCELoss()(z, z[:3]), ValueError, "batch size"),
        "SpectralContrastiveLoss dead batch": (
            lambda: losses.SpectralContrastiveLoss(nonneg="relu")(-z.abs(), -z.abs()), ValueError, "z1"),
        "ClipLoss logit_scale": (lambda: losses.ClipLoss()(z, z, torch.ones(2)), ValueError, "logit_scale"),
        "NonNegativeCrossEntropyLoss labels": (
            lambda: losses.NonNegativeCrossEntropyLoss(8, 3)(z, torch.tensor([0, 1, 2, 7])), ValueError, "labels"),
        "ContrastiveModel projector": (
            lambda: models.ContrastiveModel(models.SmallCNN(), projector_dims=(0,)), ValueError, "projector_dims"),
        "build_backbone name": (lambda: models.build_backbone("resnet7"), ValueError, "resnet7"),
        "feature_report NaN": (lambda: analysis.feature_report(z * float("nan")), ValueError, "NaN"),
        "feature_report labels": (lambda: analysis.feature_report(z, [0, 1]), ValueError, "labels"),
        "retrieval_precision k": (lambda: analysis.retrieval_precision(z, [0, 1, 0, 1], k=9), ValueError, "k=9"),
        "SparseIndex backend": (lambda: analysis.SparseIndex(z.relu(), backend="gpu"), ValueError, "backend"),
        "select_top_dims fraction": (lambda: analysis.select_top_dims(z, 1.5), ValueError, "num_dims"),
        "run_recipe name": (lambda: run_recipe("bogus"), ValueError, "recipe='bogus'"),
        "run_recipe preset": (lambda: run_recipe("vision-ssl", preset="mnist"), ValueError, "preset='mnist'"),
        "run_recipe key": (lambda: run_recipe("vision-ssl", overrides=["epoch=3"]), ValueError, "'epoch'"),
        "from_pretrained path": (
            lambda: ncl_ext.from_pretrained("/no/such/model"), FileNotFoundError, "/no/such/model"),
        "load_checkpoint folder": (lambda: load_checkpoint("/no/such/run", torch.nn.Linear(2, 2)), FileNotFoundError,
                                   "/no/such/run"),
    }


@pytest.mark.parametrize("name", sorted(_entry_points()))
def test_public_entry_points_refuse_bad_input_with_a_message_naming_it(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a recipe that did start would write under runs/ here
    call, error, text = _entry_points()[name]
    with pytest.raises(error) as raised:
        call()
    assert text in str(raised.value) and "\n" not in str(raised.value).strip()
    assert not (tmp_path / "runs").exists()
