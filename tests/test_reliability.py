"""Resume and recovery (issue 11, items 6 and 7) and Dask across machines (--out resolved on the client and checked
to be visible to the workers; one GPU device per run on a multi-GPU worker)."""
from __future__ import annotations
import json, os
from pathlib import Path

import pytest
import torch

from ignore_attn.data import DataConfig
from ignore_attn.rundir import CorruptCheckpointError, load_checkpoint
from ignore_attn.sweeps import check_workers_see, run_sweep
from ignore_attn.experiments import expand
from ignore_attn.train import TrainConfig
from ignore_attn.engine import train

from reliability_helpers import assert_equal, snapshot

torch.set_num_threads(1)
DATA = DataConfig(n_train=256, n_val=64, n_test=64, image_size=16, augment="none", workers=0)


def tiny(out: Path) -> TrainConfig:
    return TrainConfig(arch="resnet8-cifar", schedule="quick", epochs=2, batch_size=32, device="cpu", quiet=True,
                       data=DATA, out=str(out))


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    "A finished tiny run whose best epoch is not its last (the case where best.pt cannot be rebuilt from the last weights)."
    out = tmp_path_factory.mktemp("ref") / "run"
    m = train(tiny(out))
    assert m["best_epoch"] < m["epochs"], f"this test needs a run whose best epoch is not its last: {m}"
    return out


def copy_run(src: Path, dst: Path) -> Path:
    import shutil
    shutil.copytree(src, dst)
    return dst


def test_history_is_rebuilt_from_the_checkpoint(finished, tmp_path):
    "Issue 11, item 6: a kill after the last epoch's last.pt, before history.csv: the resumed history is whole."
    out = copy_run(finished, tmp_path / "run")
    (out / "metrics.json").unlink()
    lines = (out / "history.csv").read_text().splitlines()
    (out / "history.csv").write_text("\n".join(lines[:-1]) + "\n")   # one row short
    train(tiny(out))
    assert (out / "history.csv").read_text() == (finished / "history.csv").read_text()
    assert_equal(snapshot(out), snapshot(finished))


@pytest.mark.parametrize("damage", ["garbage", "deleted"])
def test_a_damaged_best_checkpoint_is_rebuilt_mid_run(finished, tmp_path, damage):
    "Issue 11, item 7: best.pt damaged (or deleted as the error advised) before the end: the run rebuilds it."
    out = copy_run(finished, tmp_path / "run")
    (out / "metrics.json").unlink()
    if damage == "garbage": (out / "best.pt").write_bytes(b"half a checkpoint")
    else: (out / "best.pt").unlink()
    train(tiny(out))
    assert_equal(snapshot(out), snapshot(finished))


def test_a_damaged_best_checkpoint_of_a_finished_run_recovers_as_advised(finished, tmp_path, capsys):
    out = copy_run(finished, tmp_path / "run")
    (out / "best.pt").write_bytes(b"half a checkpoint")
    with pytest.raises(CorruptCheckpointError, match="Delete .*best.pt and run the same command again"):
        load_checkpoint(out / "best.pt")  # what any reader of the file is told
    (out / "best.pt").unlink()          # ... and does
    train(tiny(out))
    assert "rebuilt" in capsys.readouterr().out
    assert_equal(snapshot(out), snapshot(finished))


# ------------------------------------------------------------ Dask across machines
THREADS = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
SWEEP = dict(datasets=["cluttered-digits"], archs=["resnet8-cifar"], attentions=["standard", "se-ign3"], seeds=[0],
             epochs=1, schedule="quick", batch_size=32, n_train=64, n_val=32, n_test=32, device="cpu", quiet=True)
FAKE_RUN = '''import json, time
from pathlib import Path
run = Path(out)
(run / "device.txt").write_text(str(device if device is not None else config.get("device")))
(run / "out.txt").write_text(out)
root = run.parents[3]  # <out>/<dataset>/<arch>/<attention>/seed<N>
wanted = len(json.loads((root / "sweep.json").read_text())["runs"])
t0 = time.time()  # hold the device until every run of the sweep has one: they run at the same time
while len(list(root.rglob("device.txt"))) < wanted and time.time() - t0 < 120: time.sleep(0.1)
(run / "metrics.json").write_text(json.dumps({"status": "done"}))
'''


@pytest.fixture(autouse=True)
def restored_environment():
    "A LocalCluster sets OMP_NUM_THREADS=1 and more in this process's environment for good; later tests must not inherit it."
    saved = dict(os.environ)
    yield
    os.environ.clear(); os.environ.update(saved)


def fake_notebook(tmp_path: Path) -> Path:
    "An experiment notebook that trains nothing: it records the device and folder it was given, then says done."
    nb = {"cells": [{"cell_type": "code", "metadata": {"tags": ["parameters"]}, "outputs": [], "execution_count": None,
                     "source": "out = None\ndevice = None\nconfig = {}\n", "id": "params"},
                    {"cell_type": "code", "metadata": {}, "outputs": [], "execution_count": None, "source": FAKE_RUN,
                     "id": "record"}],
          "metadata": {"kernelspec": {"name": "python3", "language": "python", "display_name": "Python 3"}},
          "nbformat": 4, "nbformat_minor": 5}
    p = tmp_path / "fake.ipynb"
    p.write_text(json.dumps(nb))
    return p


def test_each_run_on_a_multi_gpu_dask_worker_gets_its_own_device(tmp_path):
    distributed = pytest.importorskip("distributed")
    runs = expand(SWEEP, name="gpus")
    with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=True, resources={"GPU": 2},
                                  dashboard_address=None, env=THREADS) as cluster, distributed.Client(cluster) as client:
        status = run_sweep(runs, tmp_path / "runs", scheduler=client, gpu=True, notebook=fake_notebook(tmp_path),
                           progress=False)
    assert status.state.tolist() == ["done", "done"]
    assert sorted((tmp_path / "runs" / r.run_id / "device.txt").read_text() for r in runs) == ["cuda:0", "cuda:1"]


def test_a_relative_out_is_resolved_on_the_client(tmp_path, monkeypatch):
    distributed = pytest.importorskip("distributed")
    (tmp_path / "worker").mkdir(); (tmp_path / "client").mkdir()
    runs = expand({**SWEEP, "attentions": ["standard"]}, name="rel")
    monkeypatch.chdir(tmp_path / "worker")  # the worker starts here ...
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None,
                                  env=THREADS) as cluster, distributed.Client(cluster) as client:
        monkeypatch.chdir(tmp_path / "client")  # ... the sweep is started from here, with --out runs
        status = run_sweep(runs, "runs", scheduler=client, notebook=fake_notebook(tmp_path), progress=False)
    assert status.state.tolist() == ["done"]
    d = tmp_path / "client" / "runs" / runs[0].run_id
    assert (d / "out.txt").read_text() == str(d.resolve()) and not (tmp_path / "worker" / "runs").exists()


class _ElsewhereClient:
    "A client whose one worker runs on a host that mounts the shared folder elsewhere (so the client's paths are not there)."
    def __init__(self, client_root: Path, worker_root: Path): self.client_root, self.worker_root = client_root, worker_root
    def run(self, fn, path, token):
        return {"tcp://node-b:40000": fn(path.replace(str(self.client_root), str(self.worker_root)), token, wait=0)}


def test_workers_that_cannot_see_out_are_refused_by_name(tmp_path):
    (tmp_path / "mine").mkdir(); (tmp_path / "theirs").mkdir()
    with pytest.raises(ValueError, match=r"cannot see the output folder .*mine.*every worker mounts"):
        check_workers_see(_ElsewhereClient(tmp_path / "mine", tmp_path / "theirs"), tmp_path / "mine")
    assert list((tmp_path / "mine").iterdir()) == []  # the probe is gone
