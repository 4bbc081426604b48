"""The CE-vs-NCE recipe end to end: offline default, CIFAR and ImageNet-100 on-disk formats, SSL init, errors."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from ncl_ext.checkpoint import load_backbone_weights, load_checkpoint, save_checkpoint
from ncl_ext.cli import main
from ncl_ext.data.imagenet100 import IMAGENET100_WNIDS
from ncl_ext.data.images import load_digits
from ncl_ext.models import ContrastiveModel, NonNegativeClassifier, SmallCNN, build_backbone
from ncl_ext.recipes import resolve_config, run_recipe
from ncl_ext.recipes.supervised_nce import Config
from tests.fake_data import write_cifar, write_png_tree

RUNS = {"ce", "nce", "ce_mlp", "nce_mlp"}
METRICS = {"test_acc", "acc_curve", "sparsity", "semantic_consistency"}
TINY = ["epochs=2", "batch_size=256", "projector=32,16"]
SMALL_IMAGES = ["backbone=small_cnn", "mixed_precision=no", "channels_last=false", "projector=32,16"]


def test_digits_default_writes_the_four_runs_with_the_design_metric_names(tmp_path):
    results = run_recipe("supervised-nce", overrides=TINY, output=tmp_path, device="cpu")
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved == json.loads(json.dumps(results))
    assert saved["recipe"] == "supervised-nce" and saved["preset"] == "digits"
    assert set(saved["runs"]) == RUNS
    for name, run in saved["runs"].items():
        assert set(run) >= METRICS, name
        assert len(run["acc_curve"]) == 2 and run["acc_curve"][-1] == pytest.approx(run["test_acc"])
        assert all(0.0 <= value <= 1.0 for value in [*run["acc_curve"], run["sparsity"], run["semantic_consistency"]])
        logged = [json.loads(line) for line in (tmp_path / name / "log.jsonl").read_text().splitlines()]
        assert [record["test_acc"] for record in logged if "test_acc" in record] == run["acc_curve"]
    table = (tmp_path / "results.md").read_text()
    assert all(table.count(f"| {name} |") == 1 for name in RUNS)
    with Image.open(tmp_path / "acc_curves.png") as picture:
        assert picture.size[0] > 100
    assert (tmp_path / "acc_curves.md").read_text().count("\n") == 2 + 2

    # Reload the finished NCE run; recompute its logits as relu(f) relu(W)^T and its metrics in numpy.
    model = NonNegativeClassifier(SmallCNN(final_relu=False), 10, nonneg="relu", nonneg_weights=True)
    load_checkpoint(tmp_path / "nce" / "checkpoints", model)
    model.eval()
    test = load_digits().test
    mean, std = (torch.tensor(v).view(1, -1, 1, 1) for v in (test.mean, test.std))
    with torch.no_grad():
        features = model.penultimate((test.images.float() / 255 - mean) / std).numpy()
    logits = features @ np.maximum(model.classifier.weight.detach().numpy(), 0).T
    accuracy = float((logits.argmax(1) == test.labels.numpy()).mean())
    assert (features >= 0).all()
    assert saved["runs"]["nce"]["test_acc"] == pytest.approx(accuracy, abs=1e-6)
    assert saved["runs"]["nce"]["sparsity"] == pytest.approx(float((features <= 1e-6).mean()), abs=0.01)


def test_the_four_rows_start_from_the_same_backbone_weights(tmp_path):
    from ncl_ext.data.image_data import ImageData
    from ncl_ext.recipes.supervised_nce import build_model

    config = Config(projector=(32, 16))
    data = ImageData(config, num_views=1)
    models = {name: build_model(config, name, data) for name in ("ce", "nce", "ce_mlp")}
    for name in ("nce", "ce_mlp"):
        for key, value in models["ce"].backbone.state_dict().items():
            torch.testing.assert_close(models[name].backbone.state_dict()[key], value, rtol=0, atol=0)
    torch.testing.assert_close(models["nce"].classifier.weight, models["ce"].classifier.weight.abs(), rtol=0, atol=0)


def test_cifar10_preset_reads_the_python_batch_format(tmp_path):
    write_cifar(tmp_path / "data", "cifar10", [20] * 5, 30, 10)
    results = run_recipe(
        "supervised-nce", preset="cifar10", overrides=SMALL_IMAGES + ["epochs=1", "batch_size=25", "runs=ce,nce"],
        data_root=str(tmp_path / "data"), output=tmp_path / "out", device="cpu",
    )
    assert results["config"]["dataset"] == "cifar10" and set(results["runs"]) == {"ce", "nce"}
    assert all(0.0 <= run["test_acc"] <= 1.0 and len(run["acc_curve"]) == 1 for run in results["runs"].values())


def _ssl_checkpoint(folder, in_channels=3):
    model = ContrastiveModel(build_backbone("small_cnn", in_channels=in_channels), projector_dims=(32, 16))
    save_checkpoint(folder, model, {"step": 1})
    return model


def test_imagenet100_preset_fine_tunes_from_a_vision_ssl_checkpoint(tmp_path):
    write_png_tree(tmp_path / "data", ["train", "val"], IMAGENET100_WNIDS, per_class=1, size=(20, 20))
    ssl = _ssl_checkpoint(tmp_path / "ssl" / "checkpoints")
    overrides = SMALL_IMAGES + ["epochs=1", "batch_size=25", "image_size=16", "num_workers=0", "eval_batch_size=50",
                                "runs=ce_mlp,nce_mlp", f"init_from={tmp_path / 'ssl' / 'checkpoints'}"]
    results = run_recipe(
        "supervised-nce", preset="imagenet100", overrides=overrides, data_root=str(tmp_path / "data"),
        output=tmp_path / "out", device="cpu",
    )
    assert results["config"]["dataset"] == "imagenet100" and set(results["runs"]) == {"ce_mlp", "nce_mlp"}
    assert all(0.0 <= run["test_acc"] <= 1.0 for run in results["runs"].values())

    classifier = NonNegativeClassifier(build_backbone("small_cnn", in_channels=3), 100, nonneg="relu")
    load_backbone_weights(classifier.backbone, tmp_path / "ssl")  # the run folder works as well as its checkpoints
    for key, value in ssl.backbone.state_dict().items():
        torch.testing.assert_close(classifier.backbone.state_dict()[key], value, rtol=0, atol=0)


def test_init_from_errors_name_the_setting(tmp_path):
    classifier = NonNegativeClassifier(build_backbone("small_cnn", in_channels=3), 10)
    with pytest.raises(FileNotFoundError, match="init_from=.*no checkpoint there"):
        load_backbone_weights(classifier.backbone, tmp_path)
    _ssl_checkpoint(tmp_path / "gray", in_channels=1)
    with pytest.raises(ValueError, match="init_from=.*does not fit"):
        load_backbone_weights(classifier.backbone, tmp_path / "gray")


def test_paper_presets():
    from ncl_ext.recipes.presets import preset_names
    from ncl_ext.recipes.supervised_nce import DEFAULT_PRESET

    assert DEFAULT_PRESET == "digits"
    assert set(preset_names("supervised-nce")) == {"digits", "cifar10", "cifar100", "imagenet100"}
    imagenet, _ = resolve_config("supervised-nce", "imagenet100")
    assert imagenet.backbone == "resnet18"
    assert resolve_config("supervised-nce", "cifar10")[0].backbone == "resnet18_cifar"
    assert imagenet.init_from is None  # from scratch unless init_from is given


@pytest.mark.parametrize(
    "argv, message",
    [
        (["run", "supervised-nce", "--preset", "cifar10"], "needs a data root"),
        (["run", "supervised-nce", "runs=ce,sce"], "runs=ce,sce; expected one of 'ce', 'nce'"),
        (["run", "supervised-nce", "projector="], "projector=()"),
    ],
)
def test_bad_input_is_one_clear_line(argv, message, capsys, tmp_path):
    assert main(argv + ["--output", str(tmp_path)]) == 2
    error = capsys.readouterr().err
    assert message in error and error.count("\n") == 1 and "Traceback" not in error
