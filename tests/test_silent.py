"""No silent wrong results (issue 18, items 1-7): a diverged run, weights of another spec, hub URLs that share a
file name, 16-bit and float images, a stale decode cache, a resume after config.json lost keys, a rounded alpha.
Each test failed on the code before the fix; the commands run the CLI the way a user would."""
from __future__ import annotations
import hashlib, json, os, struct, subprocess, sys, zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ignore_attn.analysis import collect_runs, read_run
from ignore_attn.data import CorruptDataError, DataConfig, build_data, decode_images, load_image
from ignore_attn.experiments import expand, run_id
from ignore_attn.sweeps import run_sweep
from ignore_attn.flip import parse_spec
from ignore_attn.models import get_model
from ignore_attn.registry import read_weights_identity, weights_identity
from ignore_attn.train import DivergedError, TrainConfig, resolve_config
from ignore_attn.engine import train

REPO = Path(__file__).resolve().parents[1]
torch.set_num_threads(1)  # the suite shares a small machine
TINY = ["--arch", "resnet8-cifar", "--schedule", "quick", "--batch-size", "32", "--n-train", "128", "--n-val", "64",
        "--n-test", "64", "--image-size", "16", "--augment", "none", "--workers", "0", "--device", "cpu", "--quiet"]
TINY_DATA = DataConfig(n_train=128, n_val=64, n_test=64, image_size=16, augment="none", workers=0)


def cli(*args, cwd=None) -> subprocess.CompletedProcess:
    "`python -m ignore_attn.cli ...` as a user runs it (this checkout importable), its output captured."
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "ignore_attn.cli", *map(str, args)], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=600)


def strict_json(path: Path):
    "A JSON file read the way strict readers do: NaN and Infinity are errors."
    def refuse(c): raise ValueError(f"{path.name} holds {c}, which is not JSON")
    return json.loads(path.read_text(), parse_constant=refuse)


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("IGNORE_ATTN_CACHE", str(tmp_path / "cache"))


# ---- 1. a diverged run stops, says so in one line, exits 3, and is failed everywhere
def test_diverged_run_stops_with_exit_3_and_is_reported_failed(tmp_path):
    out = tmp_path / "runs" / "div"
    r = cli("train", *TINY, "--epochs", "2", "--lr", "1e6", "--out", out)
    assert r.returncode == 3, r.stderr[-2000:]
    err = [l for l in r.stderr.splitlines() if l.strip()]
    assert len(err) == 1 and "diverged in epoch 1/2: the training loss is nan" in err[0] and "lower --lr" in err[0], r.stderr
    m = strict_json(out / "metrics.json")
    assert m["status"] == "failed" and m["failed_epoch"] == 1 and "diverged" in m["error"]
    assert not (out / "last.pt").exists() and not (out / "history.csv").exists()   # nothing of the NaN epoch
    row = read_run(out)
    assert row["status"] == "failed" and "diverged" in row["error"]
    runs = collect_runs(tmp_path / "runs")
    assert list(runs.status) == ["failed"] and runs.test_top1_err.isna().all()
    # the same command again: the same divergence, said the same way, not a finished run
    again = cli("train", *TINY, "--epochs", "2", "--lr", "1e6", "--out", out)
    assert again.returncode == 3 and "diverged" in again.stderr


def test_weights_that_turn_infinite_stop_the_run(tmp_path, monkeypatch):
    "A finite loss with weights gone infinite in the last step is caught at the epoch's end."
    import ignore_attn.engine as T   # where train() runs its epochs
    real = T.train_one_epoch
    def poisoned(step, *a, **kw):
        res = real(step, *a, **kw)
        with torch.no_grad(): (w := step.optimizer.param_groups[0]["params"][0])[(0,) * w.dim()] = float("inf")
        return res
    monkeypatch.setattr(T, "train_one_epoch", poisoned)
    with pytest.raises(DivergedError, match="weight tensors hold NaN or infinity"):
        train(TrainConfig(arch="resnet8-cifar", schedule="quick", epochs=1, batch_size=32, device="cpu", quiet=True,
                          data=TINY_DATA, out=str(tmp_path / "run")))
    assert strict_json(tmp_path / "run" / "metrics.json")["status"] == "failed"


def test_diverged_run_in_a_sweep_is_failed(tmp_path):
    sweep = dict(datasets=["cluttered-digits"], archs=["resnet8-cifar"], attentions=["se"], seeds=[0], epochs=2,
                 schedule="quick", batch_size=32, n_train=128, n_val=64, n_test=64, image_size=16, augment="none",
                 device="cpu", quiet=True, lr=1e6, workers=0)
    status = run_sweep(expand(sweep, name="div"), tmp_path, progress=False)
    assert list(status.state) == ["failed"]
    d = tmp_path / status.run_id[0]
    assert strict_json(d / "metrics.json")["status"] == "failed"
    row = read_run(d)
    assert row["status"] == "failed" and "diverged" in row["error"]


def test_no_validation_set_writes_null_and_empty_cells_not_nan(tmp_path):
    "A run without a validation set has no val loss: metrics.json says null and history.csv leaves the cell empty."
    root = tmp_path / "folder"
    for part, n in (("train", 8), ("test", 4)):
        for c in ("a", "b"):
            (root / part / c).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(np.full((8, 8, 3), 20 * i + (100 if c == "b" else 0), np.uint8)).save(root / part / c / f"{i}.png")
    train(TrainConfig(arch="resnet8-cifar", schedule="quick", epochs=1, batch_size=4, device="cpu", quiet=True,
                      data=DataConfig(dataset="imagefolder", data_dir=str(root), val_size=0, augment="none", workers=0),
                      out=str(tmp_path / "run")))
    m = strict_json(tmp_path / "run" / "metrics.json")
    assert m["status"] == "done" and m["best_val_top1_err"] is None
    rows = (tmp_path / "run" / "history.csv").read_text().splitlines()
    assert "nan" not in (tmp_path / "run" / "history.csv").read_text().lower() and len(rows) == 2


# ---- 2. weights of another spec are refused, naming both
@pytest.fixture(scope="module")
def se_export(tmp_path_factory) -> Path:
    "A one-epoch resnet8-cifar `se` run, exported with `ignore-attn export`."
    d = tmp_path_factory.mktemp("se")
    train(TrainConfig(arch="resnet8-cifar", attention="se", schedule="quick", epochs=1, batch_size=32, device="cpu",
                      quiet=True, data=TINY_DATA, out=str(d / "run")))
    r = cli("export", d / "run", "--out", d / "export")
    assert r.returncode == 0, r.stderr
    return d / "export"


def test_export_metadata_says_what_the_weights_are(se_export):
    assert read_weights_identity(se_export / "model.safetensors") == {"arch": "resnet8-cifar", "attention": "se",
                                                                      "num_classes": "10"}


@pytest.mark.parametrize("spec", ["se-ign3", "se-ign1(0.5)", "se-exp"])
def test_weights_of_another_spec_are_refused(se_export, spec):
    with pytest.raises(ValueError, match=rf"trained as resnet8-cifar se with 10 classes, but this model is resnet8-cifar "
                                         rf"{parse_spec(spec)} with 10 classes".replace("(", r"\(").replace(")", r"\)")):
        get_model("resnet8-cifar", 10, spec, weights=se_export / "model.safetensors")
    get_model("resnet8-cifar", 10, "SE", weights=se_export / "model.safetensors")   # its own spec loads


def test_hub_refuses_weights_of_another_spec(tmp_path):
    "A hub entry (resnet20_cifar, default se-ign3) with an exported se file, by path and by URL."
    st = pytest.importorskip("safetensors.torch")
    f = tmp_path / "model.safetensors"
    st.save_file(get_model("resnet20-cifar", 10, "se").state_dict(), str(f),
                 metadata={"format": "pt", **weights_identity("resnet20-cifar", 10, "se")})
    old = torch.hub.get_dir(); torch.hub.set_dir(str(tmp_path / "hub"))
    try:
        for w in (str(f), f.as_uri()):
            with pytest.raises(ValueError, match="trained as resnet20-cifar se with 10 classes, but this model is "
                                                 "resnet20-cifar se-ign3"):
                torch.hub.load(str(REPO), "resnet20_cifar", weights=w, source="local")
        torch.hub.load(str(REPO), "resnet20_cifar", attention="se", weights=str(f), source="local")
    finally: torch.hub.set_dir(old)


# ---- 3. hub URLs: cached by URL, checked against a sha256 given in the URL
def test_hub_urls_with_one_file_name_do_not_share_a_cache_file(tmp_path):
    st = pytest.importorskip("safetensors.torch")
    states, urls = [], []
    for seed in (0, 1):
        torch.manual_seed(seed)
        s = get_model("resnet20-cifar", 10, "se-ign3").state_dict()
        (tmp_path / f"e{seed}").mkdir(); st.save_file(s, str(tmp_path / f"e{seed}" / "model.safetensors"))
        states.append(s); urls.append((tmp_path / f"e{seed}" / "model.safetensors").as_uri())
    old = torch.hub.get_dir(); torch.hub.set_dir(str(tmp_path / "hub"))
    try:
        for s, url in zip(states, urls):
            got = torch.hub.load(str(REPO), "resnet20_cifar", weights=url, source="local").state_dict()
            assert all(torch.equal(got[k], v) for k, v in s.items())
        digest = hashlib.sha256((tmp_path / "e1" / "model.safetensors").read_bytes()).hexdigest()
        got = torch.hub.load(str(REPO), "resnet20_cifar", weights=f"{urls[1]}#sha256={digest}", source="local").state_dict()
        assert all(torch.equal(got[k], v) for k, v in states[1].items())
        with pytest.raises(ValueError, match="not the file meant"):   # the hash of another file: refused, not cached
            torch.hub.load(str(REPO), "resnet20_cifar", weights=f"{urls[0]}#sha256={digest}", source="local")
        with pytest.raises(ValueError, match="#sha256=<the file's 64 hex"):
            torch.hub.load(str(REPO), "resnet20_cifar", weights=f"{urls[0]}#md5=abc", source="local")
    finally: torch.hub.set_dir(old)
    assert len(list((tmp_path / "hub" / "checkpoints").glob("*model.safetensors"))) == 2
    assert not list((tmp_path / "hub" / "checkpoints").glob(".*part"))


# ---- 4. every image mode becomes the right 8-bit RGB, or a one-line refusal
def png16(path: Path, a: np.ndarray, color_type: int) -> None:
    "A 16-bit PNG written by hand (PIL writes 16 bits for greyscale only): colour type 2 RGB, 4 grey+alpha, 6 RGBA."
    h, w = a.shape[:2]
    raw = b"".join(b"\0" + a[y].astype(">u2").tobytes() for y in range(h))
    chunk = lambda t, d: struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, color_type, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def test_image_modes_decode_to_the_right_rgb(tmp_path):
    g = np.array([[0, 32896, 65535]], np.uint16)          # 0, 1/2 and full scale
    Image.fromarray(g).save(tmp_path / "grey16.png")      # PIL: mode I;16
    Image.fromarray(g.astype(np.int32)).save(tmp_path / "grey32.tif")   # mode I
    png16(tmp_path / "rgb16.png", np.array([[[65535, 32896, 257]]], np.uint16), 2)
    png16(tmp_path / "rgba16.png", np.array([[[65535, 32896, 257, 0]]], np.uint16), 6)
    png16(tmp_path / "la16.png", np.array([[[32896, 65535]]], np.uint16), 4)
    Image.fromarray(np.array([[0.0, 0.5, 1.0]], np.float32)).save(tmp_path / "float.tif")   # mode F
    Image.fromarray(np.array([[10, 200]], np.uint8)).save(tmp_path / "grey.png")            # L
    Image.fromarray(np.array([[[10, 20, 30, 0]]], np.uint8), "RGBA").save(tmp_path / "rgba.png")
    Image.fromarray(np.array([[[10, 128]]], np.uint8), "LA").save(tmp_path / "la.png")
    p = Image.new("P", (2, 1)); p.putpalette([255, 0, 0, 0, 0, 255]); p.putdata([0, 1]); p.save(tmp_path / "pal.png")
    Image.new("1", (2, 1), 1).save(tmp_path / "bw.png")
    Image.new("CMYK", (1, 1), (0, 255, 255, 0)).save(tmp_path / "cmyk.tif")
    want = {"grey16.png": [[0] * 3, [128] * 3, [255] * 3], "grey32.tif": [[0] * 3, [128] * 3, [255] * 3],
            "rgb16.png": [[255, 128, 1]], "rgba16.png": [[255, 128, 1]], "la16.png": [[128] * 3],
            "float.tif": [[0] * 3, [128] * 3, [255] * 3], "grey.png": [[10] * 3, [200] * 3],
            "rgba.png": [[10, 20, 30]], "la.png": [[10] * 3], "pal.png": [[255, 0, 0], [0, 0, 255]],
            "bw.png": [[255] * 3] * 2, "cmyk.tif": [[255, 0, 0]]}
    for name, rgb in want.items():
        img = load_image(tmp_path / name)
        assert img.mode == "RGB" and np.asarray(img)[0].tolist() == rgb, name


@pytest.mark.parametrize("name, array, message", [
    ("hot.tif", np.array([[0.0, 300.0]], np.float32), "float image with values in [0, 300]"),
    ("neg.tif", np.array([[-1.0, 0.5]], np.float32), "float image with values in [-1, 0.5]"),
    ("nan.tif", np.array([[np.nan, 0.5]], np.float32), "float image with values in [nan, nan]"),
    ("wide.tif", np.array([[0, 70000]], np.int32), "32-bit integer image with values in [0, 70000]"),
])
def test_images_that_cannot_be_scaled_are_refused_in_one_line(tmp_path, name, array, message):
    Image.fromarray(array).save(tmp_path / name)
    with pytest.raises(CorruptDataError, match=message.replace("[", r"\[").replace("]", r"\]")) as e:
        load_image(tmp_path / name)
    assert "\n" not in str(e.value) and name in str(e.value)


def write_folder(root: Path, pixel) -> None:
    "An image folder of 2 classes: train 6 and test 2 images each, written by `pixel(class, index, path)`."
    for part, n in (("train", 6), ("test", 2)):
        for c in (0, 1):
            (root / part / f"c{c}").mkdir(parents=True, exist_ok=True)
            for i in range(n): pixel(c, i, root / part / f"c{c}" / f"{i}")


def test_a_16_bit_image_folder_trains_on_its_pixels_not_white(tmp_path):
    root = tmp_path / "data"
    write_folder(root, lambda c, i, p: Image.fromarray(np.full((8, 8), 20000 * c + 1000 * i, np.uint16)).save(f"{p}.png"))
    data = build_data(DataConfig(dataset="imagefolder", data_dir=str(root), val_size=2, augment="none",
                                 resident="yes", workers=0), batch_size=4)
    x = data.train.images.float()
    assert x.max() < 255 and x.std() > 10   # clipped, every pixel was 255 and every image the same


# ---- 5. the decoded-image cache follows files overwritten in place
def test_cache_sees_an_image_overwritten_in_place_with_the_same_size(tmp_path):
    root, files = tmp_path / "images", []
    root.mkdir()
    for i in range(3):
        Image.fromarray(np.full((4, 4, 3), 10 * i, np.uint8)).save(root / f"{i}.ppm"); files.append(root / f"{i}.ppm")
    first = decode_images(files, 4, (root,))
    size, dir_mtime = files[1].stat().st_size, root.stat().st_mtime_ns
    Image.fromarray(np.full((4, 4, 3), 99, np.uint8)).save(files[1])      # same name, same size, new pixels
    os.utime(root, ns=(dir_mtime, dir_mtime))                             # the folder looks untouched
    assert files[1].stat().st_size == size and root.stat().st_mtime_ns == dir_mtime
    again = decode_images(files, 4, (root,))
    assert (first[1] == 10).all() and (again[1] == 99).all() and (again[[0, 2]] == first[[0, 2]]).all()
    cached = sorted(Path(os.environ["IGNORE_ATTN_CACHE"]).glob("*.npy"))
    assert len(cached) == 2
    assert (decode_images(files, 4, (root,)) == again).all()              # unchanged files: the cache is used
    assert sorted(Path(os.environ["IGNORE_ATTN_CACHE"]).glob("*.npy")) == cached


# ---- 6. a config.json that lost keys is not resumed with other values
def test_resume_refused_when_config_lost_keys(tmp_path):
    out = tmp_path / "run"
    class Stop(Exception): pass
    def kill(epoch, record): raise Stop                                      # a run stopped after its first epoch
    with pytest.raises(Stop):
        train(TrainConfig(arch="resnet8-cifar", schedule="quick", epochs=2, batch_size=32, device="cpu", quiet=True,
                          seed=0, data=TINY_DATA, out=str(out)), on_epoch_end=kill)
    cfg = json.loads((out / "config.json").read_text())
    del cfg["config"]["lr"], cfg["config"]["weight_decay"]
    (out / "config.json").write_text(json.dumps(cfg))
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    r = cli("train", *TINY, "--epochs", "2", "--lr", "0.5", "--out", out)
    assert r.returncode == 2 and "lr: missing in the folder, 0.5 now" in r.stderr and "weight_decay: missing" in r.stderr, r.stderr
    assert before == {p.name: p.stat().st_mtime_ns for p in out.iterdir()}  # nothing written
    r = cli("train", *TINY, "--epochs", "2", "--out", out)                  # the default lr is no better a guess
    assert r.returncode == 2 and "lr: missing in the folder, 0.1 now" in r.stderr


# ---- 7. alpha is kept exactly: in the spec, the config, the run id and the model
def test_alpha_is_not_rounded(tmp_path):
    r = cli("train", *TINY, "--attention", "se-ign1(0.123456789)", "--dry-run", "--out", tmp_path / "a")
    assert r.returncode == 0 and json.loads(r.stdout)["attention"] == "se-ign1(0.123456789)", r.stderr
    assert resolve_config(TrainConfig(attention="se-ign1(0.123456789)")).attention == "se-ign1(0.123456789)"
    a, b = "se-ign1(0.1234567)", "se-ign1(0.1234568)"
    assert run_id("cifar10", "resnet20-cifar", a, 0) != run_id("cifar10", "resnet20-cifar", b, 0)
    grid = dict(datasets=["cluttered-digits"], archs=["resnet8-cifar"], attentions=[a, b], seeds=[0], epochs=1)
    assert len({r.run_id for r in expand(grid, name="alphas")}) == 2
    m = get_model("resnet8-cifar", 10, "se-ign1(0.123456789)")
    alphas = {mod.spec.alpha for mod in m.modules() if hasattr(mod, "spec") and hasattr(mod.spec, "alpha")}
    assert alphas == {0.123456789}
