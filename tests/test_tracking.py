"ignore_attn.tracking: a real run logged to TensorBoard and read back with TensorBoard's own reader; resume; ranks."
from __future__ import annotations
import numpy as np
import pytest
import torch

pytest.importorskip("tensorboard", reason='tensorboard is an optional extra (pip install "ignore-attn[tensorboard]")')
from ignore_attn.data import DataConfig                      # noqa: E402
from ignore_attn.tracking import TensorBoardLogger, combine, read_scalars, scalars, tag   # noqa: E402
from ignore_attn.train import TrainConfig  # noqa: E402
from ignore_attn.rundir import load_checkpoint
from ignore_attn.engine import setup_run, train

torch.set_num_threads(1)  # the suite shares a small machine
TINY = dict(arch="resnet8-cifar", attention="se-ign1(0.5)", schedule="quick", batch_size=32, device="cpu", quiet=True,
            data=DataConfig(n_train=256, n_val=64, n_test=64, image_size=16, augment="none", workers=0))
f32 = lambda v: float(np.float32(v))   # TensorBoard keeps scalars as 32-bit floats


def test_every_scalar_of_every_epoch_and_the_final_metrics(tmp_path):
    run = tmp_path / "run"
    seen = []
    with TensorBoardLogger(run) as tb:
        metrics = train(TrainConfig(**TINY, epochs=3, out=str(run)),
                        on_epoch_end=combine(tb, lambda epoch, record: seen.append(epoch)))
        tb.log_final(metrics)
    assert seen == [1, 2, 3]
    logged = read_scalars(run / "tensorboard")
    history = load_checkpoint(run / "last.pt")["history"]
    keys = [k for k in history[0] if k != "epoch"]
    assert len(keys) == 9
    for k in keys: assert logged[tag(k)] == [(r["epoch"], f32(r[k])) for r in history], k
    for k, v in scalars(metrics, skip=("epochs",)).items(): assert logged[tag(k, final=True)] == [(3, f32(v))], k
    assert {"test/top1_err", "test/top5_err", "test/loss", "final/best_epoch", "train/loss", "val/top1", "lr"} <= set(logged)


class Killed(Exception):
    "Stands for the process being killed."


def test_resumed_run_logs_its_own_history(tmp_path):
    "Killed after last.pt of epoch 2 but before epoch 2 was logged: the resumed log equals the run's history."
    run, cfg = tmp_path / "run", TrainConfig(**TINY, epochs=3, out=str(tmp_path / "run"))
    def kill_at_2(epoch, record):
        if epoch == 2: raise Killed
    with pytest.raises(Killed), TensorBoardLogger(run) as tb: train(cfg, on_epoch_end=combine(kill_at_2, tb))
    assert [e for e, _ in read_scalars(run / "tensorboard")["train/loss"]] == [1]
    resumed = setup_run(cfg)
    assert resumed.start_epoch == 2 and len(resumed.history) == 2
    with TensorBoardLogger(run) as tb:
        tb.log_history(resumed.history)
        resumed.fit(on_epoch_end=tb)
    history = load_checkpoint(run / "last.pt")["history"]
    for k in ("train_loss", "val_top1", "lr"):
        assert read_scalars(run / "tensorboard")[tag(k)] == [(r["epoch"], f32(r[k])) for r in history]


def test_a_repeated_epoch_replaces_the_stale_one(tmp_path):
    "A second process logging from step 2 on purges what the first logged at steps >= 2 (TensorBoard's purge_step)."
    with TensorBoardLogger(tmp_path) as first:
        for e in (1, 2, 3): first(e, {"epoch": e, "train_loss": 10.0 * e})
    with TensorBoardLogger(tmp_path) as second:
        for e in (2, 3): second(e, {"epoch": e, "train_loss": float(e)})
    assert read_scalars(tmp_path / "tensorboard")["train/loss"] == [(1, 10.0), (2, 2.0), (3, 3.0)]


def test_other_ranks_write_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "2")
    tb = TensorBoardLogger(tmp_path)
    tb(1, {"epoch": 1, "lr": 0.1}); tb.log_history([{"epoch": 1, "lr": 0.1}]); tb.log_final({"epochs": 1, "test_loss": 1.0})
    tb.close()
    assert list(tmp_path.iterdir()) == []


def test_scalars_and_tags():
    assert scalars({"epoch": 1, "a": 1, "b": np.float32(0.5), "c": float("nan"), "d": "x", "e": True, "f": None}).keys() == {"a", "b", "c"}
    assert [tag(k) for k in ("train_top1", "val_loss", "epoch_time_s")] == ["train/top1", "val/loss", "epoch_time_s"]
    assert [tag(k, final=True) for k in ("test_loss", "wall_time_s")] == ["test/loss", "final/wall_time_s"]


def test_train_command_logs_to_tensorboard_and_keeps_the_config(tmp_path):
    "`ignore-attn train --log tensorboard`: every epoch and the final metrics logged; config.json as without the flag."
    import json
    from ignore_attn.cli import main
    args = ["train", "--arch", "resnet8-cifar", "--attention", "se-ign3", "--schedule", "quick", "--epochs", "2",
            "--batch-size", "32", "--n-train", "128", "--n-val", "64", "--n-test", "64", "--image-size", "16",
            "--augment", "none", "--workers", "0", "--device", "cpu", "--quiet"]
    assert main([*args, "--out", str(tmp_path / "logged"), "--log", "tensorboard"]) == 0
    assert main([*args, "--out", str(tmp_path / "plain")]) == 0
    logged = read_scalars(tmp_path / "logged" / "tensorboard")
    assert [e for e, _ in logged["train/loss"]] == [1, 2] and "test/top1_err" in logged
    assert not (tmp_path / "plain" / "tensorboard").exists()
    cfg = lambda d: {k: v for k, v in json.loads((tmp_path / d / "config.json").read_text())["config"].items() if k != "out"}
    assert cfg("logged") == cfg("plain")
