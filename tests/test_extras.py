"The optional extras: without the package, the module that needs it fails at once, in one line naming what to install."
from __future__ import annotations
import importlib, sys

import pytest


def _fresh_import(monkeypatch, module: str):
    "Import `module` anew (its cached copy is put back after the test)."
    monkeypatch.delitem(sys.modules, module, raising=False)
    return importlib.import_module(module)


def _one_line(e: pytest.ExceptionInfo, contains: str) -> None:
    assert contains in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_timm_missing(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)     # `import timm` now raises ModuleNotFoundError(name='timm')
    with pytest.raises(ImportError) as e: _fresh_import(monkeypatch, "ignore_attn.timm")
    _one_line(e, 'pip install "ignore-attn[timm]"')


def test_tensorboard_missing(monkeypatch, tmp_path):
    "As on a machine without tensorboard: torch.utils.tensorboard's own `import tensorboard` fails."
    for name in [n for n in sys.modules if n.startswith(("torch.utils.tensorboard", "tensorboard."))]:
        monkeypatch.delitem(sys.modules, name)       # modules imported by earlier tests would be found in the cache
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    tracking = _fresh_import(monkeypatch, "ignore_attn.tracking")     # importing the module needs no tensorboard
    assert tracking.combine(None, print) is print
    with pytest.raises(ImportError) as e: tracking.TensorBoardLogger(tmp_path)
    _one_line(e, 'pip install "ignore-attn[tensorboard]"')
    with pytest.raises(ImportError) as e: tracking.read_scalars(tmp_path)
    _one_line(e, 'pip install "ignore-attn[tensorboard]"')
    assert not (tmp_path / "tensorboard").exists()


def test_safetensors_missing(monkeypatch, tmp_path):
    import torch
    from ignore_attn.export import load_weights
    (tmp_path / "w.safetensors").write_bytes(b"x")
    monkeypatch.setitem(sys.modules, "safetensors", None)
    monkeypatch.setitem(sys.modules, "safetensors.torch", None)
    with pytest.raises(ImportError) as e: load_weights(torch.nn.Linear(2, 2), tmp_path / "w.safetensors")
    _one_line(e, "pip install safetensors")
