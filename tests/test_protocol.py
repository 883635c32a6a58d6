"Every named sweep trains the paper's protocol: resolved once, injected whole into its notebook, written to config.json."
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ignore_attn.data import write_cifar
from ignore_attn.experiments import SWEEPS
from ignore_attn.sweeps import notebook_for, run_parameters, sweep_runs
from ignore_attn.ntu_data import write_tiny_ntu

pm = pytest.importorskip("papermill")

# The paper's protocol, written out from the paper (Sec. 4.1-4.3), not read from the presets under test.
CIFAR = dict(epochs=200, batch_size=128, lr=0.1, decay="step", milestones=[60, 120, 160], gamma=0.2, weight_decay=1e-4,
             momentum=0.9, augment="shift-flip", val_size=10000)
IMAGENET = dict(epochs=90, batch_size=256, lr=0.1, decay="step", milestones=[30, 60, 80], gamma=0.1, weight_decay=1e-4,
                momentum=0.9, augment="rrc", val_size=0)
NTU = dict(epochs=10, batch_size=8)
PAPER = {"table1": CIFAR, "table2": CIFAR, "table3": IMAGENET, "table4": NTU}
# The quick sweep is ours, not the paper's: what the README says it trains (seven seeds, each a paired comparison).
QUICK = dict(arch="resnet8-cifar", image_size=16, epochs=5, batch_size=64, lr=0.2, n_train=5000, augment="none")
QUICK_SEEDS, QUICK_METHODS = 7, ("standard", "se", "se-ign3", "se-const", "cbam", "cbam-ign3", "cbam-const")
EXPECTED = {**PAPER, "quick": QUICK}
# What only says where the run is and how fast it computes: may differ between the runner and config.json.
RUNTIME = {"out", "quiet", "device", "compile", "cuda_graphs", "channels_last", "eval_batch_size", "data_dir", "download",
           "resident", "workers"}


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    "One folder holding every data set of the named sweeps, in their real on-disk formats, just big enough."
    root = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    for dataset, classes in (("cifar10", 10), ("cifar100", 100)):   # 10,000 validate; a batch of 128 must remain
        n = 10_000 + 200
        train = (rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), np.arange(n) % classes)
        test = (rng.integers(0, 256, (classes, 32, 32, 3), dtype=np.uint8), np.arange(classes))
        write_cifar(root, dataset, train, test)
    for part, n in (("train", 130), ("val", 2)):                      # an ImageNet-style tree of two classes
        for c in ("n01440764", "n01443537"):                          # (a batch of 256 needs 256 training images)
            (root / part / c).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(root / part / c / f"{i}.jpg")
    # cross-subject: subjects 1, 2, 4, 5 train (a batch of 8 must fit after the validation holdout), 3 tests
    write_tiny_ntu(root / "ntu", [f"S001C001P{p:03d}R001A{a:03d}" for p in (1, 2, 3, 4, 5) for a in (1, 2, 3)])
    return root


def sweep_data(name: str, data_root: Path) -> str | None:
    "The --data folder of sweep `name` (the quick sweep makes its own images)."
    return None if name == "quick" else str(data_root / "ntu" if name == "table4" else data_root)


def first_runs(name: str, data_root: Path) -> list:
    "The first run of each data set of sweep `name`."
    firsts = {}
    _, runs = sweep_runs(name, sweep_data(name, data_root))
    for r in runs: firsts.setdefault(r["dataset"], r)
    return list(firsts.values())


@pytest.mark.parametrize("name", [n for n in SWEEPS if SWEEPS[n].get("enabled", True)])
def test_named_sweep_resolves_the_papers_protocol(name, data_root):
    for run in sweep_runs(name, sweep_data(name, data_root))[1]:
        got = {k: run.options[k] for k in EXPECTED[name]}
        assert got == EXPECTED[name], (run.run_id, got)


@pytest.mark.parametrize("name", [n for n in SWEEPS if SWEEPS[n].get("enabled", True)])
def test_notebook_trains_exactly_the_resolved_config(name, data_root, tmp_path, monkeypatch):
    monkeypatch.setenv("IGNORE_ATTN_CACHE", str(tmp_path / "cache"))
    for run in first_runs(name, data_root):
        d = tmp_path / run.run_id
        d.mkdir(parents=True)
        params = {**run_parameters(run, d, device="cpu"), "dry_run": True}   # checks the run, writes config.json, trains nothing
        pm.execute_notebook(str(notebook_for(run)), str(d / "train.ipynb"), parameters=params, kernel_name="python3",
                            progress_bar=False, cwd=str(d))
        saved = json.loads((d / "config.json").read_text())["config"]
        flat = {**{k: v for k, v in saved.items() if k != "data"}, **saved["data"]}
        differ = {k: (v, flat.get(k)) for k, v in run.options.items() if k not in RUNTIME and flat.get(k) != v}
        assert not differ, f"{run.run_id}: the notebook changed {differ}"
        assert {k: flat[k] for k in EXPECTED[name]} == EXPECTED[name]
        assert not (d / "metrics.json").exists() and not (d / "last.pt").exists()   # a dry run trains nothing


def test_quick_sweep_is_seven_paired_seeds_of_seven_methods():
    "The quick sweep spends its CPU time on seeds: every method on every seed, so each seed gives a paired difference."
    runs = sweep_runs("quick", None)[1]
    assert {r["seed"] for r in runs} == set(range(QUICK_SEEDS))
    assert [r["attention"] for r in runs[::QUICK_SEEDS]] == list(QUICK_METHODS)
    assert len(runs) == QUICK_SEEDS * len(QUICK_METHODS)
    assert all(r.options.get("backbone_init", "seed") == "seed" for r in runs)   # paired: the default, not overridden
