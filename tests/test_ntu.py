"NTU RGB+D readers and the two-stream MMTM model, on files these tests write in the dataset's formats."
import builtins
import math
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from ignore_attn import ntu_data, ntu_model
from ignore_attn.attention import record_masks

torch.set_num_threads(1)
ID = 72057594037931101
SHARED = Path(os.environ.get("IGNORE_ATTN_SHARED", Path(__file__).resolve().parents[2] / "shared"))


# ---------------------------------------------------------------- writing .skeleton files by hand (not with ntu's writer)
def pose(t: float, cx: float, amplitude: float, wide: bool = False) -> np.ndarray:
    "A (25, 11) float32 joint block: a tall (or wide) point cloud at x = cx, z = 3 m, moving with `amplitude`."
    rng = np.random.default_rng(7)
    x = cx + rng.uniform(-0.25, 0.25, 25) * (4 if wide else 1) + amplitude * np.sin(t)
    y = rng.uniform(-0.9, 0.8, 25) * (0.2 if wide else 1) + amplitude * np.cos(t)
    z = 3.0 + rng.uniform(-0.1, 0.1, 25)
    cols = [x, y, z, 256 + 365 * x / z, 212 - 365 * y / z, 960 + 1050 * x / z, 540 - 1050 * y / z,
            np.ones(25), np.zeros(25), np.zeros(25), np.zeros(25)]
    return np.column_stack(cols).astype(np.float32)


def body_text(tid: int, joints: np.ndarray, states, header=(0, 1, 2, 0, 3, 0), lean=(0.0125, -0.5), tracking=2) -> list[str]:
    "The lines of one body record, formatted independently of ntu_data.format_skeleton."
    lines = [f"{tid} {' '.join(str(h) for h in header)} {lean[0]} {lean[1]} {tracking}", "25"]
    lines += [" ".join(repr(float(v)) for v in row) + f" {s}" for row, s in zip(joints, states)]
    return lines


def write_file(path: Path, frames: list[list[tuple]]) -> Path:
    "frames: per frame a list of (tid, joints) bodies."
    lines = [str(len(frames))]
    for bodies in frames:
        lines.append(str(len(bodies)))
        for tid, joints in bodies:
            lines += body_text(tid, joints, [2] * 24 + [1])
    path.write_text("\r\n".join(lines) + "\r\n")     # the dataset's files end lines with CRLF
    return path


@pytest.fixture
def recording(tmp_path):
    "40 frames: frames 0-1 and 20 empty; actor A (moves little) listed first, actor B (moves a lot) second from frame 2;"
    "a noise body (short, wide, jumping) in frames 5-8, listed first."
    frames = []
    for f in range(40):
        bodies = []
        if 5 <= f <= 8: bodies.append((ID + 9, pose(f, 1.5 * (-1) ** f, 0.5, wide=True)))
        bodies.append((ID, pose(f / 5, -0.4, 0.02)))
        bodies.append((ID + 1, pose(f / 5, 0.4, 0.3)))
        frames.append([] if f in (0, 1, 20) else bodies)
    return write_file(tmp_path / "S001C002P003R002A013.skeleton", frames), frames


# ---------------------------------------------------------------- reading
def test_reader_returns_every_field(recording):
    path, frames = recording
    sk = ntu_data.read_skeleton(path)
    assert sk.n_frames == 40 and sk.body_counts().tolist()[:10] == [0, 0, 2, 2, 2, 3, 3, 3, 3, 2]
    for f, bodies in enumerate(frames):
        for body, (tid, joints) in zip(sk.frames[f], bodies):
            assert body.tracking_id == tid and isinstance(body.tracking_id, int)
            assert body.header() == (tid, 0, 1, 2, 0, 3, 0, 0.0125, -0.5, 2)
            assert body.joints.dtype == np.float32 and np.array_equal(body.joints, joints)
            assert body.joint_states.tolist() == [2] * 24 + [1]


def test_one_body_file_and_writer_round_trip(tmp_path):
    path = write_file(tmp_path / "one.skeleton", [[(ID, pose(0, 0, 0))], []])
    sk = ntu_data.read_skeleton(path)
    assert [len(b) for b in sk.frames] == [1, 0]
    again = ntu_data.read_skeleton(ntu_data.write_skeleton(tmp_path / "again.skeleton", sk))
    assert again == sk and ntu_data.SkeletonFile.from_arrays(sk.to_arrays()) == sk


@pytest.mark.parametrize("edit, message", [
    (lambda lines: lines[:50], "line 51: the file ends where joint 18 of frame 3, body 2"),
    (lambda lines: lines[:4] + ["72057594037931101 0 1 2"] + lines[5:], "line 5: expected the body line of frame 3, body 1 (10 fields"),
    (lambda lines: lines[:6] + ["0.1 0.2 oops" + " 0" * 9] + lines[7:], "line 7: joint 1 z must be a number, found 'oops'"),
    (lambda lines: lines[:5] + ["24"] + lines[6:], "line 6: frame 3, body 1 has 24 joints"),
    (lambda lines: ["many"] + lines[1:], "line 1: the frame count must be an integer"),
    (lambda lines: lines + ["0"], "expected the end of the file after the 40 frames"),
])
def test_damaged_file_names_file_and_line(recording, tmp_path, edit, message):
    path, _ = recording
    bad = tmp_path / "S001C001P001R001A001.skeleton"
    bad.write_text("\n".join(edit(path.read_text().splitlines())) + "\n")
    with pytest.raises(ValueError) as err:
        ntu_data.read_skeleton(bad)
    assert str(bad) in str(err.value) and message in str(err.value)


# ---------------------------------------------------------------- tensors
def test_tensor_follows_the_heuristics(recording):
    path, frames = recording
    sk = ntu_data.read_skeleton(path)
    x = ntu_data.skeleton_tensor(sk, frames=40)
    assert x.shape == (3, 40, 25, 2) and x.dtype == np.float32
    assert not x[:, [0, 1, 20]].any()                                  # frames with no body are zeros
    np.testing.assert_array_equal(x[:, 6, :, 0], frames[6][2][1][:, :3].T)   # B (moves most) is the main actor
    np.testing.assert_array_equal(x[:, 6, :, 1], frames[6][1][1][:, :3].T)   # A second; the noise body dropped
    kept = [t.tracking_id for t in ntu_data.select_tracks(sk)]
    assert kept == [ID + 1, ID] and ntu_data.select_tracks(sk, denoise=False)[0].tracking_id == ID + 9
    y = ntu_data.skeleton_tensor(sk, frames=4)                              # uniform indices 0, 13, 26, 39
    np.testing.assert_array_equal(y, x[:, [0, 13, 26, 39]])


def test_single_body_leaves_second_slot_zero(tmp_path):
    sk = ntu_data.read_skeleton(write_file(tmp_path / "a.skeleton", [[(ID, pose(f, 0, 0.1))] for f in range(5)]))
    x = ntu_data.skeleton_tensor(sk, frames=8)
    assert x[..., 0].any() and not x[..., 1].any()


def test_wide_long_body_is_noise_but_a_lone_one_is_kept(tmp_path):
    wide = [[(ID, pose(f, 0, 0.01, wide=True))] for f in range(30)]
    sk = ntu_data.read_skeleton(write_file(tmp_path / "w.skeleton", wide))
    assert ntu_data.noise_reason(ntu_data.body_tracks(sk)[0]).startswith("wider than tall")
    assert [t.tracking_id for t in ntu_data.select_tracks(sk)] == [ID]        # the only body: kept anyway


def test_cache_parses_each_file_once(recording, tmp_path, monkeypatch):
    path, _ = recording
    first = ntu_data.load_skeleton(path, tmp_path / "cache")
    monkeypatch.setattr(ntu_data, "read_skeleton", lambda p: pytest.fail("parsed a cached file again"))
    assert ntu_data.load_skeleton(path, tmp_path / "cache") == first


# ---------------------------------------------------------------- names, exclusions, splits
def test_shipped_exclusion_list():
    assert len(ntu_data.EXCLUDED) == 302
    source = SHARED / "data" / "ntu" / "samples_with_missing_skeletons.txt"
    if not source.is_file(): pytest.skip(f"shared data not found at {source} (set IGNORE_ATTN_SHARED)")
    assert ntu_data.EXCLUDED == frozenset(source.read_text().split())


def test_excluded_and_missing_samples_are_reported():
    names = ["S001C001P001R001A001", "S001C002P005R002A008", "S001C003P003R002A054", "S003C001P007R001A010"]
    with pytest.warns(UserWarning, match=r"4 samples requested = 1 train \+ 1 test \+ 1 excluded .* \+ 1 missing"):
        train, test, report = ntu_data.split_samples(names, "xsub", available=names[:3])
    assert (train, test) == (["S001C001P001R001A001"], ["S001C003P003R002A054"])
    assert report.excluded == ("S001C002P005R002A008",) and report.missing == ("S003C001P007R001A010",)
    assert report.requested == report.train + report.test + len(report.excluded) + len(report.missing)


def test_protocols_on_the_exclusion_list():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        split = ntu_data.split_samples(ntu_data.EXCLUDED, "xview", excluded=())
    assert (len(split.train), len(split.test)) == (274, 28)
    assert sum(ntu_data.is_train_sample(n, "xsub") for n in ntu_data.EXCLUDED) == 229


def test_bad_names():
    assert ntu_data.parse_sample_name("S001C002P003R002A013") == (1, 2, 3, 2, 13)
    for bad in ["S01C002P003R002A013", "S001C002P003R002A013x1", "A013"]:
        with pytest.raises(ValueError, match="SsssCcccPpppRrrrAaaa"):
            ntu_data.parse_sample_name(bad)


# ---------------------------------------------------------------- video
def test_video_read_back(tmp_path):
    pytest.importorskip("av")
    levels = torch.arange(8, dtype=torch.uint8) * 25 + 20
    clip = levels.view(1, 8, 1, 1).expand(3, 8, 24, 32).contiguous()
    video = ntu_data.write_video(tmp_path / "v.avi", clip)
    frames = ntu_data.read_video_frames(video, frames=4, size=16)
    assert frames.shape == (3, 4, 16, 16) and frames.dtype == torch.uint8
    assert torch.allclose(frames.float().mean(dim=(0, 2, 3)), levels[[0, 2, 5, 7]].float(), atol=4)


def test_video_without_pyav_says_how_to_fix(tmp_path, monkeypatch):
    real_import = builtins.__import__
    def no_av(name, *args, **kwargs):
        if name == "av": raise ImportError("No module named 'av'")
        return real_import(name, *args, **kwargs)
    monkeypatch.setattr(builtins, "__import__", no_av)
    (tmp_path / "v.avi").write_bytes(b"x")
    with pytest.raises(ImportError, match="pip install av"):
        ntu_data.read_video_frames(tmp_path / "v.avi")


def test_dataset_on_frame_folders_and_videos(tmp_path):
    names = ["S001C001P001R001A001", "S001C002P002R001A002"]
    for as_frames in (True, False):
        if not as_frames: pytest.importorskip("av")
        sroot, vroot = ntu_data.write_tiny_ntu(tmp_path / str(as_frames), names, as_frames=as_frames)
        ds = ntu_data.NTUDataset(sroot, vroot, names, frames_rgb=3, frames_skel=16, train=True, size=16, resize=20,
                            cache_dir=tmp_path / "cache")
        (rgb, skel), label = ds[1]
        assert rgb.shape == (3, 3, 16, 16) and skel.shape == (3, 16, 25, 2) and label == 1
    with pytest.raises(FileNotFoundError, match="1 of 3 samples lack"):
        ntu_data.NTUDataset(sroot, vroot, names + ["S001C001P001R001A003"])


# ---------------------------------------------------------------- model
@pytest.mark.parametrize("spec", ["mmtm", "mmtm-ign1(0.5)", "mmtm-ign2", "mmtm-ign3", "standard"])
def test_tiny_model_trains_and_masks_read_out(spec):
    torch.manual_seed(0)
    model = ntu_model.MMTMFusionNet.tiny(spec, num_classes=4)
    batches = [((torch.randn(2, 3, 3, 32, 32), torch.randn(2, 3, 16, 25, 2)), torch.tensor([1, 2])) for _ in range(2)]
    before = [p.detach().clone() for p in model.parameters()]
    losses = ntu_model.train_steps(model, batches)
    assert all(math.isfinite(l) for l in losses)
    changed = [not torch.equal(b, p) for b, p in zip(before, model.parameters())]
    assert sum(changed) / len(changed) > 0.9
    model.eval()
    with record_masks(model) as masks, torch.no_grad():
        assert model(batches[0][0]).shape == (2, 4)
    if spec == "standard":
        assert masks == {} and len(model.fusion) == 0
    else:
        assert sorted(masks) == ["fusion.layer2", "fusion.layer3", "fusion.layer4"]
        assert masks["fusion.layer4"]["a"].shape == (2, 128) and masks["fusion.layer4"]["b"].shape == (2, 32)


def test_refused_specs_and_inputs():
    with pytest.raises(ValueError, match="'standard' for two streams"):
        ntu_model.MMTMFusionNet.tiny("se-ign3")
    model = ntu_model.MMTMFusionNet.tiny()
    with pytest.raises(TypeError, match="as a pair"):
        model(torch.zeros(1, 3, 2, 32, 32))


def test_pretrained_from_files_only(tmp_path):
    donor = ntu_model.BottleneckResNet(1000, width=1 / 16, blocks=(1, 1, 1, 1))
    torch.save(donor.state_dict(), tmp_path / "rgb.pt")
    model = ntu_model.MMTMFusionNet.tiny(num_classes=4)
    with pytest.warns(UserWarning, match="skeleton stream trains from scratch"):
        reports = ntu_model.load_pretrained(model, rgb_path=tmp_path / "rgb.pt")
    assert torch.equal(model.rgb.backbone.layer4[0].conv3.weight, donor.layer4[0].conv3.weight)
    assert [s.split()[0] for s in reports["rgb"].skipped] == ["fc.weight", "fc.bias"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert ntu_model.load_pretrained(model) == {}
    assert [str(w.message).split(":")[0] for w in caught] == ["no rgb checkpoint given", "no skeleton checkpoint given"]


def test_full_size_model_matches_the_paper():
    model = ntu_model.MMTMFusionNet(attention="mmtm-ign1(0.5)")
    assert model.rgb.channels == (512, 1024, 2048) and model.skeleton.channels == (128, 256, 512)
    assert {str(m.spec) for m in model.fusion.values()} == {"mmtm-ign1(0.5)"}
