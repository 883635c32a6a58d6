"hubconf.py: the paper's models through torch.hub.load from this checkout, with local weights files; nothing downloaded."
from __future__ import annotations
import importlib.util, json, os, subprocess, sys
from pathlib import Path

import pytest
import torch

from ignore_attn.attention import count_attention
from ignore_attn.models import get_model
from ignore_attn.registry import model_entries

REPO = Path(__file__).resolve().parents[1]
torch.set_num_threads(1)  # the suite shares a small machine


@pytest.fixture
def hub_dir(tmp_path, monkeypatch):
    "torch.hub's cache in a temp folder, restored afterwards."
    old = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "hub"))
    yield tmp_path / "hub"
    torch.hub.set_dir(old)


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> tuple[dict, Path]:
    "A resnet50-cifar se-ign3 state dict (non-trivial BN statistics), saved as .pt, as a checkpoint and as .safetensors."
    torch.manual_seed(7)
    m = get_model("resnet50-cifar", 10, "se-ign3")
    with torch.no_grad():
        for b in m.modules():
            if isinstance(b, torch.nn.BatchNorm2d): b.running_mean.uniform_(-0.1, 0.1); b.running_var.uniform_(0.5, 1.5)
    state = m.state_dict()
    d = tmp_path_factory.mktemp("weights")
    torch.save(state, d / "r50.pt")
    torch.save({"format": 1, "epoch": 4, "model": state}, d / "best.pt")
    st = pytest.importorskip("safetensors.torch")
    st.save_file(state, str(d / "r50.safetensors"))
    return state, d


def load(name: str, *args, **kwargs):
    return torch.hub.load(str(REPO), name, *args, source="local", **kwargs)


def same(model, state) -> bool:
    got = model.state_dict()
    return list(got) == list(state) and all(torch.equal(got[k], v) for k, v in state.items())


@pytest.mark.parametrize("file", ["r50.pt", "best.pt", "r50.safetensors"])
def test_local_weights_load_exactly(weights, file):
    state, d = weights
    m = load("resnet50_cifar", attention="se-ign3", weights=str(d / file))
    assert same(m, state)
    ref = get_model("resnet50-cifar", 10, "se-ign3"); ref.load_state_dict(state)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad(): assert torch.equal(m.eval()(x), ref.eval()(x))


@pytest.mark.parametrize("file", ["r50.pt", "r50.safetensors"])
def test_url_weights_go_through_torch_hub(weights, hub_dir, file):
    "A file:// URL takes the download path (torch.hub's cache) without the internet."
    state, d = weights
    m = load("resnet50_cifar", "se-ign3", weights=(d / file).as_uri())
    assert same(m, state) and len(list((hub_dir / "checkpoints").glob(f"*-{file}"))) == 1   # named after a hash of the URL


def test_weights_for_another_model_are_refused(weights):
    _, d = weights
    with pytest.raises(ValueError, match=r"fc.weight: \(10, 64\) in the weights, \(100, 64\) in the model"):
        load("resnet50_cifar", attention="se-ign3", num_classes=100, weights=str(d / "r50.safetensors"))
    with pytest.raises(ValueError, match="unexpected"):
        load("resnet50_cifar", attention="standard", weights=str(d / "r50.pt"))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load("resnet50_cifar", weights=str(d / "absent.pt"))


def _hubconf():
    spec = importlib.util.spec_from_file_location("hubconf_under_test", REPO / "hubconf.py")
    hub = importlib.util.module_from_spec(spec); spec.loader.exec_module(hub)
    return hub


# Attention blocks of some entries with their default attention, counted by hand from the architectures.
KNOWN_BLOCKS = {"resnet20_cifar": 9, "resnet32_cifar": 15, "resnet44_cifar": 21, "resnet50_cifar": 24,
                "resnet56_cifar": 27, "resnet110_cifar": 54, "densenet40_cifar": 5, "resnet50": 16,
                "wrn16_4_cifar": 6, "mmtm_fusion": 3, "mmtm_fusion_tiny": 3, "ntu_rgb": 0, "ntu_skeleton": 0}


def test_every_registered_model_is_an_entry_point(monkeypatch):
    "The entry points are the registry's names (a backbone registered in its notebook needs no edit of hubconf.py)."
    hub = _hubconf()
    entries = sorted(n for n in dir(hub) if callable(getattr(hub, n)) and not n.startswith("_"))   # torch.hub.list's rule
    registered = {n.replace("-", "_"): e for n, e in model_entries("all").items()}
    assert entries == sorted([*registered, "from_export"])
    assert set(KNOWN_BLOCKS) <= set(entries)
    assert hub.dependencies == ["torch", "torchvision"]
    # torch.hub.list reads a GitHub repository: point its download step at this checkout, the rest runs as for a user
    monkeypatch.setattr(torch.hub, "_get_cache_or_reload", lambda *a, **k: str(REPO))
    assert sorted(torch.hub.list("ignore-attn/ignore-attn")) == entries and "wrn16_4_cifar" in entries


def test_every_entry_builds_its_model_with_the_registered_defaults():
    hub = _hubconf()
    with torch.device("meta"):
        for name, e in model_entries("all").items():
            fn = getattr(hub, name.replace("-", "_"))
            assert fn.__doc__.startswith(e.describe(name)) and "weights:" in fn.__doc__, name
            m = fn()
            assert count_attention(m) == count_attention(get_model(name, e.num_classes, e.attention)), name
            if fn.__name__ in KNOWN_BLOCKS: assert count_attention(m) == KNOWN_BLOCKS[fn.__name__], name
        assert getattr(hub, "resnet50")(attention="cbam-ign1(0.5)", num_classes=7).fc.out_features == 7
        assert getattr(hub, "wrn16_4_cifar")(num_classes=100).fc.out_features == 100


def test_hub_needs_only_torch_and_torchvision(weights, tmp_path):
    "The entry points import no trainer or data module: with pandas, tqdm, sklearn and yaml blocked, they still work."
    _, d = weights
    script = f"""
import sys
for name in ("pandas", "tqdm", "sklearn", "yaml", "matplotlib"): sys.modules[name] = None
import torch
m = torch.hub.load({str(REPO)!r}, "resnet50_cifar", attention="cbam-ign3", source="local")
m = torch.hub.load({str(REPO)!r}, "resnet50_cifar", attention="se-ign3", weights={str(d / 'r50.safetensors')!r}, source="local")
print("ok", type(m).__name__)
"""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert r.returncode == 0 and "ok ResNetCifar" in r.stdout, r.stderr[-2000:]
