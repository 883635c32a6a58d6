"""Bad input (issue 11): one clear line, exit status 2, nothing written; untrusted CIFAR pickles never run code."""
from __future__ import annotations
import contextlib, io, json, os, pickle, subprocess, sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from ignore_attn.cli import main
from ignore_attn.data import CorruptDataError, read_cifar, write_cifar
from ignore_attn.digits import cluttered_digits

ARGS = ("train --arch resnet8-cifar --schedule quick --epochs 1 --batch-size 4 --device cpu --quiet "
        "--image-size 16 --augment none --workers 0").split()
SWEEP = dict(datasets=["cluttered-digits"], archs=["resnet8-cifar"], attentions=["standard"], seeds=[0], epochs=1,
             schedule="quick", batch_size=32, n_train=64, n_val=32, n_test=32, image_size=16, augment="none",
             workers=0, device="cpu", quiet=True)


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    "(exit status, stdout, stderr) of `ignore-attn ...` run in this process."
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try: code = main([str(a) for a in argv])
        except SystemExit as e: code = e.code
    return code, out.getvalue(), err.getvalue()


def refused(argv: list[str], *expected: str) -> str:
    "A command that must exit 2 with one error line holding every `expected` text and no traceback."
    code, out, err = run_cli(argv)
    assert code == 2, (code, out[-2000:], err[-2000:])
    lines = [l for l in err.splitlines() if l.strip() and not l.startswith("(run ") and not l.startswith("usage:")
             and not l.startswith(" ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    for e in expected: assert e in lines[0], (e, lines[0])
    return lines[0]


def image_folder(root: Path, n: int = 6) -> Path:
    "A small ImageFolder tree of 32 px JPEGs: train/<class>/*.jpg and test/<class>/*.jpg."
    from PIL import Image
    xs, ys, _ = cluttered_digits(4 * n, 0)
    for k, (x, y) in enumerate(zip(xs, ys)):
        part = "train" if k < 3 * n else "test"
        folder = root / part / f"c{int(y) % 2}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(x).save(folder / f"{k:03d}.jpg", quality=90)
    return root


# ------------------------------------------------------------ damaged data files
@pytest.mark.parametrize("resident, part", [("yes", "train"), ("no", "test")])
def test_a_corrupted_jpeg_is_named_with_what_to_do(tmp_path, monkeypatch, resident, part):
    monkeypatch.setenv("IGNORE_ATTN_CACHE", str(tmp_path / "cache"))
    data = image_folder(tmp_path / "jpg")
    bad = sorted((data / part).rglob("*.jpg"))[2]
    bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 3])  # a copy cut short
    out = tmp_path / "run"
    line = refused([*ARGS, "--dataset", "imagefolder", "--data", data, "--val-size", "2", "--resident", resident,
                    "--workers", "0" if resident == "yes" else "1", "--out", out], str(bad), "re-extract it")
    if resident == "yes": assert not out.exists()  # decoded before anything is written
    else: assert "resumes" in line and (out / "last.pt").exists()  # read by a DataLoader worker when the test set is


def test_a_truncated_cifar_batch_is_named_with_what_to_do(tmp_path):
    xs, ys, _ = cluttered_digits(30, 0)
    folder = write_cifar(tmp_path / "c10", "cifar10", (xs[:20], ys[:20]), (xs[20:], ys[20:]))
    batch = folder / "data_batch_1"
    batch.write_bytes(batch.read_bytes()[:100])
    refused([*ARGS, "--dataset", "cifar10", "--data", tmp_path / "c10", "--val-size", "2", "--out", tmp_path / "run"],
            str(batch), "re-download")
    assert not (tmp_path / "run").exists()


class _Hostile:
    "Unpickling this runs `call(*args)`: what a malicious 'CIFAR batch' would do."
    def __init__(self, call, args): self.call, self.args = call, args
    def __reduce__(self): return self.call, self.args


@pytest.mark.parametrize("call", ["os.system", "builtins.open"])
def test_a_hostile_cifar_pickle_is_refused_and_never_runs(tmp_path, call):
    xs, ys, _ = cluttered_digits(30, 0)
    folder = write_cifar(tmp_path / "c10", "cifar10", (xs[:20], ys[:20]), (xs[20:], ys[20:]))
    marker = tmp_path / "pwned"
    payload = _Hostile(os.system, (f"touch {marker}",)) if call == "os.system" else _Hostile(open, (str(marker), "w"))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": [payload]}, protocol=2))
    # It is hostile: a plain pickle.load creates the file
    subprocess.run([sys.executable, "-c", "import pickle, sys; pickle.load(open(sys.argv[1], 'rb'))",
                    str(folder / "batches.meta")], capture_output=True)
    assert marker.exists(); marker.unlink()
    with pytest.raises(CorruptDataError, match=r"batches\.meta is not a CIFAR batch: refused to build"):
        read_cifar(tmp_path / "c10", "cifar10")
    assert not marker.exists()


def test_python2_style_cifar_pickles_still_read(tmp_path):
    "Protocol-2 pickles with bytes keys, like the real files, read through the restricted unpickler."
    xs, ys, _ = cluttered_digits(30, 0)
    folder = write_cifar(tmp_path / "c10", "cifar10", (xs[:20], ys[:20]), (xs[20:], ys[20:]))
    for name in ("data_batch_1", "test_batch", "batches.meta"):
        obj = pickle.loads((folder / name).read_bytes())
        obj = {k.encode(): v for k, v in obj.items()} | {b"batch_label": b"training batch 1 of 5",
                                                           b"filenames": [b"a.png"], b"scalar": np.int64(3)}
        (folder / name).write_bytes(pickle.dumps(obj, protocol=2))
    got = read_cifar(tmp_path / "c10", "cifar10")
    assert len(got["test"][1]) == 10 and got["train"][0].shape[1:] == (3, 32, 32)


# ------------------------------------------------------------ the batch against the data (and item 8)
def test_a_batch_larger_than_the_data_is_refused_before_anything_is_written(tmp_path):
    out = tmp_path / "run"
    refused([*ARGS, "--n-train", "64", "--n-val", "32", "--n-test", "32", "--batch-size", "100000", "--out", out],
            "batch_size 100000 is larger than the 64 training images")
    assert not out.exists()


def test_a_start_that_never_finished_an_epoch_does_not_block_the_corrected_command(tmp_path):
    from ignore_attn.train import TrainConfig
    from ignore_attn.engine import setup_run
    from ignore_attn.data import DataConfig
    out = tmp_path / "run"
    data = DataConfig(n_train=64, n_val=32, n_test=32, image_size=16, augment="none", workers=0)
    run = setup_run(TrainConfig(arch="resnet8-cifar", schedule="quick", epochs=1, batch_size=4, device="cpu", quiet=True,
                                data=data, out=str(out), seed=7))
    run.run_dir.unlock()  # a start that died before its first epoch: config.json and split.json, nothing else
    assert {p.name for p in out.iterdir()} >= {"config.json", "split.json"} and not (out / "last.pt").exists()
    code, _, err = run_cli([*ARGS, "--n-train", "64", "--n-val", "32", "--n-test", "32", "--out", out])
    assert code == 0, err
    assert json.loads((out / "config.json").read_text())["config"]["seed"] == 0


# ------------------------------------------------------------ a read-only run folder
@contextlib.contextmanager
def cannot_write(folder: Path):
    "Make `folder` read-only for this process: chmod, and as root (who may write anyway) run as nobody meanwhile."
    folder.chmod(0o555)
    root = os.geteuid() == 0
    try:
        if root: os.setegid(65534); os.seteuid(65534)
        yield
    finally:
        if root: os.seteuid(0); os.setegid(0)
        folder.chmod(0o755)


def shared_tmp(tmp_path: Path) -> Path:
    "A folder under tmp_path that nobody (uid 65534) may enter, for the read-only tests."
    import tempfile
    base = Path(tempfile.mkdtemp(dir=tmp_path.parent if os.geteuid() != 0 else "/tmp"))
    base.chmod(0o777)
    return base


def test_a_read_only_run_folder_is_one_clear_line(tmp_path):
    base = shared_tmp(tmp_path)
    out = base / "run"; out.mkdir(); out.chmod(0o755)
    with cannot_write(out):
        refused([*ARGS, "--n-train", "64", "--n-val", "32", "--n-test", "32", "--out", out],
                f"cannot write into the run folder {out}", "Permission denied")
    assert list(out.iterdir()) == []


def test_a_read_only_run_folder_in_a_sweep_is_counted_and_named(tmp_path):
    from ignore_attn.experiments import expand
    base = shared_tmp(tmp_path)
    sweep = base / "s.yaml"; sweep.write_text(yaml.safe_dump(SWEEP))
    run_id = expand(SWEEP, name="s")[0].run_id
    out = base / "runs"; (out / run_id).mkdir(parents=True)
    for p in [out, *out.rglob("*")]: p.chmod(0o777)
    with cannot_write(out / run_id):
        code, log, err = run_cli(["sweep", sweep, "--out", out])
    assert code == 1 and "Traceback" not in log + err, log + err
    assert "final: 1 failed" in log and f"FAILED {run_id}: cannot write into the run folder" in log, log


# ------------------------------------------------------------ text and names that become paths
def test_a_non_utf8_data_path_names_the_flag_and_the_path(tmp_path):
    weird = os.fsdecode(bytes(tmp_path) + b"/caf\xe9")   # how Python hands over a Latin-1 name from argv
    os.mkdir(os.fsencode(weird))
    refused([*ARGS, "--dataset", "imagefolder", "--data", weird, "--out", tmp_path / "run"], "--data", "not valid UTF-8")
    sweep = tmp_path / "s.yaml"; sweep.write_text(yaml.safe_dump({**SWEEP, "datasets": ["imagefolder"]}))
    refused(["sweep", sweep, "--data", weird, "--out", tmp_path / "runs"], "data_dir", "not valid UTF-8")
    assert not (tmp_path / "run").exists() and not (tmp_path / "runs").exists()


@pytest.mark.parametrize("dry", [[], ["--dry-run"]])
def test_a_sweep_with_epochs_zero_in_words_is_refused(tmp_path, dry):
    sweep = tmp_path / "s.yaml"; sweep.write_text(yaml.safe_dump(SWEEP))
    refused(["sweep", sweep, "--epochs", "zero", "--out", tmp_path / "runs", *dry], "epochs must be an integer, got 'zero'")
    refused(["sweep", sweep, "--epochs", "0", "--out", tmp_path / "runs", *dry], "epochs must be a positive integer")
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("key, value", [("datasets", "../../escaped"), ("archs", "../up"), ("datasets", "/abs")])
def test_sweep_names_that_would_climb_out_of_out_are_refused(tmp_path, key, value):
    work = tmp_path / "a" / "b"; work.mkdir(parents=True)
    sweep = tmp_path / "evil.yaml"; sweep.write_text(yaml.safe_dump({**SWEEP, key: [value]}))
    refused(["sweep", sweep, "--out", work / "runs"], "cannot name a run folder")
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a", "b", "evil.yaml"]  # nothing written anywhere


def test_abbreviated_flags_are_not_taken_for_others(tmp_path):
    refused([*ARGS, "--epoch", "3", "--out", tmp_path / "run"], "unrecognized arguments: --epoch 3")
    sweep = tmp_path / "s.yaml"; sweep.write_text(yaml.safe_dump(SWEEP))
    refused(["sweep", sweep, "--epoch", "3", "--out", tmp_path / "runs"], "unknown key(s) 'epoch' (did you mean 'epochs'?)")
    assert not (tmp_path / "run").exists() and not (tmp_path / "runs").exists()


def test_a_failure_before_the_notebook_runs_lands_in_error_txt_and_the_summary(tmp_path, capsys):
    "The runner fails to write running.json (a folder where that name is taken): error.txt says so, the sweep counts it."
    from ignore_attn.experiments import expand
    from ignore_attn.sweeps import run_sweep
    run = expand(SWEEP, name="s")[0]
    d = tmp_path / "runs" / run.run_id
    (d / "running.json").mkdir(parents=True)
    status = run_sweep([run], tmp_path / "runs", progress=False)
    assert status.state.tolist() == ["failed"]
    assert "running.json" in (d / "error.txt").read_text()
    log = capsys.readouterr().out
    assert "final: 1 failed" in log and f"FAILED {run.run_id}: see {d / 'error.txt'}" in log, log
