"NTU RGB+D through the trainer: the tiny two-stream model on a miniature synthetic NTU tree, on the CPU."
from __future__ import annotations
import json, os, shutil, subprocess, sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from ignore_attn import ntu_data, ntu_model
from ignore_attn.cli import main
from ignore_attn.data import DataConfig, Loader, build_data
from ignore_attn.experiments import make_train_config
from ignore_attn.models import get_model
from ignore_attn.train import TrainConfig, resolve_config
from ignore_attn.engine import evaluate, model_options, resolve_runtime, train
from ignore_attn.rundir import load_checkpoint

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "nbs" / "experiments" / "ntu.ipynb"

torch.set_num_threads(1)  # subprocesses get OMP_NUM_THREADS=1 too

# Four subjects x three actions: subject 3 is a test subject of the cross-subject protocol, the other nine samples
# train (one of them held out for validation).
NAMES = [f"S001C001P{p:03d}R001A{a:03d}" for p in (1, 2, 3, 4) for a in (1, 2, 3)]
TINY_DATA = dict(dataset="ntu", frames_rgb=2, frames_skel=16, image_size=32, workers=0)
TINY = dict(arch="mmtm-fusion-tiny", epochs=2, batch_size=4, device="cpu", quiet=True)
TINY_ARGS = ["train", "--dataset", "ntu", "--arch", "mmtm-fusion-tiny", "--frames-rgb", "2", "--frames-skel", "16",
             "--image-size", "32", "--workers", "0", "--epochs", "2", "--batch-size", "4", "--device", "cpu", "--quiet"]


@pytest.fixture(autouse=True)
def one_thread_and_private_cache(tmp_path, monkeypatch):
    "Parsed skeletons cached under tmp_path; kernels and subprocesses on one thread."
    monkeypatch.setenv("IGNORE_ATTN_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="module")
def frames_tree(tmp_path_factory) -> Path:
    "A miniature NTU tree with frame folders (no video decoder needed)."
    root = tmp_path_factory.mktemp("ntu-frames")
    ntu_data.write_tiny_ntu(root, NAMES, as_frames=True)
    return root


@pytest.fixture(scope="module")
def video_tree(tmp_path_factory) -> Path:
    "A miniature NTU tree with `_rgb.avi` videos, as the dataset ships them."
    pytest.importorskip("av")
    root = tmp_path_factory.mktemp("ntu-videos")
    ntu_data.write_tiny_ntu(root, NAMES)
    return root


def tiny(tree: Path, out: Path | None, **kw) -> TrainConfig:
    "The tiny NTU run on `tree`, writing to `out`."
    data = DataConfig(data_dir=str(tree), **TINY_DATA)
    return TrainConfig(**{**TINY, **kw, "data": data}, out=None if out is None else str(out))


# ---------------------------------------------------------------- data
def test_loader_follows_the_protocol(frames_tree):
    d = build_data(DataConfig(data_dir=str(frames_tree), **TINY_DATA), batch_size=4, seed=0)
    assert all(isinstance(l, Loader) for l in (d.train, d.val, d.test))
    assert (d.train.total_samples, d.val.total_samples, d.test.total_samples) == (8, 1, 3)
    assert all(n[8:12] == "P003" for n in d.split["test"]) and not set(d.split["val"]) & set(d.split["train"])
    d.train.set_epoch(4)
    first = [(x[0].clone(), x[1].clone(), y.clone()) for x, y in d.train]
    again = build_data(DataConfig(data_dir=str(frames_tree), **{**TINY_DATA, "workers": 2}), 4, seed=0,
                       split=json.loads(json.dumps(d.split)))
    again.train.set_epoch(4)
    for (ra, sa, ya), ((rb, sb), yb) in zip(first, again.train):     # the same batches with two worker processes
        assert torch.equal(ra, rb) and torch.equal(sa, sb) and torch.equal(ya, yb)
    again.train.set_epoch(5)
    assert not all(torch.equal(ya, yb) for (_, _, ya), (_, yb) in zip(first, again.train))
    shards = [build_data(DataConfig(data_dir=str(frames_tree), **TINY_DATA), 2, seed=0, rank=r, world_size=2)
              for r in (0, 1)]
    assert [s.train.num_samples for s in shards] == [4, 4]
    labels = [torch.cat([y for _, y in s.test]) for s in shards]
    assert sorted(torch.cat(labels).tolist()) == [0, 1, 2]           # eval shards cover the test set exactly once


def test_a_missing_video_is_reported_and_left_out(tmp_path):
    tree = tmp_path / "ntu"
    ntu_data.write_tiny_ntu(tree, NAMES, as_frames=True)
    shutil.rmtree(tree / "videos" / NAMES[0])
    with pytest.warns(UserWarning, match="12 samples requested = 8 train .* 1 missing on disk"):
        d = build_data(DataConfig(data_dir=str(tree), **TINY_DATA), batch_size=4)
    assert d.split["report"]["missing"] == 1 and NAMES[0] not in d.split["train"] + d.split["val"]


# ---------------------------------------------------------------- training
@pytest.mark.parametrize("spec", ["mmtm", "mmtm-ign1(0.5)", "mmtm-ign3"])
def test_each_fusion_variant_trains_and_tests_its_best_checkpoint(frames_tree, tmp_path, spec):
    out = tmp_path / "run"
    m = train(tiny(frames_tree, out, attention=spec))
    assert json.loads((out / "metrics.json").read_text()) == m
    assert (m["status"], m["dataset"], m["attention"], m["n_test"], m["num_classes"]) == ("done", "ntu", spec, 3, 60)
    config = json.loads((out / "config.json").read_text())
    assert config["pretrained"] == {"rgb": None, "skeleton": None}
    assert (config["config"]["schedule"], config["config"]["lr"]) == ("paper-ntu", 1e-3)
    # the test numbers are those of best.pt, the epoch best on validation
    best = load_checkpoint(out / "best.pt")
    assert best["epoch"] == m["best_epoch"]
    cfg = resolve_config(tiny(frames_tree, None, attention=spec))
    model = get_model(cfg.arch, 60, spec, **model_options(cfg))
    model.load_state_dict(best["model"])
    assert str(model.spec) == spec and sorted(model.fusion) == ["layer2", "layer3", "layer4"]
    data = build_data(cfg.data, 4, split=json.loads((out / "split.json").read_text()))
    te = evaluate(model, data.test, resolve_runtime(cfg))
    assert te["top1_err"] == m["test_top1_err"] and te["loss"] == pytest.approx(m["test_loss"], rel=1e-6)


def test_the_models_own_loss_goes_down(frames_tree, tmp_path):
    m = train(tiny(frames_tree, tmp_path / "run", epochs=6, lr=0.05))
    history = (tmp_path / "run" / "history.csv").read_text().splitlines()
    losses = [float(row.split(",")[2]) for row in history[1:]]          # mean of the two streams' cross-entropies
    accuracy = [float(row.split(",")[3]) for row in history[1:]]        # of the fused output
    assert len(losses) == 6 and losses[-1] < losses[0] - 0.1 and accuracy[-1] > accuracy[0], (losses, accuracy)
    assert m["status"] == "done"


class Killed(Exception): pass


def kill_after(epoch: int):
    def hook(e, record):
        if e == epoch: raise Killed
    return hook


def test_killed_run_resumes_to_the_same_weights_without_its_weight_files(video_tree, tmp_path):
    donor = ntu_model.BottleneckResNet(1000, width=1 / 16, blocks=(1, 1, 1, 1))
    torch.save(donor.state_dict(), tmp_path / "rgb.pt")
    straight = train(tiny(video_tree, tmp_path / "straight", rgb_weights=str(tmp_path / "rgb.pt")))
    shutil.copy(tmp_path / "rgb.pt", tmp_path / "rgb-copy.pt")
    cfg = tiny(video_tree, tmp_path / "killed", rgb_weights=str(tmp_path / "rgb-copy.pt"))
    with pytest.raises(Killed): train(cfg, on_epoch_end=kill_after(1))
    (tmp_path / "rgb-copy.pt").unlink()             # a resumed run starts from last.pt, not from the weight files
    resumed = train(cfg)
    a, b = (load_checkpoint(tmp_path / k / "last.pt") for k in ("straight", "killed"))
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    keys = ("test_top1_err", "test_loss", "best_epoch", "best_val_top1_err")
    assert [straight[k] for k in keys] == [resumed[k] for k in keys]
    pre = json.loads((tmp_path / "killed" / "config.json").read_text())["pretrained"]
    assert pre["rgb"]["loaded"] > 0 and pre["rgb"]["skipped"][0].startswith("fc.weight") and pre["skeleton"] is None


def test_says_that_streams_without_weights_train_from_scratch(frames_tree, tmp_path, capsys):
    train(tiny(frames_tree, tmp_path / "run", epochs=1))
    log = capsys.readouterr().out
    assert "no rgb weights given: the rgb stream trains from scratch" in log
    assert "--skeleton-weights FILE" in log


# ---------------------------------------------------------------- several processes, the notebook
def test_ddp_on_two_cpu_processes(frames_tree, tmp_path):
    "torchrun with two gloo processes: the model's own loss goes through DDP, the metrics count every test sample."
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).with_name("torchrun"))
    if not Path(torchrun).exists(): pytest.skip("torchrun not found next to the Python interpreter")
    out = tmp_path / "run"
    cmd = [torchrun, "--standalone", "--nproc_per_node", "2", "-m", "ignore_attn.cli", *TINY_ARGS,
           "--data", str(frames_tree), "--out", str(out)]
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    m = json.loads((out / "metrics.json").read_text())
    assert (m["world_size"], m["n_test"], m["status"]) == (2, 3, "done")


def test_experiment_notebook_under_papermill(frames_tree, tmp_path):
    pm = pytest.importorskip("papermill")
    out = tmp_path / "run"
    from ignore_attn.experiments import resolve_options
    config = resolve_options(dict(dataset="ntu", data_dir=str(frames_tree), arch="mmtm-fusion-tiny",
                                  attention="mmtm-ign1(0.5)", epochs=1, batch_size=4, device="cpu", frames_rgb=2,
                                  frames_skel=16, image_size=32, workers=0))
    params = dict(config=config, out=str(out))       # what the sweep runner injects
    pm.execute_notebook(str(NOTEBOOK), str(tmp_path / "ntu.ipynb"), parameters=params, kernel_name="python3",
                        language="python", progress_bar=False, cwd=str(tmp_path))
    m = json.loads((out / "metrics.json").read_text())
    assert (m["status"], m["arch"], m["attention"], m["epochs"]) == ("done", "mmtm-fusion-tiny", "mmtm-ign1(0.5)", 1)
    executed = (tmp_path / "ntu.ipynb").read_text()
    assert "Table 4 entry: mmtm-fusion-tiny / mmtm-ign1(0.5)" in executed and "fusion.layer4" in executed


# ---------------------------------------------------------------- bad input
def test_missing_ntu_folders_say_what_to_place_where(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        build_data(DataConfig(data_dir=str(tmp_path / "nowhere"), **TINY_DATA), 4)
    (tmp_path / "ntu").mkdir()
    with pytest.raises(FileNotFoundError, match=r"nturgb\+d_skeletons/<name>\.skeleton.*nturgb\+d_rgb/<name>_rgb\.avi"):
        train(tiny(tmp_path / "ntu", tmp_path / "run"))
    (tmp_path / "ntu" / "skeletons").mkdir()
    with pytest.raises(FileNotFoundError, match=r"no video folder nturgb\+d_rgb/ or videos/ or frames/"):
        build_data(DataConfig(data_dir=str(tmp_path / "ntu"), **TINY_DATA), 4)
    (tmp_path / "ntu" / "videos").mkdir()
    with pytest.raises(FileNotFoundError, match="holds no .skeleton files"):
        build_data(DataConfig(data_dir=str(tmp_path / "ntu"), **TINY_DATA), 4)


def test_weights_are_refused_for_other_models_and_checked_before_the_data():
    with pytest.raises(ValueError, match="rgb_weights load checkpoints into the two streams of an NTU model"):
        resolve_config(TrainConfig(arch="resnet8-cifar", rgb_weights="rgb.pt"))
    with pytest.raises(SystemExit) as e:
        main(["train", "--arch", "resnet8-cifar", "--skeleton-weights", "hcn.pt", "--dry-run"])
    assert e.value.code == 2
    with pytest.raises(FileNotFoundError, match="rgb_weights /no/such/rgb.pt is not a file"):
        train(tiny(Path("/no/such/ntu"), None, rgb_weights="/no/such/rgb.pt"))   # before the (missing) data


def test_models_and_data_must_match():
    with pytest.raises(ValueError, match="use arch 'mmtm-fusion'"):
        resolve_config(TrainConfig(arch="resnet8-cifar", data=DataConfig(dataset="ntu", data_dir="/ntu")))
    with pytest.raises(ValueError, match="use dataset 'ntu'"):
        resolve_config(TrainConfig(arch="mmtm-fusion-tiny"))
    with pytest.raises(ValueError, match="fuses its streams with MMTM"):
        get_model("mmtm-fusion-tiny", 60, "se-ign3")


def test_sweep_options_reach_the_trainer():
    cfg = make_train_config({"dataset": "ntu", "data_dir": "/ntu", "arch": "mmtm-fusion", "attention": "mmtm-ign3",
                             "schedule": "paper-ntu", "batch_size": 8, "rgb_weights": "/w/rgb.pt", "frames_rgb": 8,
                             "ntu_protocol": "xview"})
    r = resolve_config(cfg)
    assert (r.rgb_weights, r.data.ntu_protocol, r.epochs, r.batch_size, r.schedule) == ("/w/rgb.pt", "xview", 10, 8, "paper-ntu")
    assert resolve_runtime(replace(r, device="cpu")).cuda_graphs is False


def test_a_stream_trained_alone_starts_the_fusion_run(frames_tree, tmp_path, capsys):
    "`train --arch ntu-skeleton-tiny`, then its best.pt as --skeleton-weights of a fusion run: every HCN tensor loads."
    from ignore_attn.cli import main
    stream_args = [a if a != "mmtm-fusion-tiny" else "ntu-skeleton-tiny" for a in TINY_ARGS]
    assert main([*stream_args, "--data", str(frames_tree), "--out", str(tmp_path / "hcn")]) == 0
    assert "rgb" not in capsys.readouterr().out            # nothing said about a stream the model does not have
    m = json.loads((tmp_path / "hcn" / "metrics.json").read_text())
    assert (m["status"], m["arch"]) == ("done", "ntu-skeleton-tiny")
    assert main([*TINY_ARGS, "--attention", "mmtm-ign3", "--data", str(frames_tree), "--out", str(tmp_path / "fused"),
                 "--skeleton-weights", str(tmp_path / "hcn" / "best.pt")]) == 0
    pre = json.loads((tmp_path / "fused" / "config.json").read_text())["pretrained"]
    hcn_keys = len(ntu_model.HCN(60, 16, width=1 / 16, conv2_channels=16).state_dict())
    assert pre["rgb"] is None and pre["skeleton"]["loaded"] == hcn_keys and pre["skeleton"]["missing"] == []
