"""`import ncl_ext` has no side effect on torch: no module hook until a head is created.

The import is checked in a fresh interpreter, since the test process has long imported
ncl_ext and patched models.
"""

import json
import subprocess
import sys
from pathlib import Path

import torch

REPOSITORY = Path(__file__).resolve().parents[2]

# Counts the entries of every process-wide hook registry of torch.nn.Module.
COUNT_HOOKS = """
import torch.nn.modules.module as torch_module

def hook_counts():
    return {name: len(value) for name, value in vars(torch_module).items()
            if name.startswith("_global_") and "hook" in name and isinstance(value, dict)}
"""


def run_python(code: str) -> dict:
    result = subprocess.run(
        [sys.executable, "-c", COUNT_HOOKS + code], cwd=REPOSITORY, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_import_ncl_ext_installs_no_torch_hook_and_loads_neither_transformers_nor_the_adapter():
    found = run_python(
        """
import json, sys
before = hook_counts()
import ncl_ext
print(json.dumps({
    "before": before,
    "after": hook_counts(),
    "loaded": sorted(m for m in ("transformers", "ncl_ext.adapters.hf") if m in sys.modules),
    "exported": all(callable(getattr(ncl_ext, name)) for name in
                    ("patch", "unpatch", "from_pretrained", "enable_auto_restore")),
}))
"""
    )
    assert "_global_module_registration_hooks" in found["before"]
    assert found["after"] == found["before"]
    assert found["loaded"] == []
    assert found["exported"]  # the HF functions are reachable, imported on first use


def test_heads_share_one_registration_hook_installed_on_demand():
    from transformers import BertConfig, BertModel

    import ncl_ext
    from ncl_ext.adapters import hf

    config = BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=37)
    ncl_ext.patch(BertModel(config))
    ncl_ext.patch(BertModel(config), mode="softplus")
    ncl_ext.enable_auto_restore()
    ncl_ext.enable_auto_restore(False)
    registered = torch.nn.modules.module._global_module_registration_hooks.values()
    assert hf._registration_hook is not None
    assert sum(hook is hf._keep_heads for hook in registered) == 1
