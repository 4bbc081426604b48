"""Every Python block of README.md and recipes/*/README.md runs as pasted, offline, in a fresh interpreter."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPOSITORY = Path(__file__).resolve().parents[1]
DOCUMENTS = [REPOSITORY / "README.md", *sorted((REPOSITORY / "recipes").glob("*/README.md"))]


def python_blocks(path: Path) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", path.read_text(encoding="utf-8"), flags=re.S | re.M)


BLOCKS = [(path, index, code) for path in DOCUMENTS for index, code in enumerate(python_blocks(path))]


def test_the_readme_has_python_blocks():
    assert len(python_blocks(REPOSITORY / "README.md")) >= 4


@pytest.mark.parametrize(
    "path, index, code", BLOCKS, ids=[f"{path.relative_to(REPOSITORY)}#{index}" for path, index, _ in BLOCKS]
)
def test_python_block_runs_as_pasted(path, index, code, tmp_path):
    environment = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1",
                       OMP_NUM_THREADS="1", MPLBACKEND="Agg")
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=environment, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, f"{path.name} block {index} failed:\n{code}\n{done.stderr[-3000:]}"
