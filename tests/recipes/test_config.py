"""Preset + override parsing used by `ncl-ext run`."""

from dataclasses import dataclass

import pytest

from ncl_ext.recipes.config import build_config
from ncl_ext.recipes.runner import format_results_table


@dataclass
class Config:
    epochs: int = 10
    lr: float = 0.1
    nonneg: str | None = "relu"
    projector: tuple[int, ...] = (2048, 256)
    compile: bool = False
    data_root: str | None = None


def test_overrides_are_typed_from_the_dataclass():
    config = build_config(
        Config, {"epochs": 3}, ["lr=0.5", "nonneg=none", "projector=64,32", "compile=true"], data_root="/d"
    )
    assert config == Config(epochs=3, lr=0.5, nonneg=None, projector=(64, 32), compile=True, data_root="/d")


def test_flags_left_as_none_keep_the_preset():
    assert build_config(Config, {"data_root": "/x"}, [], data_root=None).data_root == "/x"


@pytest.mark.parametrize(
    "override, message",
    [("epochs", "KEY=VALUE"), ("nope=1", "'nope' is not a setting"), ("epochs=ten", "epochs='ten'"),
     ("compile=maybe", "compile='maybe'")],
)
def test_bad_overrides_name_the_problem(override, message):
    with pytest.raises(ValueError, match=message):
        build_config(Config, {}, [override])


def test_results_table_has_one_row_per_run():
    table = format_results_table(
        {"recipe": "r", "preset": "p", "runs": {"cl": {"acc": 0.5, "dims": 12}, "ncl": {"acc": 0.75, "curve": [1]}}}
    )
    lines = table.splitlines()
    assert lines[2] == "| run | acc | dims |"
    assert lines[4] == "| cl | 0.5000 | 12 |" and lines[5] == "| ncl | 0.7500 | - |"
