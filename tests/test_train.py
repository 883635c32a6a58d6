"Integration tests of the trainer and `ignore-attn train`: learning, resuming, refusing, failing clearly."
from __future__ import annotations
import hashlib, json, os, shutil, signal, subprocess, sys, time
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from ignore_attn.cli import main
from ignore_attn.data import DataConfig
from ignore_attn import train as tr
from ignore_attn.rundir import CorruptCheckpointError, RunDirConflict, load_checkpoint
from ignore_attn.train import TrainConfig
from ignore_attn.engine import train

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("IGNORE_ATTN_SHARED", REPO.parent / "shared"))
CIFAR_JPG = SHARED / "data" / "cifar10-jpg"

torch.set_num_threads(1)  # the subprocesses get OMP_NUM_THREADS=1: same arithmetic, bit for bit

# A run small enough to train in about a second: 16 px Cluttered Digits, the smallest CIFAR ResNet.
TINY_DATA = DataConfig(n_train=256, n_val=64, n_test=64, image_size=16, augment="none", workers=0)
TINY = dict(arch="resnet8-cifar", schedule="quick", epochs=3, batch_size=32, device="cpu", quiet=True, data=TINY_DATA)
TINY_ARGS = ("train --arch resnet8-cifar --schedule quick --epochs 3 --batch-size 32 --device cpu --quiet "
             "--n-train 256 --n-val 64 --n-test 64 --image-size 16 --augment none --workers 0").split()


def tiny(out: Path, **kw) -> TrainConfig:
    "The tiny run, writing to `out`."
    return TrainConfig(**{**TINY, **kw}, out=str(out))


def subprocess_env(tmp_path: Path) -> dict:
    "Environment for `python -m ignore_attn.cli` from this checkout, one thread, cache in tmp_path."
    return {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
            "OMP_NUM_THREADS": "1", "IGNORE_ATTN_CACHE": str(tmp_path / "cache")}


def folder_digest(folder: Path) -> dict:
    "SHA-1 of every file in a folder, to prove that nothing changed."
    return {p.name: hashlib.sha1(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def assert_same_run(a: Path, b: Path) -> None:
    "Two finished run folders hold the same final weights, optimiser state, history numbers and test result."
    ca, cb = load_checkpoint(a / "last.pt"), load_checkpoint(b / "last.pt")
    assert ca["epoch"] == cb["epoch"]
    assert ca["model"].keys() == cb["model"].keys()
    for k in ca["model"]: assert torch.equal(ca["model"][k], cb["model"][k]), k
    for (ka, sa), (kb, sb) in zip(ca["optimizer"]["state"].items(), cb["optimizer"]["state"].items()):
        assert torch.equal(sa["momentum_buffer"], sb["momentum_buffer"]), ka
    timing = ("img_per_s", "train_time_s", "epoch_time_s")
    strip = lambda h: [{k: v for k, v in r.items() if k not in timing} for r in h]
    assert strip(ca["history"]) == strip(cb["history"])
    ma, mb = (json.loads((p / "metrics.json").read_text()) for p in (a, b))
    for k in ("test_top1_err", "test_top5_err", "test_loss", "best_epoch", "best_val_top1_err"): assert ma[k] == mb[k], k
    ba, bb = load_checkpoint(a / "best.pt"), load_checkpoint(b / "best.pt")
    assert ba["epoch"] == bb["epoch"] and all(torch.equal(ba["model"][k], bb["model"][k]) for k in ba["model"])


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    "The tiny run, never interrupted."
    out = tmp_path_factory.mktemp("ref") / "run"
    train(tiny(out))
    return out


# ---------------------------------------------------------------- learning
def test_cluttered_digits_quick_run_learns(tmp_path):
    "A few CPU epochs of a small CIFAR ResNet on Cluttered Digits reach high accuracy on unseen handwriting."
    data = DataConfig(n_train=4000, n_val=500, n_test=1000, image_size=16, augment="none", workers=0)
    m = train(TrainConfig(arch="resnet8-cifar", schedule="quick", epochs=7, batch_size=64, device="cpu", quiet=True,
                          data=data, out=str(tmp_path / "run")))
    assert m["status"] == "done" and m["n_test"] == 1000
    assert m["test_top1_err"] < 25, m          # chance is 90 % error; measured about 12-18 %
    assert m["test_top5_err"] < 5, m
    files = {"config.json", "split.json", "history.csv", "metrics.json", "last.pt", "best.pt"}
    assert files <= set(os.listdir(tmp_path / "run"))
    lines = (tmp_path / "run" / "history.csv").read_text().splitlines()
    assert lines[0].startswith("epoch,lr,train_loss,train_top1,val_loss,val_top1,val_top5,img_per_s") and len(lines) == 8
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["config"]["epochs"] == 7 and config["versions"]["torch"] == torch.__version__
    for k in ("test_top1_err", "test_top5_err", "best_epoch", "best_val_top1_err", "wall_time_s", "train_img_per_s",
              "num_params", "attention", "arch", "dataset", "seed", "status"):
        assert k in m, k


def test_real_cifar10_jpegs_beat_chance(tmp_path, monkeypatch):
    "On the real CIFAR-10 images a small CIFAR ResNet trained a few epochs on 4,000 of them beats chance widely."
    if not (CIFAR_JPG / "train").is_dir():
        pytest.skip(f"CIFAR-10 JPEGs not found at {CIFAR_JPG} (set IGNORE_ATTN_SHARED to the shared folder)")
    monkeypatch.setenv("IGNORE_ATTN_CACHE", str(tmp_path / "cache"))
    # 16 px (images downsampled) keeps this under a minute on one core; 32 px gives about the same accuracy in 2x the time
    data = DataConfig(dataset="imagefolder", data_dir=str(CIFAR_JPG), val_size=5000, limit_train=4000, limit_val=500,
                      limit_test=1000, image_size=16, augment="none", workers=0)
    m = train(TrainConfig(arch="resnet8-cifar", schedule="quick", epochs=6, batch_size=64, device="cpu", quiet=True,
                          data=data, out=str(tmp_path / "run")))
    assert m["n_test"] == 1000 and m["num_classes"] == 10
    assert m["test_top1_err"] < 65, m          # chance: 90 % error; measured about 55 %


# ---------------------------------------------------------------- resuming
class Killed(Exception):
    "Stands for the process dying."


def die_after(k: int):
    "An epoch hook that 'kills' the run once epoch k is complete."
    def hook(epoch, record):
        if epoch == k: raise Killed(f"killed after epoch {k}")
    return hook


def test_killed_after_an_epoch_resumes_to_the_same_weights(reference, tmp_path):
    "Killed after epoch 1 (an exception from the epoch hook), the same command finishes with identical weights."
    with pytest.raises(Killed): train(tiny(tmp_path / "run"), on_epoch_end=die_after(1))
    assert load_checkpoint(tmp_path / "run" / "last.pt")["epoch"] == 1
    assert not (tmp_path / "run" / "metrics.json").exists()
    train(tiny(tmp_path / "run"))
    assert_same_run(reference, tmp_path / "run")


@pytest.mark.parametrize("target,nth", [("split.json", 1), ("config.json", 1), ("last.pt", 2), ("best.pt", 1),
                                        ("history.csv", 2), ("metrics.json", 1)])
def test_killed_mid_write_resumes_to_the_same_weights(reference, tmp_path, monkeypatch, target, nth):
    "A crash inside the n-th write of any file (its rename fails) leaves a folder that resumes to the same result."
    real_replace, seen = os.replace, {"n": 0}
    def crashing_replace(src, dst):
        if Path(dst).name == target:
            seen["n"] += 1
            if seen["n"] == nth: raise Killed(f"killed while writing {dst}")
        return real_replace(src, dst)
    monkeypatch.setattr(tr.os, "replace", crashing_replace)
    with pytest.raises(Killed): train(tiny(tmp_path / "run"))
    monkeypatch.setattr(tr.os, "replace", real_replace)
    assert not list((tmp_path / "run").glob(".*tmp*")), "a temp file was left behind"
    if target == "best.pt": assert not (tmp_path / "run" / "best.pt").exists()  # the resume must rebuild it from last.pt
    train(tiny(tmp_path / "run"))
    assert_same_run(reference, tmp_path / "run")


def test_sigkill_then_same_command_gives_the_same_weights(reference, tmp_path):
    "A real `ignore-attn train` process killed with SIGKILL mid-run, then run again, ends like the uninterrupted run."
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "ignore_attn.cli", *TINY_ARGS, "--epochs", "8", "--out", str(out)]
    # 8 epochs: the kill lands well before the end; compare with an uninterrupted 8-epoch run made in this process
    proc = subprocess.Popen(cmd, env=subprocess_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 90
    while not (out / "last.pt").exists() and proc.poll() is None and time.time() < deadline: time.sleep(0.02)
    time.sleep(0.15)  # somewhere inside epoch 2, or in the middle of its writes
    proc.send_signal(signal.SIGKILL); proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    assert not (out / "metrics.json").exists()
    done = subprocess.run(cmd, env=subprocess_env(tmp_path), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "resuming" in done.stdout
    straight = tmp_path / "straight"
    train(tiny(straight, epochs=8))
    assert_same_run(straight, out)


def test_finished_run_reports_its_metrics_and_trains_nothing(reference, capsys):
    "The same command on a finished folder says so and returns the saved metrics."
    before = folder_digest(reference)
    m = train(tiny(reference))
    assert m == json.loads((reference / "metrics.json").read_text())
    assert "already finished" in capsys.readouterr().out
    assert folder_digest(reference) == before


# ---------------------------------------------------------------- refusing and failing clearly
def test_refuses_a_folder_holding_a_different_run(reference, tmp_path, capsys):
    "Another run's folder is never touched: the error names the differing keys and suggests a new --out."
    before = folder_digest(reference)
    with pytest.raises(RunDirConflict, match=r"seed: 0 in the folder, 1 now.*new --out"):
        train(tiny(reference, seed=1))
    with pytest.raises(SystemExit) as e: main([*TINY_ARGS, "--lr", "0.3", "--out", str(reference)])
    assert e.value.code == 2 and "lr: 0.1 in the folder, 0.3 now" in capsys.readouterr().err
    assert folder_digest(reference) == before
    (tmp_path / "mine").mkdir(); (tmp_path / "mine" / "thesis.tex").write_text("precious")
    with pytest.raises(RunDirConflict, match="no config.json"): train(tiny(tmp_path / "mine"))
    assert os.listdir(tmp_path / "mine") == ["thesis.tex"]


def test_corrupt_checkpoint_is_a_clear_error(reference, tmp_path, capsys):
    "A truncated last.pt: the error names the file and says to delete it; after that the run restarts and matches."
    out = tmp_path / "run"
    with pytest.raises(Killed): train(tiny(out), on_epoch_end=die_after(2))
    last = out / "last.pt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    with pytest.raises(CorruptCheckpointError, match=rf"{last}.*Delete {last}"): train(tiny(out))
    assert main([*TINY_ARGS, "--out", str(out)]) == 2
    assert f"checkpoint {last} cannot be read" in capsys.readouterr().err
    last.write_text("not a checkpoint at all")
    with pytest.raises(CorruptCheckpointError, match="Delete"): train(tiny(out))
    last.unlink()
    train(tiny(out))
    assert_same_run(reference, out)


def _exit_2(argv: list[str], capsys) -> str:
    "stderr of a command line that must fail with exit status 2."
    try: code = main(argv)
    except SystemExit as e: code = e.code
    assert code == 2, f"{argv} exited with {code}"
    return capsys.readouterr().err


@pytest.mark.parametrize("flags,message", [
    (["--arch", "resnet51-cifar"], "resnet51"),
    (["--arch", "vgg16"], "unknown model"),
    (["--attention", "se-ign4"], "valid attention specs"),
    (["--attention", "se-ign2(0.5)"], "alpha"),
    (["--dataset", "mnist"], "mnist"),
    (["--dataset", "cifar10"], "--data DIR"),
    (["--dataset", "imagefolder", "--data", "/nonexistent/folder"], "does not exist"),
    (["--schedule", "fastest"], "invalid choice"),
    (["--milestones", "120,60"], "increasing"),
    (["--epochs", "0"], "epochs"),
    (["--amp", "fp16"], "invalid choice"),
    (["--device", "cuda"] if not torch.cuda.is_available() else ["--device", "tpu"], "device"),
    (["--cuda-graphs"], "cuda"),
    (["--batch-size", "abc"], "invalid int"),
])
def test_bad_arguments_fail_before_any_work(tmp_path, capsys, flags, message):
    "Bad flags exit with status 2 and a message naming the problem; no output folder is created."
    if flags == ["--cuda-graphs"] and torch.cuda.is_available(): pytest.skip("CUDA graphs are valid here")
    err = _exit_2([*TINY_ARGS, *flags, "--out", str(tmp_path / "run")], capsys)
    assert message in err, err
    assert not (tmp_path / "run").exists()


def test_wrong_data_layout_fails_with_status_2(tmp_path, capsys):
    "A data folder without train/ and test/ class folders: exit 2 with the data module's explanation, no run folder."
    (tmp_path / "photos" / "cats").mkdir(parents=True)
    err = _exit_2([*TINY_ARGS, "--dataset", "imagefolder", "--data", str(tmp_path / "photos"),
                   "--out", str(tmp_path / "run")], capsys)
    assert "train" in err, err
    assert not (tmp_path / "run" / "last.pt").exists()


def test_command_line_program_runs_and_fails_as_documented(tmp_path):
    "`python -m ignore_attn.cli`: --help shows examples (status 0); an unknown model exits 2 before any work."
    env = subprocess_env(tmp_path)
    helped = subprocess.run([sys.executable, "-m", "ignore_attn.cli", "train", "--help"], env=env, capture_output=True,
                            text=True, timeout=60)
    assert helped.returncode == 0 and "examples:" in helped.stdout and "--attention" in helped.stdout
    bad = subprocess.run([sys.executable, "-m", "ignore_attn.cli", "train", "--arch", "resnet51-cifar", "--out",
                          str(tmp_path / "run")], env=env, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "resnet51" in bad.stderr and not (tmp_path / "run").exists()
    bare = subprocess.run([sys.executable, "-m", "ignore_attn.cli"], env=env, capture_output=True, text=True, timeout=60)
    assert bare.returncode == 2 and "train" in bare.stdout


# ---------------------------------------------------------------- several processes
def test_ddp_on_two_cpu_processes(tmp_path):
    "torchrun with two gloo processes: each trains its shard, metrics count every test image, rank 0 writes the folder."
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).with_name("torchrun"))
    if not Path(torchrun).exists(): pytest.skip("torchrun not found next to the Python interpreter")
    out = tmp_path / "run"
    cmd = [torchrun, "--standalone", "--nproc_per_node", "2", "-m", "ignore_attn.cli", *TINY_ARGS, "--epochs", "2",
           "--out", str(out)]
    done = subprocess.run(cmd, env=subprocess_env(tmp_path), capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    m = json.loads((out / "metrics.json").read_text())
    assert m["world_size"] == 2 and m["n_test"] == 64 and m["status"] == "done"
    assert len((out / "history.csv").read_text().splitlines()) == 3
