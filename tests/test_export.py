"ignore_attn.export: a real run's best model exported to safetensors and rebuilt exactly; what is refused; the CLI functions."
from __future__ import annotations
import argparse, json, shutil
from pathlib import Path

import pytest
import torch

from ignore_attn import ntu_data
from ignore_attn.data import DataConfig
from ignore_attn.export import (CONFIG_NAME, WEIGHTS_NAME, add_export_arguments, export_main, export_run, load_exported,
                                load_weights, read_export, read_state_dict)
from ignore_attn.models import get_model
from ignore_attn.train import TrainConfig
from ignore_attn.rundir import load_checkpoint
from ignore_attn.engine import train

st = pytest.importorskip("safetensors.torch", reason="safetensors (a dependency of ignore-attn) is not installed")
torch.set_num_threads(1)  # the suite shares a small machine

REPO = Path(__file__).resolve().parents[1]
TINY_DATA = DataConfig(n_train=256, n_val=64, n_test=64, image_size=16, augment="none", workers=0)


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    "A real run: resnet8-cifar with cbam-ign1(0.5), one epoch on 256 Cluttered Digits images of 16 px."
    out = tmp_path_factory.mktemp("runs") / "tiny-cbam"
    train(TrainConfig(arch="resnet8-cifar", attention="cbam-ign1(0.5)", schedule="quick", epochs=1, batch_size=32,
                      device="cpu", quiet=True, data=TINY_DATA, out=str(out)))
    return out


@pytest.fixture(scope="module")
def exported(run, tmp_path_factory) -> Path:
    return export_run(run, tmp_path_factory.mktemp("exports") / "tiny-cbam")


def test_round_trip_is_exact(run, exported):
    best = load_checkpoint(run / "best.pt")["model"]
    model = load_exported(exported)
    assert not model.training
    got = model.state_dict()
    assert list(got) == list(best) and all(torch.equal(got[k], best[k]) and got[k].dtype == best[k].dtype for k in best)
    raw = st.load_file(str(exported / WEIGHTS_NAME))                 # readable by safetensors itself, bit for bit
    assert raw.keys() == best.keys() and all(torch.equal(raw[k], best[k]) for k in best)
    reference = get_model("resnet8-cifar", 10, "cbam-ign1(0.5)")
    reference.load_state_dict(best)
    x = torch.randn(6, 3, 16, 16)
    with torch.no_grad(): assert torch.equal(model(x), reference.eval()(x))
    for path in (exported / CONFIG_NAME, exported / WEIGHTS_NAME):   # the folder or either file names the export
        assert torch.equal(load_exported(path)(x), model(x))
    hub = torch.hub.load(str(REPO), "from_export", path=str(exported), source="local")   # hubconf.py's entry
    assert torch.equal(hub(x), model(x))


def test_config_holds_what_rebuilds_and_where_it_came_from(run, exported):
    record = json.loads((exported / CONFIG_NAME).read_text())
    assert (record["arch"], record["num_classes"], record["attention"], record["model_kwargs"]) == \
           ("resnet8-cifar", 10, "cbam-ign1(0.5)", {"attention_init": "authors"})
    metrics = json.loads((run / "metrics.json").read_text())
    assert record["metrics"] == metrics and record["source"]["epoch"] == metrics["best_epoch"]
    assert record["source"]["run_dir"] == str(run.resolve()) and record["source"]["finished"] is True
    assert record["train_config"] == json.loads((run / "config.json").read_text())["config"]
    run_meta = json.loads((run / "config.json").read_text())
    assert (record["classes"], record["image_size"]) == (run_meta["classes"], run_meta["image_size"]) and len(record["classes"]) == 10
    assert record["versions"]["exported_with"]["torch"] == torch.__version__ and record["versions"]["trained_with"]
    with open(exported / WEIGHTS_NAME, "rb") as f:   # safetensors header: the usual format, and what the weights are
        header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
    assert header["__metadata__"] == {"format": "pt", "arch": "resnet8-cifar", "attention": "cbam-ign1(0.5)", "num_classes": "10"}


def test_refusals_say_what_to_do(run, exported, tmp_path):
    cases = [(lambda: export_run(tmp_path), "has no config.json"),
             (lambda: export_run(run, run / "export"), "lies inside the run folder"),
             (lambda: load_exported(run), "is not an ignore-attn export"),
             (lambda: load_exported(tmp_path), "has no config.json")]
    other = tmp_path / "other"; other.mkdir()
    for f in ("config.json", "best.pt"): shutil.copy(run / f, other)
    cases.append((lambda: export_run(other, exported), "holds the export of another run"))
    not_export = tmp_path / "not-export"; not_export.mkdir(); (not_export / CONFIG_NAME).write_text("{}")
    cases.append((lambda: export_run(run, not_export), "not an ignore-attn export"))
    empty = tmp_path / "empty"; empty.mkdir(); shutil.copy(run / "config.json", empty)
    cases.append((lambda: export_run(empty), "has not finished an epoch"))
    tampered = tmp_path / "tampered"; shutil.copytree(exported, tampered)
    w = st.load_file(str(tampered / WEIGHTS_NAME)); w["fc.bias"] += 1; st.save_file(w, str(tampered / WEIGHTS_NAME))
    cases.append((lambda: load_exported(tampered), "SHA-256 differs"))
    newer = tmp_path / "newer"; shutil.copytree(exported, newer)
    rec = json.loads((newer / CONFIG_NAME).read_text()); rec["format_version"] = 99
    (newer / CONFIG_NAME).write_text(json.dumps(rec))
    cases.append((lambda: read_export(newer), "upgrade ignore-attn"))
    for bad, contains in cases:
        with pytest.raises((ValueError, FileNotFoundError)) as e: bad()
        assert contains in str(e.value) and "\n" not in str(e.value), str(e.value)
    assert not (run / "export").exists() and sorted(p.name for p in not_export.iterdir()) == [CONFIG_NAME]


def test_unfinished_run_exports_with_a_warning(run, tmp_path):
    partial = tmp_path / "partial"; partial.mkdir()
    for f in ("config.json", "best.pt"): shutil.copy(run / f, partial)
    with pytest.warns(UserWarning, match="has not finished"): out = export_run(partial, tmp_path / "out")
    record = json.loads((out / CONFIG_NAME).read_text())
    assert record["source"]["finished"] is False and record["metrics"] is None


def test_weights_that_do_not_fit_are_refused_in_one_line(run, tmp_path):
    for model, contains in ((get_model("resnet8-cifar", 100, "cbam-ign1(0.5)"), "fc.weight: (10, 64) in the weights, (100, 64)"),
                            (get_model("resnet8-cifar", 10, "se"), "missing"),
                            (get_model("resnet8-cifar", 10), "unexpected")):
        before = {k: v.clone() for k, v in model.state_dict().items()}
        with pytest.raises(ValueError) as e: load_weights(model, run / "best.pt")
        assert contains in str(e.value) and "\n" not in str(e.value)
        assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())   # nothing changed


def test_read_state_dict_unwraps_checkpoints_and_wrappers(run, tmp_path):
    best = load_checkpoint(run / "best.pt")["model"]
    torch.save({"state_dict": {f"_orig_mod.{k}": v for k, v in best.items()}}, tmp_path / "compiled.pth")
    torch.save({f"module.{k}": v for k, v in best.items()}, tmp_path / "ddp.pt")
    for f in ("compiled.pth", "ddp.pt"):
        got = read_state_dict(tmp_path / f)
        assert got.keys() == best.keys() and all(torch.equal(got[k], best[k]) for k in best)
    torch.save([1, 2], tmp_path / "list.pt")
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 16)
    for f, contains in (("list.pt", "holds no state dict"), ("junk.safetensors", "not a readable safetensors file"),
                        ("absent.pt", "does not exist")):
        with pytest.raises((ValueError, FileNotFoundError), match=contains): read_state_dict(tmp_path / f)


def test_cli_functions(run, tmp_path, capsys):
    p = add_export_arguments(argparse.ArgumentParser(prog="ignore-attn export"))
    assert export_main(p.parse_args([str(run), "--out", str(tmp_path / "e")])) == 0
    assert f"exported: {tmp_path / 'e' / WEIGHTS_NAME}" in capsys.readouterr().out
    assert export_main(p.parse_args([str(run), "--out", str(tmp_path / "e")])) == 0          # again: the same run
    assert export_main(p.parse_args([str(tmp_path / "nope")])) == 2
    err = capsys.readouterr().err
    assert err.startswith("ignore-attn export: error:") and err.count("\n") == 1
    with pytest.raises(SystemExit): p.parse_args([])                                           # RUN_DIR is required


def test_default_folder_is_outside_the_runs_tree(run, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = export_run(run)
    assert out == Path("exports") / run.name and (tmp_path / "exports" / run.name / WEIGHTS_NAME).is_file()


def test_ntu_export_carries_the_model_options(tmp_path, monkeypatch):
    "frames_skel (32 here, not the tiny model's default 16) sizes the skeleton stream: the export must carry it."
    monkeypatch.setenv("IGNORE_ATTN_CACHE", str(tmp_path / "cache"))
    names = [f"S001C001P{p:03d}R001A{a:03d}" for p in (1, 2, 3, 4) for a in (1, 2, 3)]
    ntu_data.write_tiny_ntu(tmp_path / "ntu", names, n_frames=40, as_frames=True)
    data = DataConfig(dataset="ntu", data_dir=str(tmp_path / "ntu"), frames_rgb=2, frames_skel=32, image_size=32, workers=0)
    run = tmp_path / "run"
    train(TrainConfig(arch="mmtm-fusion-tiny", attention="mmtm-ign3", epochs=1, batch_size=4, device="cpu", quiet=True,
                      data=data, out=str(run)))
    out = export_run(run, tmp_path / "export")
    assert json.loads((out / CONFIG_NAME).read_text())["model_kwargs"] == {"frames_skel": 32, "init": "authors"}
    model = load_exported(out)
    best = load_checkpoint(run / "best.pt")["model"]
    assert all(torch.equal(model.state_dict()[k], v) for k, v in best.items())
    with pytest.raises(ValueError, match="of another shape"):                  # without the option the weights do not fit
        load_weights(get_model("mmtm-fusion-tiny", 60, "mmtm-ign3"), out / WEIGHTS_NAME)
    x = (torch.randn(1, 3, 2, 32, 32), torch.randn(1, 3, 32, 25, 2))
    reference = get_model("mmtm-fusion-tiny", 60, "mmtm-ign3", frames_skel=32)
    reference.load_state_dict(best)
    with torch.no_grad(): assert torch.equal(model(*x), reference.eval()(*x))
