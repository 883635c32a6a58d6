"""Sweeps through papermill: the quick loop, kill-and-resume, failures, the Dask backend, bad input."""
import json, os, signal, subprocess, sys, time
from pathlib import Path

import pytest
import torch
import yaml

from ignore_attn.experiments import SWEEPS, expand, load_sweep
from ignore_attn.sweeps import run_sweep, sweep_status
from ignore_attn.rundir import load_checkpoint
from reliability_helpers import hold_lock

ROOT = Path(__file__).resolve().parents[1]
# Every kernel these tests start (papermill's, the CLI's, Dask's) trains with the same number of threads, so
# runs made by different backends are the same computation to the bit. Dask would otherwise pin its workers to 1.
THREADS = os.environ.setdefault("OMP_NUM_THREADS", "2")
# A tiny sweep: 2 runs of a few seconds each on one CPU core, in float32: the tests compare weights bit for bit across
# processes whose thread counts may differ, and bf16 kernels (the CPU default where it is native) split work by thread.
TINY = dict(datasets=["cluttered-digits"], archs=["resnet8-cifar"], attentions=["standard", "se-ign3"], seeds=[0],
            epochs=3, schedule="quick", batch_size=64, n_train=192, n_val=64, n_test=64, augment="shift", amp="off",
            device="cpu", quiet=True)


def write_sweep(path: Path, **over) -> Path:
    path.write_text(yaml.safe_dump({**TINY, **over}))
    return path


def cli(*args, **kw):
    "Run `python -m ignore_attn.cli ...` in a subprocess with this repo importable."
    env = {**os.environ, "PYTHONPATH": str(ROOT)}  # same threads as the in-process sweeps: bit-equal results
    return subprocess.Popen([sys.executable, "-m", "ignore_attn.cli", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **kw)


def lock(run_dir: Path) -> dict:
    try: return json.loads((run_dir / "running.json").read_text())
    except (OSError, ValueError): return {}


def final_weights(run_dir: Path) -> dict:
    return load_checkpoint(run_dir / "last.pt")["model"]


@pytest.fixture(autouse=True)
def same_threads(monkeypatch):
    "Every run of this module computes with THREADS threads: the tests compare weights bit for bit, and a LocalCluster (or an earlier test) may leave another OMP_NUM_THREADS in this process."
    monkeypatch.setenv("OMP_NUM_THREADS", THREADS); monkeypatch.setenv("MKL_NUM_THREADS", THREADS)


@pytest.fixture(scope="module")
def tiny_done(tmp_path_factory):
    "The tiny sweep run once, uninterrupted, by the local backend."
    out = tmp_path_factory.mktemp("sweep")
    runs = expand(TINY, name="tiny")
    # the kernels get THREADS, as the Dask test's workers do: bit-equal weights need equal thread counts, and an earlier
    # test in this process may have left another OMP_NUM_THREADS in the environment
    saved = {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    os.environ.update({"OMP_NUM_THREADS": THREADS, "MKL_NUM_THREADS": THREADS})
    try: status = run_sweep(runs, out, progress=False)
    finally:
        for k, v in saved.items():
            if v is None: os.environ.pop(k, None)
            else: os.environ[k] = v
    return runs, out, status


def test_quick_sweep_through_papermill(tiny_done):
    runs, out, status = tiny_done
    assert list(status.state) == ["done", "done"]
    for r in runs:
        d = out / r.run_id
        nb = json.loads((d / "train.ipynb").read_text())  # the executed notebook is saved beside the results
        assert any("injected-parameters" in c["metadata"].get("tags", []) for c in nb["cells"])
        m = json.loads((d / "metrics.json").read_text())
        assert m["attention"] == r["attention"] and 0 <= m["test_top1_err"] <= 100
        assert len((d / "history.csv").read_text().splitlines()) == 1 + TINY["epochs"]
    sweep = json.loads((out / "sweep.json").read_text())
    assert sweep["runs"][1]["run_id"] == runs[1].run_id
    assert sweep["plan"]["runs"] == len(runs) and sweep["plan"]["train_images"] > 0   # the cost, as the dry run prints it
    # started again, a finished sweep runs nothing and changes nothing
    before = {p: p.stat().st_mtime_ns for p in out.rglob("metrics.json")}
    run_sweep(runs, out, progress=False)
    assert before == {p: p.stat().st_mtime_ns for p in out.rglob("metrics.json")}


def test_named_quick_sweep_is_the_cpu_loop():
    runs = expand(SWEEPS["quick"])
    assert {r["dataset"] for r in runs} == {"cluttered-digits"} and len(runs) >= 8
    assert {r["seed"] for r in runs} == set(range(7))  # seven paired seeds (see SWEEPS["quick"])


def test_kill_and_resume_equals_uninterrupted(tiny_done, tmp_path):
    runs, ref_out, _ = tiny_done
    sweep = write_sweep(tmp_path / "tiny.yaml")
    out = tmp_path / "runs"
    second = out / runs[1].run_id
    p = cli("sweep", str(sweep), "--out", str(out), start_new_session=True)
    try:  # kill the whole sweep (runner and kernel) once the second run has a checkpoint, mid-run
        deadline = time.time() + 240
        while not ((second / "last.pt").exists() and "kernel_pid" in lock(second)):
            assert p.poll() is None, p.stdout.read()
            assert time.time() < deadline, "the second run never wrote a checkpoint"
            time.sleep(0.02)
        kernel = lock(second)["kernel_pid"]
    finally:
        os.killpg(p.pid, signal.SIGKILL); p.wait()
    os.kill(kernel, signal.SIGKILL)  # the kernel runs in a session of its own: kill it as a job scheduler would
    assert sweep_status(runs, out).state.tolist()[0] == "done"
    assert not (second / "metrics.json").exists(), "killed too late: the second run had already finished"
    first_mtime = (out / runs[0].run_id / "metrics.json").stat().st_mtime_ns
    p = cli("sweep", str(sweep), "--out", str(out))
    log = p.communicate(timeout=300)[0]
    assert p.returncode == 0, log
    assert "1 done" in log and "starting 1" in log, log           # the finished run is skipped ...
    assert (out / runs[0].run_id / "metrics.json").stat().st_mtime_ns == first_mtime
    for r in runs:                                                 # ... and the result equals an uninterrupted sweep
        a, b = final_weights(out / r.run_id), final_weights(ref_out / r.run_id)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), r.run_id
        ma, mb = (json.loads((d / r.run_id / "metrics.json").read_text()) for d in (out, ref_out))
        assert ma["test_top1_err"] == mb["test_top1_err"]


def test_failing_run_is_recorded_and_the_rest_complete(tmp_path):
    # An experiment notebook that raises for seed 1: the sweep goes on, records it, and reports it.
    nb = json.loads((ROOT / "nbs" / "experiments" / "train.ipynb").read_text())
    body = next(c for c in nb["cells"] if c["cell_type"] == "code" and "parameters" not in c["metadata"].get("tags", []))
    body["source"] = "assert config['seed'] != 1, 'this run fails on purpose'\n" + "".join(body["source"])
    bad_nb = tmp_path / "train_fails.ipynb"
    bad_nb.write_text(json.dumps(nb))
    runs = expand({**TINY, "attentions": ["standard"], "seeds": [0, 1], "epochs": 1}, name="failing")
    status = run_sweep(runs, tmp_path / "runs", notebook=bad_nb, progress=False)
    assert status.state.tolist() == ["done", "failed"]
    err = (tmp_path / "runs" / runs[1].run_id / "error.txt").read_text()
    assert "this run fails on purpose" in err and "train.ipynb" in err
    assert (tmp_path / "runs" / runs[1].run_id / "train.ipynb").exists()
    # through the CLI: exit status 1 and the failed run named with where to look
    p = cli("sweep", str(write_sweep(tmp_path / "f.yaml", attentions=["standard"], seeds=[0, 1], epochs=1)),
            "--out", str(tmp_path / "runs"), "--notebook", str(bad_nb))
    log = p.communicate(timeout=300)[0]
    assert p.returncode == 1 and "FAILED" in log and "error.txt" in log, log


def test_dask_local_cluster_gives_the_same_results(tiny_done, tmp_path):
    distributed = pytest.importorskip("distributed")
    runs, ref_out, _ = tiny_done
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                                  env={"OMP_NUM_THREADS": THREADS, "MKL_NUM_THREADS": THREADS}) as cluster, \
            distributed.Client(cluster) as client:
        status = run_sweep(runs, tmp_path, scheduler=client, progress=False)
    assert status.state.tolist() == ["done", "done"]
    for r in runs:
        a, b = final_weights(tmp_path / r.run_id), final_weights(ref_out / r.run_id)
        assert all(torch.equal(a[k], b[k]) for k in a), r.run_id


@pytest.mark.parametrize("args, message", [
    (["sweep", "tabel1", "--out", "{tmp}/o"], "unknown sweep 'tabel1'"),
    (["sweep", "{tmp}/unknown_key.yaml", "--out", "{tmp}/o"], "unknown key(s) 'learning_rate'"),
    (["sweep", "{tmp}/bad_spec.yaml", "--out", "{tmp}/o"], "bad attention 'se-ign3(0.5)'"),
    (["sweep", "table1", "--data", "{tmp}/nowhere", "--out", "{tmp}/o"], "does not exist"),
    (["sweep", "{tmp}/missing.yaml", "--out", "{tmp}/o"], "does not exist"),
    (["reproduce", "table1", "--out", "{tmp}/o"], "pass --data DIR"),
])
def test_bad_input_refused_before_any_run(tmp_path, args, message):
    write_sweep(tmp_path / "unknown_key.yaml", learning_rate=0.1)
    write_sweep(tmp_path / "bad_spec.yaml", attentions=["se-ign3(0.5)"])
    p = cli(*[a.format(tmp=tmp_path) for a in args])
    log = p.communicate(timeout=120)[0]
    assert p.returncode == 2 and message in log, log
    assert not (tmp_path / "o").exists()


def test_restart_stops_an_orphaned_kernel_and_no_stranger(tmp_path):
    "stop_orphan kills only the kernel of a dead runner, proven by its lock, token, start time and command line."
    from ignore_attn.sweeps import stop_orphan
    from ignore_attn.rundir import process_identity
    import socket
    run_dir = tmp_path / "run"; run_dir.mkdir()
    dead_runner = subprocess.Popen([sys.executable, "-c", "pass"]); dead_runner.wait()
    # A stranger now has the pid the stale record names (issue 11, item 4): it must survive.
    stranger = subprocess.Popen(["sleep", "600"])
    (run_dir / "running.json").write_text(json.dumps(dict(pid=dead_runner.pid, host=socket.gethostname(),
                                                          token="feedc0de", kernel_pid=stranger.pid)))
    try:
        assert not stop_orphan(run_dir)
        assert stranger.poll() is None, "a stranger with the recorded pid was killed"
    finally:
        stranger.kill(); stranger.wait()
    # The real orphan: a process holding the trainer's lock, recorded with the dead runner's token.
    orphan = hold_lock(run_dir / ".lock")
    try:
        (run_dir / ".lock").write_text(json.dumps({**process_identity(orphan.pid), "runner_token": "feedc0de"}))
        assert stop_orphan(run_dir)
        assert orphan.wait(timeout=10) == -signal.SIGKILL
        assert not stop_orphan(run_dir)  # nothing left to stop: nobody holds the lock
    finally:
        if orphan.poll() is None: orphan.kill(); orphan.wait()


def test_one_run_on_several_processes_through_torchrun(tmp_path):
    # The runner's path for one large run on many GPUs, exercised on the CPU: 2 processes (gloo) via torchrun.
    from ignore_attn.sweeps import launch_command, train_run
    opts = {k: v for k, v in TINY.items() if k not in ("datasets", "archs", "attentions", "seeds")}
    opts.update(dataset="cluttered-digits", arch="resnet8-cifar", attention="se-ign3", seed=0, epochs=1)
    assert launch_command(tmp_path, 2)[1:4] == ["-m", "torch.distributed.run", "--standalone"]
    metrics = train_run(opts, tmp_path / "ddp", nproc_per_node=2)
    assert metrics["status"] == "done" and (tmp_path / "ddp" / "request.json").exists()
    assert json.loads((tmp_path / "ddp" / "config.json").read_text())["config"]["attention"] == "se-ign3"
