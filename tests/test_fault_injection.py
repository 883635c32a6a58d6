"""Fault injection: the trainer SIGKILLed at every atomic write (before and after the rename) and at random moments,
then resumed, ends with every file and tensor equal to a run that was never interrupted.

Each trainer is a fresh process running `ignore-attn train` (the CLI's `main`). To spare the ~10 s of imports a new
interpreter costs on a loaded 2-core machine, the processes are forked from one server process that has imported the
library and done no computation (so fork is safe); every kill is a real SIGKILL of such a process. The kills at writes
use the trainer's own hook, IGNORE_ATTN_KILL_AT=N:before|after (see `atomic_write` in nbs/14_rundir.ipynb).
"""
from __future__ import annotations
import random
from pathlib import Path

import pytest

from ignore_attn.rundir import KILL_AT_ENV

from reliability_helpers import Commands, assert_equal, snapshot

ARGS = ("train --arch resnet8-cifar --schedule quick --epochs 2 --batch-size 32 --device cpu --quiet "
        "--n-train 256 --n-val 64 --n-test 64 --image-size 16 --augment none --workers 0").split()

class Trainers:
    "`ignore-attn train` of the tiny run, forked from one server (see reliability_helpers)."
    def __init__(self, logs: Path): self.cmds = Commands(logs)

    def run(self, out: Path, kill_at: str | None = None, kill_after: float | None = None) -> dict:
        return self.cmds.run([*ARGS, "--out", str(out)], {KILL_AT_ENV: kill_at} if kill_at else None, kill_after)

    def finish(self, out: Path) -> None:
        "Run the same command without any kill: it must resume and end normally."
        r = self.run(out)
        assert r["code"] == 0, f"resume of {out} ended with {r['code']}, {r['signal']}: {r['output'][-3000:]}"

    def close(self): self.cmds.close()


@pytest.fixture(scope="module")
def trainers(tmp_path_factory):
    t = Trainers(tmp_path_factory.mktemp("logs"))
    yield t
    t.close()


@pytest.fixture(scope="module")
def reference(trainers, tmp_path_factory):
    "The run never interrupted, and how long it took (to place the random kills)."
    out = tmp_path_factory.mktemp("ref") / "run"
    r = trainers.run(out)
    assert r["code"] == 0, r["output"][-3000:]
    snap = snapshot(out)
    assert ".lock" in snap["files"] and not [n for n in snap["files"] if ".tmp" in n]
    return snap, r["seconds"]


def test_sigkill_at_every_atomic_write_then_resume_matches(trainers, reference, tmp_path):
    ref, _ = reference
    killed, targets = [], []
    for n in range(1, 40):
        ended = False
        for when in ("before", "after"):
            out = tmp_path / f"w{n}-{when}" / "run"
            r = trainers.run(out, kill_at=f"{n}:{when}")
            if r["code"] == 0: ended = True; break   # the run made fewer than n atomic writes: all were covered
            assert r["signal"] == 9, f"write {n} {when}: {r}"
            if when == "before":  # the temp file is complete, the target untouched
                tmp = [p.name for p in out.iterdir() if ".tmp" in p.name]
                assert len(tmp) == 1, f"a kill before write {n} left temp files {tmp}"
                targets.append(tmp[0][1:].split(".tmp")[0])
            trainers.finish(out)
            assert_equal(snapshot(out), ref, f"killed {when} the rename of write {n}")
            killed.append((n, when))
        if ended: break
    # split, config, then last.pt, best.pt (if improved) and history.csv per epoch, then metrics: each a kill point
    assert ended and targets[:5] == ["split.json", "config.json", "last.pt", "best.pt", "history.csv"], targets
    assert targets[-1] == "metrics.json" and targets.count("last.pt") == 2 and len(killed) == 2 * len(targets), killed


def test_sigkill_at_random_moments_then_resume_matches(trainers, reference, tmp_path):
    ref, seconds = reference
    rng = random.Random(11)
    for chain in range(3):
        out = tmp_path / f"chain{chain}" / "run"
        for kill in range(4):  # kill again and again, each time somewhere in what is left of the run
            r = trainers.run(out, kill_after=rng.uniform(0.05, seconds))
            if r["code"] == 0: break
            assert r["signal"] == 9, r
        trainers.finish(out)
        assert_equal(snapshot(out), ref, f"chain {chain}")
