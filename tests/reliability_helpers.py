"""Test helpers for the reliability tests (issue 11). `Commands`: `ignore-attn` commands, each in a process of its own, forked from one server that has imported the
library (and computed nothing, so fork is safe). A fresh interpreter costs ~10 s of imports on a loaded 2-core machine;
a fork costs milliseconds. Every command is still a separate process: it can be SIGKILLed, hold a lock, race another."""
from __future__ import annotations
import csv, json, os, subprocess, sys
from pathlib import Path

import torch

from ignore_attn.rundir import load_checkpoint, lock_holder

REPO = Path(__file__).resolve().parents[1]

SERVER = r'''
import json, os, signal, sys, time
import torch
torch.set_num_threads(1)
from ignore_attn.cli import main
import ignore_attn.sweeps   # the sweep runner (it imports the experiments)
from ignore_attn.data import DataConfig, build_data
from ignore_attn.registry import get_model
# Warm up what a first run pays once (the digit glyphs, lazy imports): every forked command inherits it
build_data(DataConfig(n_train=8, n_val=8, n_test=8, image_size=16, augment="none", workers=0), batch_size=4)
get_model("resnet8-cifar", num_classes=10, attention="se-ign3")
children = {}
def report(pid, status, t0):
    return {"pid": pid, "signal": os.WTERMSIG(status) if os.WIFSIGNALED(status) else None,
            "code": os.WEXITSTATUS(status) if os.WIFEXITED(status) else None, "seconds": time.monotonic() - t0}
for line in sys.stdin:
    job = json.loads(line)
    if job["op"] == "wait":
        pid, t0 = children.pop(job["pid"])
        _, status = os.waitpid(pid, 0)
        print(json.dumps(report(pid, status, t0)), flush=True); continue
    t0 = time.monotonic()
    pid = os.fork()
    if pid == 0:  # the command, in a process of its own
        # Ctrl-C as at a terminal: a suite started in the background (`... &`) inherits SIGINT ignored, and
        # Python then never turns it into KeyboardInterrupt
        signal.signal(signal.SIGINT, signal.default_int_handler)
        fd = os.open(job["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(fd, 1); os.dup2(fd, 2)
        os.environ.update(job["env"])
        try: code = main(job["argv"])
        except SystemExit as e: code = e.code
        except BaseException:
            import traceback; traceback.print_exc(); code = 99
        sys.stdout.flush(); sys.stderr.flush()
        os._exit(code if isinstance(code, int) else 1)
    if job["op"] == "start":
        children[pid] = (pid, t0)
        print(json.dumps({"pid": pid}), flush=True); continue
    while True:  # op "run": wait for it, killing it after kill_after seconds if asked
        done, status = os.waitpid(pid, os.WNOHANG)
        if done: break
        if job["kill_after"] is not None and time.monotonic() - t0 > job["kill_after"]:
            os.kill(pid, signal.SIGKILL); _, status = os.waitpid(pid, 0); break
        time.sleep(0.002)
    print(json.dumps(report(pid, status, t0)), flush=True)
'''


class Commands:
    "A server forking one `ignore-attn ...` process per request; each command's output goes to its own log file."
    def __init__(self, logs: Path):
        env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
        env.pop("IGNORE_ATTN_KILL_AT", None)
        self.logs, self.n = Path(logs), 0
        self.logs.mkdir(parents=True, exist_ok=True)
        self.p = subprocess.Popen([sys.executable, "-c", SERVER], env=env, text=True,
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE)

    def _ask(self, job: dict) -> dict:
        self.p.stdin.write(json.dumps(job) + "\n"); self.p.stdin.flush()
        line = self.p.stdout.readline()
        assert line, "the command server died"
        return json.loads(line)

    def _job(self, op: str, argv: list[str], env: dict | None, kill_after: float | None) -> dict:
        self.n += 1
        log = self.logs / f"{self.n:03d}.log"
        return {"op": op, "argv": list(argv), "env": env or {}, "kill_after": kill_after, "log": str(log)}

    def run(self, argv: list[str], env: dict | None = None, kill_after: float | None = None) -> dict:
        "Run a command to its end (or SIGKILL it after kill_after s): {'code', 'signal', 'seconds', 'output'}."
        job = self._job("run", argv, env, kill_after)
        r = self._ask(job)
        return {**r, "output": Path(job["log"]).read_text()}

    def start(self, argv: list[str], env: dict | None = None) -> tuple[int, Path]:
        "Start a command; returns (pid, log file) for `wait`."
        job = self._job("start", argv, env, None)
        return self._ask(job)["pid"], Path(job["log"])

    def wait(self, pid: int, log: Path) -> dict:
        r = self._ask({"op": "wait", "pid": pid})
        return {**r, "output": log.read_text()}

    def close(self) -> None:
        self.p.stdin.close(); self.p.wait(timeout=60)


# What differs between any two runs: timing, timestamps, and the folder itself (config.out)
VARYING = {"img_per_s", "train_time_s", "epoch_time_s", "elapsed_s", "wall_time_s", "train_img_per_s", "created", "out"}

LOCK_HOLDER = ("import fcntl, sys, time; f = open(sys.argv[1], 'a+b'); fcntl.lockf(f, fcntl.LOCK_EX); "
               "print('locked', flush=True); time.sleep(600)")

def hold_lock(path: Path) -> subprocess.Popen:
    "A process holding the POSIX lock on `path` (as a trainer holds its run folder's), returned once it holds it."
    p = subprocess.Popen([sys.executable, "-c", LOCK_HOLDER, str(path)], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "locked"
    return p


def _strip(x):
    "Drop what differs between any two runs (VARYING), recursively."
    if isinstance(x, dict): return {k: _strip(v) for k, v in x.items() if k not in VARYING}
    if isinstance(x, (list, tuple)): return [_strip(v) for v in x]
    return x


def assert_equal(a, b, where: str = "") -> None:
    "Equal to the bit: tensors with torch.equal (and the same dtype and shape), everything else with ==."
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), f"{where}: keys {sorted(a)} != {sorted(b)}"
        for k in a: assert_equal(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), f"{where}: lengths differ"
        for i, (x, y) in enumerate(zip(a, b)): assert_equal(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def snapshot(run: Path) -> dict:
    "Everything a finished run folder holds, timing aside: file names, JSON files, history rows, checkpoint tensors."
    names = sorted(p.name for p in run.iterdir())
    with open(run / "history.csv") as f: history = list(csv.DictReader(f))
    return {"files": names, "locked": lock_holder(run / ".lock"),  # nobody holds the folder any more
            "config": _strip(json.loads((run / "config.json").read_text())),
            "split": json.loads((run / "split.json").read_text()),
            "metrics": _strip(json.loads((run / "metrics.json").read_text())),
            "history": _strip(history),
            "last": _strip(load_checkpoint(run / "last.pt")), "best": _strip(load_checkpoint(run / "best.pt"))}


