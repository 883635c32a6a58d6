"""The GPU suite's CPU dry run: every stage leaves its record, numbers or a traceback, one failing stage or path stops
none after it, and what was written survives the suite being stopped. Also the DDP mends that a CPU can check."""
from __future__ import annotations
import faulthandler, json, math, os, signal, socket, subprocess, sys, textwrap, time
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SUITE = REPO / "benchmarks" / "device_suite.py"
sys.path.insert(0, str(REPO / "benchmarks"))
import device_suite as ds  # noqa: E402


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


def _env() -> dict:
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "OMP_NUM_THREADS": "1",
           "MPLBACKEND": "Agg"}
    env.pop("IGNORE_ATTN_CACHE", None)
    return env


def _lines(folder: Path) -> list[dict]:
    "Every line of the one JSONL in `folder`, each parsed (a half-written line fails here)."
    files = sorted(folder.glob("*.jsonl"))
    assert len(files) == 1, files
    return [json.loads(l) for l in files[0].read_text().splitlines()]


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    """One dry run of every stage with an injected failure in `packed` (a middle stage) and a segfault in the first
    model's eager_fp32 path (a middle path): its JSONL records, exit code and output."""
    out = tmp_path_factory.mktemp("suite")
    p = subprocess.run([sys.executable, str(SUITE), "--dry-run", "--out", str(out), "--stages", ",".join(ds.STAGES), "--fail-stage", "packed",
                        "--fail-path", "eager_fp32:segv"], capture_output=True, text=True, env=_env(), timeout=600)
    files = sorted(out.glob("*.jsonl"))
    assert len(files) == 1, (files, p.stdout[-2000:], p.stderr[-2000:])
    lines = [json.loads(l) for l in files[0].read_text().splitlines()]
    return {"lines": lines, "rc": p.returncode, "stdout": p.stdout, "out": out, "file": files[0]}


def test_every_line_names_the_machine_and_the_code(dry_run):
    for r in dry_run["lines"]:
        for k in ("run_id", "gpu", "torch", "cuda", "commit", "record", "dry_run"): assert k in r, (k, r)
        assert r["dry_run"] is True and r["gpu"].startswith("cpu")
    header = dry_run["lines"][0]
    assert header["record"] == "header" and "CPU DRY RUN" in header["note"]
    assert dry_run["lines"][-1]["record"] == "footer"
    assert dry_run["file"].name.endswith("-cpu-dry-run.jsonl")


def test_every_stage_ok_with_numbers_or_error_with_traceback(dry_run):
    stages = {r["stage"]: r for r in dry_run["lines"] if r["record"] == "stage"}
    assert list(ds.STAGES) == [s for s in ds.STAGES if s in stages] and set(stages) == set(ds.STAGES)
    results = lambda s: [r for r in dry_run["lines"] if r["record"] == "result" and r["stage"] == s]
    for name, st in stages.items():
        if name == "packed":
            assert st["status"] == "error" and "--fail-stage packed" in st["error"]
            assert "Traceback (most recent call last)" in st["traceback"] and "injected failure" in st["traceback"]
        elif name == "throughput":   # the segfaulted path fails the stage, and only that path
            assert st["status"] == "failed" and "SIGSEGV" in st["error"], st
        else:
            assert st["status"] == "ok", (name, st.get("error"), st.get("traceback"))
            assert _finite(st["time_s"]) and results(name), name
    checks = {r["check"]: r for r in results("correctness_fastpaths")}
    assert checks["control_other_batch"]["passed"] and checks["bf16_channels_last"]["passed"]
    assert checks["graphs_fp32"]["status"] == "skipped" and "CUDA" in checks["graphs_fp32"]["reason"]
    assert checks["bf16_channels_last"]["update_rel"] < ds.TOL["bf16"]["update_rel"] < checks["control_other_batch"]["update_rel"]
    timed = [r for r in results("throughput") if r["status"] == "ok"]
    assert {(r["attention"], r["path"]) for r in timed} >= {("se-ign3", "plain"), ("se-ign3", "bf16_channels_last"),
                                                           ("se-ign3", "compile"), ("cbam-ign1(0.5)", "eager_fp32")}
    for r in timed:
        assert _finite(r["img_per_s"]) and r["img_per_s"] > 0 and _finite(r["ratio_to_plain"])
        if r["path"] == "plain": assert r["ratio_to_plain"] == 1.0
    summary = next(r for r in results("table1") if r.get("summary"))
    assert set(summary["test_top1_err"]) == {"standard", "se", "se-ign3"}
    assert all(_finite(v) for v in summary["test_top1_err"].values()) and len(summary["differences"]) == 3
    assert "CPU DRY RUN" in summary["protocol"] and "NOT the paper's protocol" in summary["protocol"]


def test_a_crashed_path_is_recorded_and_the_paths_after_it_still_report(dry_run):
    rows = [r for r in dry_run["lines"] if r["record"] == "result" and r["stage"] == "throughput" and r["status"] != "skipped"]
    order = [(r["attention"], r["path"], r["status"]) for r in rows]
    crashed = order.index(("se-ign3", "eager_fp32", "error"))
    assert "signal 11 (SIGSEGV)" in rows[crashed]["error"]
    after = order[crashed + 1:]
    assert after and all(status == "ok" for *_, status in after), order
    # every non-compile path of every model comes before the first compile path
    paths = [p for _, p, _ in order]
    assert max(i for i, p in enumerate(paths) if not ds.PATHS.get(p, (0, 0, False))[2]) < paths.index("compile")


def test_a_failed_stage_fails_the_command_but_not_the_stages_after_it(dry_run):
    assert dry_run["rc"] == 1
    order = [r["stage"] for r in dry_run["lines"] if r["record"] == "stage"]
    assert order.index("table1") > order.index("packed")
    # no packed result: table1 planned its epochs from the cautious default rate, and said so
    plan = next(r for r in dry_run["lines"] if r["record"] == "result" and r["stage"] == "table1" and r.get("summary"))["plan"]
    assert plan["rate_from"].startswith("no packed result")


def test_dry_run_never_writes_into_the_gpu_results_folder():
    p = subprocess.run([sys.executable, str(SUITE), "--dry-run", "--out", str(REPO / "benchmarks" / "results")],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode != 0 and "never writes into benchmarks/results" in p.stderr


def test_cell_selection_follows_nbdev_test(tmp_path):
    nb = ds._toy_notebook(tmp_path)
    ran = [src.splitlines()[0] for _, src in ds.selected_cells(nb, {"gpu"})]
    assert ran == ["x = []", "#| gpu", "assert x == ['gpu'], x"]            # slow and eval: false are left out
    assert "#| gpu" not in [src.splitlines()[0] for _, src in ds.selected_cells(nb, set())]
    assert ds.cell_directives("#| eval: false\nx = 1") == {"eval:": ["false"]}
    assert set(ds.gpu_notebooks()) >= {"nbs/15_engine.ipynb", "nbs/01_attention.ipynb"}


def test_scaled_milestones_keep_the_paper_fractions():
    assert ds.scaled_milestones(200) == [60, 120, 160]
    assert ds.scaled_milestones(20) == [6, 12, 16]
    assert ds.scaled_milestones(3) == [1, 2] and ds.scaled_milestones(1) == []


def test_the_pack_is_decoded_from_its_bytes_as_the_files_would_be(tmp_path):
    "decode_pack gives the images the unpacked files give, with labels from their folders; the pickles read back the same."
    from PIL import Image
    from ignore_attn.data import read_cifar
    pack = ds.synthetic_pack(tmp_path / "pack.npz", n_train=3, n_test=2)
    d = ds.decode_pack(pack)
    assert d["classes"][:2] == ["airplane", "automobile"] and d["train"][0].shape == (30, 32, 32, 3)
    z = np.load(pack)
    for i, p in enumerate(z["paths"]):   # the format the shared unpack tool writes out as files
        f = tmp_path / "files" / p.decode(); f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(z["jpeg"][z["offsets"][i]:z["offsets"][i + 1]].tobytes())
    files = sorted((tmp_path / "files" / "test").rglob("*.jpg"))
    np.testing.assert_array_equal(d["test"][0], np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files]))
    assert d["test"][1].tolist() == [d["classes"].index(f.parent.name) for f in files]
    info = ds.prepare_cifar(pack, tmp_path / "cifar")
    back = read_cifar(tmp_path / "cifar")
    np.testing.assert_array_equal(back["train"][0], d["train"][0].transpose(0, 3, 1, 2))
    assert back["classes"] == d["classes"] and info["decoded"]
    assert not ds.prepare_cifar(tmp_path / "missing.npz", tmp_path / "cifar")["decoded"]   # reused, pack not needed


def _records(tmp_path) -> "ds.Records":
    return ds.Records(tmp_path / "r.jsonl", {"run_id": "t", "stage": "throughput"})


@pytest.mark.parametrize("how, says", [("raise", "RuntimeError: boom"), ("exit", "exited with code 3"),
                                        ("segv", "signal 11 (SIGSEGV)"), ("hang", "ran past its cap of 2 s"),
                                        ("silent", "ended without a record")])
def test_an_isolated_measurement_that_fails_gets_a_record_and_the_next_one_runs(tmp_path, how, says):
    rec = _records(tmp_path)
    def bad():
        if how == "raise": raise RuntimeError("boom")
        if how == "exit": os._exit(3)
        if how == "segv":
            faulthandler.disable()   # pytest's handler would print this child's stack into the test output
            os.kill(os.getpid(), signal.SIGSEGV)
        if how == "hang": time.sleep(60)
    t0 = time.time()
    r = ds.run_isolated("bad", bad, 2, rec, path="a")
    assert r["status"] in ("error", "timeout") and says in r["error"] and time.time() - t0 < 30
    good = ds.run_isolated("good", lambda: rec.write("result", path="b", status="ok", img_per_s=1.0), 10, rec, path="b")
    assert good["status"] == "ok"
    assert [(r["path"], r["status"]) for r in rec.read()] == [("a", r["status"]), ("b", "ok")]


def _suite_cmd(out: Path, *extra: str) -> list[str]:
    return [sys.executable, str(SUITE), "--dry-run", "--out", str(out), "--logs", str(out / "logs"), *extra]


def test_lines_written_before_a_kill_are_whole_and_in_out(tmp_path):
    "SIGKILL the whole suite mid-way: every line it wrote is in --out, and each one parses."
    p = subprocess.Popen(_suite_cmd(tmp_path), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         start_new_session=True)
    try:
        deadline = time.time() + 240
        while time.time() < deadline and p.poll() is None:   # wait for some results, then kill everything
            f = next(iter(tmp_path.glob("*.jsonl")), None)
            if f is not None and f.read_text().count('"record": "result"') >= 3: break
            time.sleep(0.2)
    finally:
        os.killpg(p.pid, signal.SIGKILL); p.wait()
    lines = _lines(tmp_path)
    assert lines[0]["record"] == "header" and sum(r["record"] == "result" for r in lines) >= 3
    assert "table1" not in lines[0]["stages"]                       # the first GPU run leaves Table 1 out
    assert (tmp_path / "logs" / "prepare.log").exists()           # logs written as the stages run


def test_run_device_stopped_by_its_timeout_leaves_the_jsonl_and_logs_in_out(tmp_path):
    "run_device.sh with a short SUITE_TIMEOUT: the suite is stopped, says so in a footer, and $OUT holds what it wrote."
    env = {**_env(), "OUT": str(tmp_path), "SUITE_TIMEOUT": "25", "PYTHON": sys.executable}
    # a path that hangs: the suite is still running when its timeout comes, however fast this machine is
    p = subprocess.run(["bash", str(REPO / "benchmarks" / "run_device.sh"), "--dry-run", "--fail-path", "plain:hang"], env=env, capture_output=True,
                       text=True, timeout=300)
    lines = _lines(tmp_path)
    assert lines[0]["record"] == "header" and lines[-1]["record"] == "footer", p.stdout[-2000:]
    assert lines[-1]["stopped_by"] == "SIGTERM" and p.returncode == 124, (p.returncode, p.stdout[-2000:])
    assert any(r["record"] == "stage" and r["status"] == "stopped" for r in lines)
    assert list((tmp_path / "logs").glob("*.log"))


def test_bad_fail_path_is_refused_in_one_line(tmp_path):
    p = subprocess.run([sys.executable, str(SUITE), "--dry-run", "--out", str(tmp_path), "--fail-path", "eager:boom"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode != 0 and "use PATH:MODE" in p.stderr and not list(tmp_path.glob("*.jsonl"))


# ------------------------------------------------------------------------------------------------ DDP on the CPU
_RANK = textwrap.dedent("""
    import atexit, json, os, sys
    import torch.distributed as dist
    out = sys.argv[1]
    def report():   # registered first, so it runs after the trainer's own exit handlers
        open(f"{out}/rank{os.environ['RANK']}.json", "w").write(json.dumps({"initialized_at_exit": dist.is_initialized()}))
    atexit.register(report)
    from ignore_attn.engine import resolve_runtime, setup_distributed
    from ignore_attn.train import TrainConfig, resolve_config
    rt = resolve_runtime(resolve_config(TrainConfig(device="cpu")))
    setup_distributed(rt)
    dist.barrier()
    assert dist.get_world_size() == 2 and rt.distributed
    if sys.argv[2] == "error": raise RuntimeError("a rank fails after joining")
""")


@pytest.mark.parametrize("end", ["normal", "error"])
def test_ranks_leave_the_process_group_at_exit(tmp_path, end):
    "Two gloo ranks on the CPU: destroy_process_group has run by the end of each process, also after an error."
    with socket.socket() as sk:
        sk.bind(("127.0.0.1", 0)); port = sk.getsockname()[1]
    script = tmp_path / "rank.py"; script.write_text(_RANK)
    procs = [subprocess.Popen([sys.executable, str(script), str(tmp_path), end], stderr=subprocess.PIPE, text=True,
                              env={**_env(), "RANK": str(r), "LOCAL_RANK": str(r), "WORLD_SIZE": "2",
                                   "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}) for r in range(2)]
    errs = [p.communicate(timeout=120)[1] for p in procs]
    assert [p.returncode != 0 for p in procs] == [end == "error"] * 2, errs
    for r in range(2):
        assert json.loads((tmp_path / f"rank{r}.json").read_text()) == {"initialized_at_exit": False}, errs[r]


def test_explicit_gpu_under_torchrun_is_refused(monkeypatch):
    "--device cuda:0 with WORLD_SIZE > 1 would put every rank on GPU 0: refused, naming the fix."
    import torch
    from ignore_attn.engine import resolve_runtime
    from ignore_attn.train import TrainConfig, resolve_config
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    for k, v in {"RANK": "1", "LOCAL_RANK": "1", "WORLD_SIZE": "2"}.items(): monkeypatch.setenv(k, v)
    with pytest.raises(ValueError, match="puts every rank on GPU 0; pass --device cuda"):
        resolve_runtime(resolve_config(TrainConfig(device="cuda:0", cuda_graphs=False)))
