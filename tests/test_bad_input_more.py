"""Bad input (issue 18): more cases that gave a traceback or a late failure; now one clear line, exit status 2, nothing written."""
from __future__ import annotations
import errno, json, os
from pathlib import Path

import nbformat
import pytest
import torch
import yaml
from PIL import Image

from test_bad_input import ARGS, SWEEP, refused, run_cli

REPO = Path(__file__).resolve().parents[1]
FINISHED_RUN = REPO / "nbs/fixtures/quick/cluttered-digits/resnet8-cifar/se-ign3/seed0"   # has best.pt
TINY = ["--n-train", "64", "--n-val", "32", "--n-test", "32", "--batch-size", "32"]


def write_sweep(path: Path, **keys) -> Path:
    path.write_text(yaml.safe_dump({**SWEEP, **keys})); return path


def test_export_out_a_file_is_refused(tmp_path):
    a_file = tmp_path / "afile"; a_file.write_text("mine")
    refused(["export", FINISHED_RUN, "--out", a_file], "is a file, not a folder")
    assert a_file.read_text() == "mine"
    refused(["export", FINISHED_RUN, "--out", os.devnull], "is a file, not a folder")


def test_sweep_out_a_file_is_refused(tmp_path):
    a_file = tmp_path / "afile"; a_file.write_text("mine")
    refused(["sweep", write_sweep(tmp_path / "s.yaml"), "--out", a_file], "is a file, not a folder")
    assert a_file.read_text() == "mine"


@pytest.mark.parametrize("keys, expected", [
    (dict(attentions=[["se"]]), "each attention must be a spec"),
    (dict(attentions=[1]), "each attention must be a spec"),
    (dict(seeds=[2**64]), "seeds must be integers from 0 to 2**63-1"),
    (dict(device="tpu-like"), "unknown device 'tpu-like'"),
    (dict(image_size=0), "image_size must be a positive number of pixels"),
])
def test_a_sweep_value_the_kernel_would_reject_is_refused_up_front(tmp_path, keys, expected):
    refused(["sweep", write_sweep(tmp_path / "s.yaml", **keys), "--dry-run", "--out", tmp_path / "runs"], expected)
    refused(["sweep", write_sweep(tmp_path / "s.yaml", **keys), "--out", tmp_path / "runs"], expected)
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("flags, expected", [
    (["--seed", str(2**64)], "seed must be at most 2**63-1"),
    (["--device", "tpu-like"], "unknown device 'tpu-like'"),
    (["--image-size", "0"], "image_size must be a positive number of pixels"),
])
def test_a_train_value_the_kernel_would_reject_is_refused(tmp_path, flags, expected):
    args = [a for a in ARGS if a != "--image-size" and a != "16"]
    refused([*args, *flags, "--out", tmp_path / "run"], expected)
    refused([*args, *flags, "--out", tmp_path / "run", "--dry-run"], expected)
    assert not (tmp_path / "run").exists()


def test_an_unreachable_scheduler_fails_fast_without_writing(tmp_path):
    pytest.importorskip("distributed")
    refused(["sweep", write_sweep(tmp_path / "s.yaml"), "--out", tmp_path / "runs", "--scheduler", "tcp://127.0.0.1:1"],
            "cannot reach the Dask scheduler at 'tcp://127.0.0.1:1'")
    assert not (tmp_path / "runs").exists()   # no sweep.json


@pytest.mark.parametrize("text", ["[1, 2]", '{"config": [1]}', '"text"'])
def test_a_config_json_that_is_not_an_object_is_refused(tmp_path, text):
    run = tmp_path / "run"; run.mkdir()
    (run / "config.json").write_text(text)
    refused([*ARGS, *TINY, "--out", run], "not a JSON object")
    assert sorted(p.name for p in run.iterdir()) == ["config.json"] and (run / "config.json").read_text() == text
    (run / "best.pt").write_bytes((FINISHED_RUN / "best.pt").read_bytes())
    refused(["export", run, "--out", tmp_path / "export"], "not a JSON object")
    assert not (tmp_path / "export").exists()


def test_a_full_disk_while_a_checkpoint_is_written_is_one_line_and_the_run_resumes(tmp_path, monkeypatch):
    run, real_save, calls = tmp_path / "run", torch.save, []
    def full_after_one(obj, f, *a, **k):   # the first checkpoint is written, the second finds the disk full
        calls.append(1)
        if len(calls) > 1: raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_save(obj, f, *a, **k)
    monkeypatch.setattr(torch, "save", full_after_one)
    argv = [*ARGS, *TINY, "--epochs", "2", "--out", run]
    refused(argv, "no space left on the device", "resumes from its last complete epoch")
    assert not list(run.glob(".*.tmp*"))                    # no half-written checkpoint left behind
    monkeypatch.setattr(torch, "save", real_save)
    code, out, err = run_cli(argv)
    assert code == 0 and json.loads((run / "metrics.json").read_text())["status"] == "done", err


def test_an_image_over_the_decompression_bomb_limit_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)   # put back after the test
    for split in ("train", "test"):
        for c in ("a", "b"):
            d = tmp_path / "imgs" / split / c; d.mkdir(parents=True)
            for i in range(4): Image.new("RGB", (16, 16), (40 * i, 0, 0)).save(d / f"{i}.png")
    Image.new("RGB", (600, 600)).save(tmp_path / "imgs/train/b/9.png")
    monkeypatch.setenv("IGNORE_ATTN_MAX_IMAGE_PIXELS", "100000")   # 360000 pixels: over twice the limit
    argv = [*ARGS, "--dataset", "imagefolder", "--data", tmp_path / "imgs", "--val-size", "2", "--out", tmp_path / "run"]
    refused(argv, "9.png is too large for Pillow", "IGNORE_ATTN_MAX_IMAGE_PIXELS")
    assert not (tmp_path / "run").exists()
    monkeypatch.setenv("IGNORE_ATTN_MAX_IMAGE_PIXELS", "none")      # the way out the message gives
    code, out, err = run_cli(argv)
    assert code == 0, err


def test_an_empty_skeleton_file_is_found_before_training(tmp_path, monkeypatch):
    from ignore_attn import ntu_data
    monkeypatch.setenv("IGNORE_ATTN_CACHE", str(tmp_path / "cache"))
    names = [f"S001C001P{p:03d}R001A{a:03d}" for p in (1, 2, 3, 4) for a in (1, 2, 3)]
    skeletons, _ = ntu_data.write_tiny_ntu(tmp_path / "ntu", names, as_frames=True)
    (skeletons / f"{names[4]}.skeleton").write_text("")
    argv = ["train", "--dataset", "ntu", "--data", tmp_path / "ntu", "--arch", "mmtm-fusion-tiny", "--frames-rgb", "2",
            "--frames-skel", "16", "--image-size", "32", "--workers", "0", "--epochs", "2", "--batch-size", "4",
            "--device", "cpu", "--quiet", "--out", tmp_path / "run"]
    refused(argv, "1 skeleton file(s)", f"{names[4]}.skeleton", "are empty")
    assert not (tmp_path / "run" / "last.pt").exists()


def test_error_txt_starts_with_the_notebooks_own_error(tmp_path):
    from ignore_attn.sweeps import execute_run
    from ignore_attn.experiments import expand
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell("config = {}\nout_dir = '.'"); params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbformat.v4.new_code_cell("raise ValueError('the real cause, named')")]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path = tmp_path / "fails.ipynb"; nbformat.write(nb, path)
    run = expand(SWEEP, name="s")[0]
    res = execute_run(run, tmp_path / "runs", notebook=path)
    first = (tmp_path / "runs" / run.run_id / "error.txt").read_text().splitlines()[0]
    assert res["state"] == "failed" and first.startswith("ValueError: the real cause, named"), first
    assert res["error"] == first


def test_a_reachable_scheduler_address_still_runs_the_sweep(tmp_path):
    "The up-front connection is the one the sweep uses, and it is closed at the end."
    distributed = pytest.importorskip("distributed")
    from ignore_attn.experiments import expand
    from ignore_attn.sweeps import run_sweep
    from test_reliability import SWEEP as FAKE_SWEEP, THREADS, fake_notebook
    runs = expand({**FAKE_SWEEP, "attentions": ["standard"]}, name="address")
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None,
                                  env=THREADS) as cluster:
        status = run_sweep(runs, tmp_path / "runs", scheduler=cluster.scheduler_address,
                           notebook=fake_notebook(tmp_path), progress=False)
    assert status.state.tolist() == ["done"] and (tmp_path / "runs" / "sweep.json").is_file()
