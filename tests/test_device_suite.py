"The GPU suite's CPU dry run: every stage leaves its record, numbers or a traceback, and one failing stage stops none after it."
from __future__ import annotations
import json, math, os, subprocess, sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SUITE = REPO / "benchmarks" / "device_suite.py"
sys.path.insert(0, str(REPO / "benchmarks"))
import device_suite as ds  # noqa: E402


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    "One dry run with an injected failure in `packed` (a middle stage): its JSONL records, exit code and output."
    out = tmp_path_factory.mktemp("suite")
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "OMP_NUM_THREADS": "1",
           "MPLBACKEND": "Agg"}
    env.pop("IGNORE_ATTN_CACHE", None)
    p = subprocess.run([sys.executable, str(SUITE), "--dry-run", "--out", str(out), "--fail-stage", "packed"],
                       capture_output=True, text=True, env=env, timeout=600)
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
        else:
            assert st["status"] == "ok", (name, st.get("error"), st.get("traceback"))
            assert _finite(st["time_s"]) and results(name), name
    checks = {r["check"]: r for r in results("correctness_fastpaths")}
    assert checks["control_other_batch"]["passed"] and checks["bf16_channels_last"]["passed"]
    assert checks["graphs_fp32"]["status"] == "skipped" and "CUDA" in checks["graphs_fp32"]["reason"]
    assert checks["bf16_channels_last"]["update_rel"] < ds.TOL["bf16"]["update_rel"] < checks["control_other_batch"]["update_rel"]
    timed = [r for r in results("throughput") if r["status"] == "ok"]
    assert {r["path"] for r in timed} >= {"plain", "eager_fp32", "bf16_channels_last", "compile"}
    for r in timed:
        assert _finite(r["img_per_s"]) and r["img_per_s"] > 0 and _finite(r["ratio_to_plain"])
        if r["path"] == "plain": assert r["ratio_to_plain"] == 1.0
    summary = next(r for r in results("table1") if r.get("summary"))
    assert set(summary["test_top1_err"]) == {"standard", "se", "se-ign3"}
    assert all(_finite(v) for v in summary["test_top1_err"].values()) and len(summary["differences"]) == 3
    assert "CPU DRY RUN" in summary["protocol"] and "NOT the paper's protocol" in summary["protocol"]


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
    assert set(ds.gpu_notebooks()) >= {"nbs/13_engine.ipynb", "nbs/01_attention.ipynb"}


def test_scaled_milestones_keep_the_paper_fractions():
    assert ds.scaled_milestones(200) == [60, 120, 160]
    assert ds.scaled_milestones(20) == [6, 12, 16]
    assert ds.scaled_milestones(3) == [1, 2] and ds.scaled_milestones(1) == []
