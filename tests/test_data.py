"Tests of ignore_attn.data: splits, normalisation, augmentation, loaders and the CIFAR / ImageFolder / Cluttered Digits readers."
import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ignore_attn.data import (DataConfig, build_data, cluttered_digits, epoch_plan, flip_images, norm_stats, read_cifar,
                              read_image_folder, shift_images, write_cifar, MAX_SHIFT)

torch.set_num_threads(1)
SHARED = Path(os.environ.get("IGNORE_ATTN_SHARED") or Path(__file__).resolve().parents[2] / "shared")
CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


@pytest.fixture(autouse=True)
def tmp_cache(tmp_path, monkeypatch):
    "Every test decodes into its own cache folder, never the user's."
    monkeypatch.setenv("IGNORE_ATTN_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def indexed_images(n: int, size: int = 32, seed: int = 0) -> np.ndarray:
    "uint8 (n, size, size, 3) random images whose pixel (0, 0) spells the index: R = i % 256, G = i // 256."
    x = np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    x[:, 0, 0, 0], x[:, 0, 0, 1] = np.arange(n) % 256, np.arange(n) // 256
    return x


def index_of(batch: torch.Tensor, data) -> list[int]:
    "Recover the indices spelled in pixel (0, 0) of a normalised, unaugmented batch."
    raw = (batch[:, :2, 0, 0].cpu() * data.norm["std"][:2, 0, 0] + data.norm["mean"][:2, 0, 0].expand(len(batch), 2)) * 255
    raw = raw.round().long()
    return (raw[:, 0] + 256 * raw[:, 1]).tolist()


def assert_same_batches(a, b, atol: float = 0.0) -> int:
    "Both loaders yield the same non-empty sequence of batches; return how many."
    la, lb = list(a), list(b)
    assert len(la) == len(lb) > 0
    for (xa, ya), (xb, yb) in zip(la, lb):
        assert torch.equal(ya, yb) and xa.shape == xb.shape and torch.allclose(xa, xb, atol=atol, rtol=0)
    return len(la)


def write_raw_cifar10(root: Path, per_batch: int = 40, n_test: int = 30, bytes_keys: bool = False):
    "Write CIFAR-10 pickles by hand, with every key of the original files; return (train x, train y, test x, test y)."
    folder = root / "cifar-10-batches-py"; folder.mkdir(parents=True)
    x = indexed_images(5 * per_batch + n_test)
    y = np.tile(np.arange(10), len(x) // 10 + 1)[:len(x)]
    key = (lambda k: k.encode()) if bytes_keys else (lambda k: k)
    def dump(name, obj):
        with open(folder / name, "wb") as f: pickle.dump({key(k): v for k, v in obj.items()}, f, protocol=2)
    for b in range(5):
        s = slice(b * per_batch, (b + 1) * per_batch)
        dump(f"data_batch_{b + 1}", {"batch_label": f"training batch {b + 1} of 5", "labels": y[s].tolist(),
                                     "data": x[s].transpose(0, 3, 1, 2).reshape(per_batch, -1),
                                     "filenames": [f"img{i}.png" for i in range(per_batch)]})
    t = slice(5 * per_batch, None)
    dump("test_batch", {"batch_label": "testing batch 1 of 1", "labels": y[t].tolist(),
                        "data": x[t].transpose(0, 3, 1, 2).reshape(n_test, -1), "filenames": ["t.png"] * n_test})
    dump("batches.meta", {"num_cases_per_batch": per_batch, "label_names": CIFAR10_NAMES, "num_vis": 3072})
    return x[:5 * per_batch], y[:5 * per_batch], x[5 * per_batch:], y[5 * per_batch:]


def write_raw_cifar100(root: Path, n_train: int = 200, n_test: int = 100):
    "Write CIFAR-100 pickles (train, test, meta) by hand; return (train x, fine labels, test x, fine labels)."
    folder = root / "cifar-100-python"; folder.mkdir(parents=True)
    x = indexed_images(n_train + n_test, seed=1)
    fine = np.arange(n_train + n_test) % 100
    def dump(name, obj):
        with open(folder / name, "wb") as f: pickle.dump(obj, f, protocol=2)
    for name, s in (("train", slice(0, n_train)), ("test", slice(n_train, None))):
        dump(name, {"filenames": ["f.png"] * len(fine[s]), "batch_label": name, "fine_labels": fine[s].tolist(),
                    "coarse_labels": (fine[s] // 5).tolist(), "data": x[s].transpose(0, 3, 1, 2).reshape(len(fine[s]), -1)})
    dump("meta", {"fine_label_names": [f"fine{i:02d}" for i in range(100)], "coarse_label_names": [f"c{i}" for i in range(20)]})
    return x[:n_train], fine[:n_train], x[n_train:], fine[n_train:]


def write_folder(root: Path, images: np.ndarray, labels: np.ndarray, part: str, ext: str, classes: list[str]) -> None:
    "Save images as root/part/<class>/<i>.<ext>."
    for i, (img, lab) in enumerate(zip(images, labels)):
        d = root / part / classes[lab]; d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(d / f"{i:04d}.{ext}", quality=95)


# ---------------------------------------------------------------- Cluttered Digits and the split record
def test_cluttered_same_seed_same_data_other_seed_other():
    cfg = DataConfig(n_train=300, n_val=100, n_test=100)
    a, b = build_data(cfg, 50, seed=0), build_data(cfg, 50, seed=0)
    assert a.split == b.split and a.split["kind"] == "generated"
    for la, lb in [(a.train, b.train), (a.val, b.val), (a.test, b.test)]: assert_same_batches(la, lb)
    c = build_data(DataConfig(n_train=300, n_val=100, n_test=100, split_seed=1), 50)
    assert c.split["labels_sha1"] != a.split["labels_sha1"] and c.split["images_sha1"] != a.split["images_sha1"]
    x, y, m = cluttered_digits(64, 3)
    x2, y2, m2 = cluttered_digits(64, 3)
    assert np.array_equal(x, x2) and np.array_equal(y, y2) and np.array_equal(m, m2)
    assert not np.array_equal(cluttered_digits(64, 4)[1], y)


def test_cluttered_pools_differ_and_classes_balanced():
    _, ytr, _ = cluttered_digits(2000, 0, pool="train")
    xte, _, _ = cluttered_digits(200, 0, pool="test")
    counts = np.bincount(ytr, minlength=10)
    assert counts.min() > 150 and counts.max() < 250
    assert not np.array_equal(cluttered_digits(200, 0, pool="train")[0], xte)


def test_cluttered_split_restores_and_rejects_other_sizes():
    cfg = DataConfig(n_train=200, n_val=64, n_test=64)
    d = build_data(cfg, 32)
    saved = json.loads(json.dumps(d.split))
    assert build_data(cfg, 32, split=saved).split == d.split
    with pytest.raises(ValueError, match="sizes"):
        build_data(DataConfig(n_train=100, n_val=64, n_test=64), 32, split=saved)
    with pytest.raises(ValueError, match="labels checksum"):
        build_data(cfg, 32, split=saved | {"labels_sha1": "0" * 16})
    with pytest.warns(UserWarning, match="differ in some pixels"):
        build_data(cfg, 32, split=saved | {"images_sha1": "0" * 16})


# ---------------------------------------------------------------- CIFAR readers and splits
def test_cifar10_reader_exact_format(tmp_path):
    xtr, ytr, xte, yte = write_raw_cifar10(tmp_path, bytes_keys=True)
    got = read_cifar(tmp_path, "cifar10")
    assert got["classes"] == CIFAR10_NAMES
    assert np.array_equal(got["train"][0], xtr.transpose(0, 3, 1, 2)) and np.array_equal(got["train"][1], ytr)
    assert np.array_equal(got["test"][0], xte.transpose(0, 3, 1, 2)) and np.array_equal(got["test"][1], yte)
    assert np.array_equal(read_cifar(tmp_path / "cifar-10-batches-py", "cifar10")["test"][1], yte)  # the folder itself


def test_cifar100_reader_exact_format(tmp_path):
    xtr, ytr, xte, yte = write_raw_cifar100(tmp_path)
    got = read_cifar(tmp_path, "cifar100")
    assert got["classes"][:2] == ["fine00", "fine01"] and len(got["classes"]) == 100
    assert np.array_equal(got["train"][0], xtr.transpose(0, 3, 1, 2)) and np.array_equal(got["train"][1], ytr)
    d = build_data(DataConfig(dataset="cifar100", data_dir=str(tmp_path), val_size=100, augment="none"), 32)
    assert d.num_classes == 100 and d.train.total_samples == 100 and d.test.total_samples == 100
    assert np.bincount(np.asarray(d.split["val"]) % 100, minlength=100).tolist() == [1] * 100   # stratified: one per class


def test_write_cifar_roundtrip(tmp_path):
    x, y, _ = cluttered_digits(60, 0)
    write_cifar(tmp_path, "cifar100", (x[:50], y[:50]), (x[50:], y[50:]))
    got = read_cifar(tmp_path, "cifar100")
    assert np.array_equal(got["train"][0], x[:50].transpose(0, 3, 1, 2)) and np.array_equal(got["test"][1], y[50:])


def test_paper_split_stratified_seeded_and_authors_split_first_last(tmp_path):
    _, ytr, _, _ = write_raw_cifar10(tmp_path)                      # 200 train, 20 per class
    base = dict(dataset="cifar10", data_dir=str(tmp_path), val_size=50)
    paper = build_data(DataConfig(**base), 16).split
    assert np.bincount(ytr[paper["val"]], minlength=10).tolist() == [5] * 10
    assert sorted(paper["train"] + paper["val"]) == list(range(200)) and len(paper["test"]) == 30
    assert build_data(DataConfig(**base), 16).split == paper
    assert build_data(DataConfig(**base, split_seed=1), 16).split["val"] != paper["val"]
    authors = build_data(DataConfig(**base, split="authors"), 16).split
    assert authors["train"] == list(range(150)) and authors["val"] == list(range(150, 200))


def test_split_saved_and_restored_identical(tmp_path):
    write_raw_cifar10(tmp_path)
    cfg = DataConfig(dataset="cifar10", data_dir=str(tmp_path), val_size=50, limit_train=100)
    d = build_data(cfg, 16)
    saved = json.loads(json.dumps(d.split))
    d2 = build_data(cfg, 16, split=saved)
    assert d2.split == d.split and len(d.split["train"]) == 100
    assert_same_batches(d.val, d2.val); assert_same_batches(d.train, d2.train)
    with pytest.raises(ValueError, match="val_size"):
        build_data(DataConfig(dataset="cifar10", data_dir=str(tmp_path), val_size=40, limit_train=100), 16, split=saved)
    other = tmp_path / "other"; write_raw_cifar10(other, per_batch=30)
    with pytest.raises(ValueError, match="n_train_pool is 200 but now it is 150"):
        build_data(DataConfig(dataset="cifar10", data_dir=str(other), val_size=50, limit_train=100), 16, split=saved)
    with pytest.raises(ValueError, match="out of range or overlap"):
        build_data(cfg, 16, split=saved | {"val": saved["train"][:3]})


# ---------------------------------------------------------------- normalisation
def test_normalisation_stats_hand_made(tmp_path):
    x = np.zeros((20, 32, 32, 3), np.uint8)
    x[:10, :, :, 0] = 255                                           # red: half the images white, half black
    x[:, :16, :, 1] = 51                                            # green: top half 0.2, bottom half 0
    x[:, :, :, 2] = 102                                             # blue: 0.4 everywhere
    y = np.arange(20) % 10
    write_cifar(tmp_path, "cifar10", (x, y), (x[5:15], y[5:15]))
    base = dict(dataset="cifar10", data_dir=str(tmp_path), val_size=0, augment="none")
    d = build_data(DataConfig(**base), 20)
    assert torch.allclose(d.norm["mean"].flatten(), torch.tensor([0.5, 0.1, 0.4]), atol=1e-6)
    assert torch.allclose(d.norm["std"].flatten(), torch.tensor([0.5, 0.1, 1 / 255]), atol=1e-6)   # constant: floor 1/255
    xb, yb = next(iter(d.test))
    assert torch.allclose(xb[:, 0].unique(), torch.tensor([-1.0, 1.0])) and torch.allclose(xb[:, 1].unique(), torch.tensor([-1.0, 1.0]))
    p = build_data(DataConfig(**base, normalize="pixel"), 20)
    want = torch.zeros(3, 32, 32); want[0] = 0.5; want[1, :16] = 0.2; want[2] = 0.4
    assert torch.allclose(p.norm["mean"], want, atol=1e-6) and torch.equal(p.norm["std"], torch.ones(3, 1, 1))
    xb, _ = next(iter(p.test))
    assert torch.allclose(xb, torch.from_numpy(x[5:15]).permute(0, 3, 1, 2).float() / 255 - want, atol=1e-6)


def test_stats_use_only_the_train_split(tmp_path):
    x = np.zeros((40, 32, 32, 3), np.uint8); x[30:] = 255            # the authors' last 10 (validation) are white
    write_cifar(tmp_path, "cifar10", (x, np.arange(40) % 10), (x[:10], np.arange(10)))
    d = build_data(DataConfig(dataset="cifar10", data_dir=str(tmp_path), val_size=10, split="authors", normalize="pixel"), 10)
    assert d.norm["mean"].abs().max() == 0


# ---------------------------------------------------------------- augmentation
def test_shift_fill_hand_made():
    img = torch.arange(1, 26, dtype=torch.float32).view(1, 1, 5, 5).repeat(2, 3, 1, 1)
    dy, dx = torch.tensor([2, -1]), torch.tensor([-3, 4])
    z, e = shift_images(img, dy, dx, "zeros"), shift_images(img, dy, dx, "edge")
    for b in range(2):
        for h in range(5):
            for w in range(5):
                sh, sw = h - dy[b].item(), w - dx[b].item()
                inside = 0 <= sh < 5 and 0 <= sw < 5
                assert z[b, :, h, w].tolist() == [img[b, 0, sh, sw].item() if inside else 0.0] * 3
                assert e[b, :, h, w].tolist() == [img[b, 0, min(max(sh, 0), 4), min(max(sw, 0), 4)].item()] * 3
    assert torch.equal(shift_images(img, torch.zeros(2, dtype=torch.long), torch.zeros(2, dtype=torch.long)), img)
    assert torch.equal(flip_images(img, torch.tensor([True, False]))[0], img[0].flip(-1))
    with pytest.raises(ValueError, match="pad_mode"): shift_images(img, dy, dx, "wrap")


@pytest.mark.parametrize("pad_mode", ["zeros", "edge"])
def test_loader_augmentation_is_a_small_shift_and_flip(tmp_path, pad_mode):
    x = indexed_images(32)
    write_cifar(tmp_path, "cifar10", (x, np.arange(32) % 10), (x[:10], np.arange(10)))
    cfg = DataConfig(dataset="cifar10", data_dir=str(tmp_path), val_size=0, pad_mode=pad_mode)
    d = build_data(cfg, 16, seed=3)
    plain = (torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255 - d.norm["mean"]) / d.norm["std"]
    d.train.set_epoch(2)
    plan = epoch_plan(32, seed=3, epoch=2, train=True)
    got = torch.cat([b[0] for b in d.train])
    seen_shift, seen_flip = False, False
    for pos in range(32):
        src = plain[plan["order"][pos]][None]
        found = [(dy, dx, f) for dy in range(-MAX_SHIFT, MAX_SHIFT + 1) for dx in range(-MAX_SHIFT, MAX_SHIFT + 1) for f in (False, True)
                 if torch.allclose(flip_images(shift_images(src, torch.tensor([dy]), torch.tensor([dx]), pad_mode), torch.tensor([f])),
                                   got[pos:pos + 1], atol=1e-5)]
        assert found, f"position {pos} is not a shift of at most {MAX_SHIFT} px (plus flip) of its image"
        seen_shift |= any(dy or dx for dy, dx, _ in found); seen_flip |= any(f for *_, f in found)
    assert seen_shift and seen_flip


# ---------------------------------------------------------------- loader protocol, determinism, sharding
def test_set_epoch_determinism_and_eval_order(tmp_path):
    x = indexed_images(70)
    write_cifar(tmp_path, "cifar10", (x, np.arange(70) % 10), (x[:25], np.arange(25) % 10))
    cfg = DataConfig(dataset="cifar10", data_dir=str(tmp_path), val_size=20, split="authors")
    a, b = build_data(cfg, 16, seed=7), build_data(cfg, 16, seed=7)
    assert (len(a.train), a.train.num_samples, len(a.val), len(a.test)) == (3, 48, 2, 2)
    a.train.set_epoch(4); b.train.set_epoch(4)
    batches = [(xa, ya) for xa, ya in a.train]
    assert all(xa.shape == (16, 3, 32, 32) and xa.dtype == torch.float32 and ya.dtype == torch.int64 for xa, ya in batches)
    assert_same_batches(batches, b.train)
    assert_same_batches(batches, a.train)                              # iterating twice repeats the epoch
    a.train.set_epoch(5)
    assert not torch.equal(next(iter(a.train))[0], batches[0][0])
    assert index_of(torch.cat([v[0] for v in a.val]), a) == list(range(50, 70))          # fixed order, all of it
    assert index_of(torch.cat([v[0] for v in a.test]), a) == list(range(25))
    nodrop = build_data(DataConfig(**{**cfg.__dict__, "drop_last": False}), 16, seed=7)
    assert (len(nodrop.train), nodrop.train.num_samples) == (4, 50)


def test_ddp_shards_disjoint_and_covering(tmp_path):
    x = indexed_images(100)
    write_cifar(tmp_path, "cifar10", (x, np.arange(100) % 10), (x[:23], np.arange(23) % 10))
    cfg = DataConfig(dataset="cifar10", data_dir=str(tmp_path), val_size=0, augment="none", drop_last=False)
    world = 3
    ranks = [build_data(cfg, 8, seed=1, rank=r, world_size=world) for r in range(world)]
    train, test = [], []
    for d in ranks:
        d.train.set_epoch(2)
        train.append(index_of(torch.cat([b[0] for b in d.train]), d))
        test.append(index_of(torch.cat([b[0] for b in d.test]), d))
    assert [len(t) for t in train] == [33] * 3 and len(set(sum(train, []))) == 99        # equal, disjoint, 99 of 100
    assert sorted(sum(test, [])) == list(range(23))                                       # eval: disjoint and covering
    single = build_data(cfg, 8, seed=1); single.train.set_epoch(2)
    order = index_of(torch.cat([b[0] for b in single.train]), single)
    assert [order[r:99:world] for r in range(world)] == train                             # shards of the same permutation


# ---------------------------------------------------------------- ImageFolder
def test_image_folder_png_and_jpeg_resident_and_workers(tmp_path, tmp_cache):
    classes = ["cat", "dog", "emu"]
    x = indexed_images(36, size=16)
    y = np.arange(36) % 3
    write_folder(tmp_path, x[:30], y[:30], "train", "png", classes)
    write_folder(tmp_path, x[30:], y[30:], "test", "jpg", classes)
    info = read_image_folder(tmp_path)
    assert info["classes"] == classes and len(info["train"][0]) == 30 and info["test"][1].tolist() == sorted(y[30:].tolist())
    cfg = DataConfig(dataset="imagefolder", data_dir=str(tmp_path), val_size=6, resident="yes")
    d = build_data(cfg, 8, seed=2)
    assert (d.image_size, d.num_classes, d.classes, d.resident) == (16, 3, classes, True)
    assert np.bincount(np.asarray(info["train"][1])[d.split["val"]]).tolist() == [2, 2, 2]
    cached = sorted(tmp_cache.glob("*.npy"))
    assert len(cached) == 2                                                              # train pool and test decoded once
    stored = np.load([c for c in cached if c.name.startswith("train")][0])
    files = info["train"][0]
    want = np.stack([x[int(f.stem)] for f in files]).transpose(0, 3, 1, 2)              # PNG is lossless
    assert np.array_equal(stored, want)
    mtimes = [c.stat().st_mtime_ns for c in cached]
    w = build_data(DataConfig(**{**cfg.__dict__, "resident": "no", "workers": 0}), 8, seed=2)
    assert [c.stat().st_mtime_ns for c in sorted(tmp_cache.glob("*.npy"))] == mtimes      # cache reused, not rewritten
    assert w.resident is False and torch.allclose(w.norm["mean"], d.norm["mean"])
    for loader_a, loader_b in [(d.train, w.train), (d.val, w.val), (d.test, w.test)]:
        loader_a.set_epoch(1); loader_b.set_epoch(1)
        assert_same_batches(loader_a, loader_b, atol=1e-5)                                # same plan, same batches
    one = build_data(DataConfig(**{**cfg.__dict__, "resident": "no", "workers": 1}), 8, seed=2)
    one.train.set_epoch(1)
    assert assert_same_batches(one.train, w.train, atol=1e-5) == 3                       # a worker process, same batches


def test_image_folder_rrc_path(tmp_path):
    classes = ["a", "b"]
    x = indexed_images(12, size=40)
    write_folder(tmp_path, x[:8], np.arange(8) % 2, "train", "jpg", classes)
    write_folder(tmp_path, x[8:], np.arange(4) % 2, "val", "jpg", classes)               # ImageNet's val/ as test
    cfg = DataConfig(dataset="imagenet", data_dir=str(tmp_path), val_size=2, augment="rrc", image_size=24, workers=0)
    d = build_data(cfg, 3)
    assert d.resident is False and d.image_size == 24
    d.train.set_epoch(0)
    xa = torch.cat([b[0] for b in d.train]); xb = torch.cat([b[0] for b in d.train])
    assert xa.shape == (6, 3, 24, 24) and torch.equal(xa, xb)
    d.train.set_epoch(1)
    assert not torch.equal(torch.cat([b[0] for b in d.train]), xa)
    assert torch.cat([b[0] for b in d.test]).shape == (4, 3, 24, 24)


# ---------------------------------------------------------------- the shared CIFAR-10 JPEGs
def test_shared_cifar10_jpegs_subset(tmp_cache):
    root = SHARED / "data" / "cifar10-jpg"
    if not (root / "train").is_dir(): pytest.skip(f"shared CIFAR-10 JPEGs absent at {root} (set IGNORE_ATTN_SHARED)")
    cfg = DataConfig(dataset="imagefolder", data_dir=str(root), limit_train=300, limit_val=100, limit_test=200)
    d = build_data(cfg, 50)
    assert d.classes == CIFAR10_NAMES and d.image_size == 32 and d.resident
    assert (d.train.total_samples, d.val.total_samples, d.test.total_samples) == (300, 100, 200)
    assert d.split["n_train_pool"] == 50000 and d.split["n_test_pool"] == 10000
    labels = torch.cat([y for _, y in d.test])
    assert torch.bincount(labels).tolist() == [20] * 10
    assert torch.allclose(d.norm["mean"].flatten(), torch.tensor([0.49, 0.48, 0.45]), atol=0.05)
    assert list(tmp_cache.glob("*.npy"))
    again = build_data(cfg, 50, split=json.loads(json.dumps(d.split)))
    assert_same_batches(d.test, again.test); assert_same_batches(d.train, again.train)


# ---------------------------------------------------------------- bad input
def test_missing_cifar_names_the_file_and_how_to_get_it(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        build_data(DataConfig(dataset="cifar10", data_dir=str(tmp_path)), 8)
    msg = str(e.value)
    assert str(tmp_path / "cifar-10-batches-py" / "data_batch_1") in msg and "download" in msg and "cifar-10-python.tar.gz" in msg
    with pytest.raises(FileNotFoundError, match=r"cifar-100-python/train"):
        read_cifar(tmp_path, "cifar100")


def test_corrupt_cifar_batch(tmp_path):
    write_raw_cifar10(tmp_path)
    with open(tmp_path / "cifar-10-batches-py" / "data_batch_3", "wb") as f: pickle.dump({"data": np.zeros((4, 100), np.uint8), "labels": [0] * 4}, f)
    with pytest.raises(ValueError, match="data_batch_3.*3072"):
        read_cifar(tmp_path, "cifar10")


def test_wrong_folder_layouts(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist.*expected layout"):
        read_image_folder(tmp_path / "nowhere")
    (tmp_path / "a" / "train").mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "a" / "train" / "x.png")
    with pytest.raises(FileNotFoundError, match=r"lacks test/ \(or val/\)"):
        read_image_folder(tmp_path / "a")
    (tmp_path / "a" / "test" / "cat").mkdir(parents=True)
    with pytest.raises(ValueError, match="1 image files directly; move them into one folder per class"):
        read_image_folder(tmp_path / "a")
    (tmp_path / "a" / "train" / "cat").mkdir(); (tmp_path / "a" / "train" / "dog").mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "a" / "train" / "cat" / "x.png")
    with pytest.raises(ValueError, match=r"dog holds no image files"):
        read_image_folder(tmp_path / "a")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "a" / "train" / "dog" / "x.png")
    with pytest.raises(ValueError, match=r"missing \['dog'\]"):
        read_image_folder(tmp_path / "a")
    with pytest.raises(FileNotFoundError, match="lacks train/"):
        build_data(DataConfig(dataset="imagefolder", data_dir=str(tmp_path / "a" / "train")), 8)


@pytest.mark.parametrize("kw, err, text", [
    (dict(dataset="mnist"), ValueError, "dataset='mnist' is not valid; choose one of 'cluttered-digits'"),
    (dict(normalize="zca"), ValueError, "'channel', 'pixel'"),
    (dict(augment="mixup"), ValueError, "'shift-flip'"),
    (dict(resident="maybe"), ValueError, "'auto', 'yes', 'no'"),
    (dict(dataset="imagenet"), ValueError, "needs data_dir"),
    (dict(n_train=0), ValueError, "n_train=0 is too small"),
    (dict(image_size=32.0), TypeError, "image_size must be an int"),
    (dict(download="yes"), TypeError, "download must be True or False"),
    (dict(dataset="imagefolder", data_dir="/x", download=True), ValueError, "only for cifar10/cifar100"),
    (dict(augment="rrc", resident="yes"), ValueError, "resident='no'"),
])
def test_bad_options(kw, err, text):
    with pytest.raises(err, match=text.replace("(", r"\(").replace(")", r"\)")):
        build_data(DataConfig(**kw), 8)


def test_bad_run_arguments_and_val_size(tmp_path):
    with pytest.raises(ValueError, match="rank=2 must be below world_size=2"): build_data(DataConfig(n_train=50), 8, rank=2, world_size=2)
    with pytest.raises(ValueError, match="batch_size=0"): build_data(DataConfig(n_train=50), 0)
    with pytest.raises(TypeError, match="cfg must be a DataConfig"): build_data({"dataset": "cifar10"}, 8)
    write_raw_cifar10(tmp_path)
    with pytest.raises(ValueError, match="val_size=200 must leave training images out of the 200"):
        build_data(DataConfig(dataset="cifar10", data_dir=str(tmp_path), val_size=200), 8)
    with pytest.raises(ValueError, match="split must be a dict saved by build_data"):
        build_data(DataConfig(n_train=50), 8, split={"train": [1]})
