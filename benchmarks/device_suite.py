#!/usr/bin/env python
"""Every CUDA path of ignore_attn checked and timed in one command on one GPU, each stage under its own time cap.

Stages, in order (each writes JSON lines as it goes; a stage that fails or runs out of time records its error and
traceback, and the suite goes on with the next):

  correctness_notebooks  the `#| gpu` cells of the notebooks that have them, run the way `nbdev_test --flags gpu` runs
                         them (started first, in the background: it checks, it does not time)
  prepare                the CIFAR-10 JPEG pack decoded from the npz's bytes (no 60,000 files) into CIFAR pickles in
                         /tmp (reused when there), which every later stage reads
  correctness_fastpaths  CUDA graphs, bf16 + channels-last and torch.compile against eager float32: loss and weights
                         after 5 SGD steps on one fixed batch, within stated tolerances (each group of checks in its
                         own process: a failed capture cannot spoil the next)
  throughput             images/s of the training step at batch 128: the plain PyTorch loop, the trainer's eager fp32,
                         bf16 + channels-last, CUDA graphs, torch.compile (alone and inside the graphs); ratios to
                         the plain loop of the same run. Each path in its own process, the compile paths last
  packed                 aggregate images/s of 1, 2, 4, 8 runs packed on the GPU (separate processes, as
                         `--runs-per-gpu` does) on CUDA graphs (never 8 compiles at once)
  table1                 (only when --stages names it) Table 1's first cell (CIFAR-10, ResNet50, standard / se /
                         se-ign3, seed 0) with the paper's schedule scaled to the epochs the remaining time allows

Every record is one JSON line appended (and so flushed) as soon as it is known, into --out: on the lent machine that
is $OUT, so what was measured comes back even if the call is stopped; stage logs are written live into --logs.
A real run without --out writes benchmarks/results/<date>-<gpu-name>.jsonl; `--dry-run` runs every stage on the CPU
at toy sizes (a synthetic JPEG pack, resnet8-cifar, a few steps) into `--out` or a temp folder, never into
benchmarks/results.

examples:
    python benchmarks/device_suite.py --dry-run --out /tmp/suite-dry          # CPU, about half a minute
    python benchmarks/device_suite.py --dry-run --fail-stage throughput       # a failing stage does not stop the rest
    python benchmarks/device_suite.py --dry-run --fail-path eager_fp32:segv   # nor does a path that crashes
    python benchmarks/device_suite.py --budget 400 --out "$OUT" --logs "$OUT/logs"   # the GPU (run_device.sh)
"""
from __future__ import annotations
import argparse, datetime as _dt, fcntl, io, json, math, os, platform, re, signal, socket, subprocess, sys, tempfile
import time, traceback
from pathlib import Path

# The parent never touches CUDA: its stages run in forked children, and a child can use CUDA only if the parent has
# not initialised it. The NVML-based check keeps even torch.cuda.is_available() from initialising the driver.
os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")
REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "benchmarks")]

SUITE_VERSION = 2
STAGES = ("correctness_notebooks", "prepare", "correctness_fastpaths", "throughput", "packed", "table1")
# The first GPU run leaves table1 out (one epoch tells nothing): its time is margin until the throughput figures
# say how many epochs fit.
DEFAULT_STAGES = STAGES[:-1]
# Seconds per stage on the GPU; table1 gets what is left of the budget. The notebooks run beside prepare and
# correctness_fastpaths, so the caps add up to the budget only without them.
CAPS = {"correctness_notebooks": 150, "prepare": 45, "correctness_fastpaths": 80, "throughput": 170, "packed": 100,
        "table1": 300}
PATH_CAP = 45           # seconds for one non-compile throughput path (process start, CUDA, warm-up, capture, timing)
FAIL_MODES = ("raise", "exit", "segv", "hang")   # --fail-path PATH:MODE, how an injected path failure ends its process (hang: never)
DRY_CAPS = {k: 60 for k in STAGES}
MIN_S = {"table1": 45}                    # below this a stage is skipped as out of budget
THROUGHPUT_MODELS = (("resnet50-cifar", "se-ign3"), ("resnet50-cifar", "cbam-ign1(0.5)"), ("densenet40-cifar", "se"))
PAPER_TABLE1 = {"standard": 8.27, "se": 7.63, "se-ign3": 7.28}   # CIFAR-10, ResNet50, top-1 test error % (Table 1)


# ----------------------------------------------------------------------------------------------------------- records
class Records:
    "Append-only JSON-lines file shared by the parent and its stage processes (one lock per line)."
    def __init__(self, path: Path, common: dict):
        self.path, self.common = Path(path), dict(common)

    def write(self, record: str, **fields) -> dict:
        "Append one line: the common fields (run, GPU, torch, CUDA, commit), the record kind, then `fields`."
        line = {**self.common, "record": record, "written": _now(), **fields}
        data = (json.dumps(line, default=_jsonable, allow_nan=True) + "\n").encode()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:   # one write() of the whole line under a lock: a process killed later never leaves half a line
            fcntl.flock(fd, fcntl.LOCK_EX)
            view = memoryview(data)
            while view: view = view[os.write(fd, view):]
        finally:
            os.close(fd)   # closing releases the lock
        return line

    def read(self) -> list[dict]:
        "Every line of this run written so far."
        if not self.path.exists(): return []
        out = []
        for l in self.path.read_text().splitlines():
            try: r = json.loads(l) if l.strip() else None
            except json.JSONDecodeError: continue      # cannot happen through write(); never stop the suite for it
            if r and r.get("run_id") == self.common["run_id"]: out.append(r)
        return out


def _jsonable(o):
    "JSON for what json does not know (paths, numpy and torch scalars)."
    if isinstance(o, Path): return str(o)
    if hasattr(o, "item"): return o.item()
    if hasattr(o, "tolist"): return o.tolist()
    return str(o)


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


# ------------------------------------------------------------------------------------------------------- environment
def git_commit() -> dict:
    "The checkout's commit and whether it has uncommitted changes (from git, else from .carry/COMMIT)."
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=10)
        if head.returncode == 0:
            dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                                   capture_output=True, text=True, timeout=10).stdout.strip() != ""
            return {"commit": head.stdout.strip(), "dirty": dirty, "commit_from": "git"}
    except (OSError, subprocess.SubprocessError): pass
    carried = REPO / ".carry" / "COMMIT"
    if carried.exists():
        words = carried.read_text().split()
        return {"commit": words[0] if words else None, "dirty": "dirty" in words, "commit_from": ".carry/COMMIT"}
    return {"commit": None, "dirty": None, "commit_from": "unknown (no git, no .carry/COMMIT)"}


def gpu_facts(dry_run: bool) -> dict:
    "GPU name and driver from nvidia-smi (never through torch.cuda, which would initialise CUDA in the parent)."
    import torch
    facts = {"torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version(),
             "host": socket.gethostname()}
    if dry_run: return facts | {"gpu": f"cpu ({os.cpu_count()} cores)", "device": "cpu"}
    try:
        q = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                           capture_output=True, text=True, timeout=30)
        name, driver, mem = [s.strip() for s in q.stdout.splitlines()[0].split(",")]
        return facts | {"gpu": name, "gpu_driver": driver, "gpu_memory": mem, "device": "cuda"}
    except (OSError, subprocess.SubprocessError, IndexError, ValueError) as e:
        return facts | {"gpu": f"unknown (nvidia-smi: {type(e).__name__})", "device": "cuda"}


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "unknown"


def results_path(out: Path, gpu: str) -> Path:
    "benchmarks/results/<date>-<gpu-name>.jsonl, with -2, -3 ... when that name is taken."
    base = f"{_dt.date.today().isoformat()}-{slug(gpu)}"
    p, i = out / f"{base}.jsonl", 2
    while p.exists(): p, i = out / f"{base}-{i}.jsonl", i + 1
    return p


# ------------------------------------------------------------------------------------------------- stage processes
class StageFailed(Exception):
    "A stage that ran to its end but whose checks did not pass (its record says which)."


def _die_with_parent(parent: int) -> None:
    """Have the kernel SIGKILL this process when its parent ends (Linux): a suite killed outright (the device call
    stopped) must not leave stage or measurement processes running, or writing, behind it."""
    try:
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)   # PR_SET_PDEATHSIG
    except (OSError, AttributeError): pass
    if os.getppid() != parent: os._exit(1)   # the parent ended before the line above


_RUNNING: dict[str, dict] = {}   # stage processes now running (their process groups are stopped on SIGTERM)


class Stopped(BaseException):
    "SIGTERM or SIGINT reached the suite (run_device.sh's timeout): stop the stages, write what is known, exit."


def _stop(signum, frame):
    raise Stopped(signal.Signals(signum).name)


def run_stage(name: str, ctx: dict, rec: Records, cap: float, background: bool = False):
    "Fork a child (own process group) that runs stage `name`; return it, or wait for it and record the outcome."
    import multiprocessing as mp
    log = Path(ctx["log_dir"]) / f"{name}.log"
    proc = mp.get_context("fork").Process(target=_stage_child, args=(name, ctx, rec, str(log), os.getpid()), name=name)
    t0 = time.time()
    proc.start()
    job = {"name": name, "proc": proc, "t0": t0, "cap": cap, "log": log}
    _RUNNING[name] = job
    return job if background else finish_stage(job, rec)


def finish_stage(job: dict, rec: Records) -> str:
    "Wait for a stage child up to its cap (kill its process group past it); write the stage record unless it did."
    proc, name = job["proc"], job["name"]
    proc.join(max(0.0, job["cap"] - (time.time() - job["t0"])))
    _RUNNING.pop(name, None)
    timed_out = proc.is_alive()
    if timed_out:
        try: os.killpg(proc.pid, signal.SIGKILL)   # the stage and what it started (workers, packed runs)
        except ProcessLookupError: pass
        proc.join(10)
    wall = time.time() - job["t0"]
    done = [r for r in rec.read() if r["record"] == "stage" and r["stage"] == name]
    if done and not timed_out: return done[-1]["status"]
    tail = _tail(job["log"])
    status = "timeout" if timed_out else "error"
    why = (f"stage {name} ran past its cap of {job['cap']:.0f} s and was stopped" if timed_out
           else f"stage {name} died with exit code {proc.exitcode} before writing its record")
    rec.write("stage", stage=name, status=status, time_s=wall, cap_s=job["cap"], error=why,
              traceback=f"{why}; last lines of {job['log'].name}:\n{tail}")
    return status


def _tail(path: Path, n: int = 60) -> str:
    try: return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError: return "(no log)"


def _stage_child(name: str, ctx: dict, rec: Records, log: str, parent: int) -> None:
    "Body of a stage process: own process group, output to the stage log, run, write the stage record."
    os.setpgid(0, 0)
    _die_with_parent(parent)
    signal.signal(signal.SIGTERM, signal.SIG_DFL); signal.signal(signal.SIGINT, signal.SIG_DFL)   # the parent stops us
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1); os.dup2(fd, 2)
    sys.stdout = io.TextIOWrapper(os.fdopen(1, "wb", 0), write_through=True)
    sys.stderr = io.TextIOWrapper(os.fdopen(2, "wb", 0), write_through=True)
    rec = Records(rec.path, {**rec.common, "stage": name})
    t0 = time.time()
    try:
        if ctx.get("fail_stage") == name:
            raise RuntimeError(f"injected failure: --fail-stage {name} (checks that a failing stage is recorded "
                               "and does not stop the stages after it)")
        summary = STAGE_FUNCS[name](ctx, rec) or {}
        rec.write("stage", status="ok", time_s=time.time() - t0, cap_s=ctx["caps"][name], **summary)
        code = 0
    except StageFailed as e:
        rec.write("stage", status="failed", time_s=time.time() - t0, cap_s=ctx["caps"][name], error=str(e),
                  traceback=traceback.format_exc())
        code = 1
    except BaseException as e:
        traceback.print_exc()
        rec.write("stage", status="error", time_s=time.time() - t0, cap_s=ctx["caps"][name],
                  error=f"{type(e).__name__}: {e}", traceback=traceback.format_exc())
        code = 1
    sys.stdout.flush(); sys.stderr.flush()
    os._exit(code)   # skip atexit handlers inherited from the parent


def _results(rec: Records, stage: str) -> list[dict]:
    return [r for r in rec.read() if r["record"] == "result" and r.get("stage") == stage]


def _device(ctx: dict):
    import torch
    if ctx["dry_run"]:
        torch.set_num_threads(1)
        return torch.device("cpu")
    if not torch.cuda.is_available(): raise RuntimeError("no CUDA device here; run with --dry-run on a CPU")
    return torch.device("cuda", 0)


def run_isolated(what: str, body, cap: float, rec: Records, **fields) -> dict:
    """Run `body()` in a forked child (it writes its own result record, with `fields`); wait up to `cap` seconds.
    A child that raised, crashed (a signal, os._exit) or ran past its cap gets an error record here instead. This
    process never touches CUDA, so one broken CUDA context (a failed capture, an assert in empty_cache) dies with its
    child and the next measurement starts clean."""
    import multiprocessing as mp
    before, parent = len(rec.read()), os.getpid()
    def child():
        _die_with_parent(parent)
        try: body()
        except BaseException as e:
            traceback.print_exc()
            rec.write("result", **fields, status="error", error=f"{type(e).__name__}: {e}", traceback=traceback.format_exc())
        sys.stdout.flush(); sys.stderr.flush()
        os._exit(0)
    t0 = time.time()
    proc = mp.get_context("fork").Process(target=child, name=what)
    proc.start()
    proc.join(max(1.0, cap))
    if proc.is_alive():   # its DataLoader workers see their parent gone and stop by themselves
        proc.kill(); proc.join(10)
        why = f"{what} ran past its cap of {cap:.0f} s and was stopped"
    else:
        why = None if proc.exitcode == 0 else (
            f"{what} died of signal {-proc.exitcode} ({signal.Signals(-proc.exitcode).name})" if proc.exitcode < 0
            else f"{what} exited with code {proc.exitcode}")
    mine = [r for r in rec.read()[before:] if r["record"] == "result" and all(r.get(k) == v for k, v in fields.items())]
    if mine and why is None: return mine[-1]
    why = why or f"{what} ended without a record"
    return rec.write("result", **fields, status="timeout" if "past its cap" in why else "error", error=why,
                     time_s=time.time() - t0, traceback=f"{why}; see the stage log for its output")


def _injected_failure(ctx: dict, model: tuple[str, str], path: str) -> None:
    "--fail-path PATH:MODE: make the first model's PATH process raise, exit, crash or hang (the later paths must still report)."
    spec = ctx.get("fail_path") or ""
    name, _, mode = spec.partition(":")
    if name != path or tuple(model) != tuple(ctx["models"][0]): return
    print(f"injected failure of path {path}: {mode}", flush=True)
    if mode == "exit": os._exit(3)
    if mode == "segv": os.kill(os.getpid(), signal.SIGSEGV)
    if mode == "hang": time.sleep(10**6)   # until its cap or the suite's own timeout stops it
    raise RuntimeError(f"injected failure: --fail-path {spec}")


# ----------------------------------------------------------------------------------------------- stage: notebooks
def gpu_notebooks(nbs: Path = REPO / "nbs") -> dict[str, int]:
    "Notebooks under nbs/ with `#| gpu` cells, and how many each has."
    found = {}
    for nb in sorted(nbs.rglob("*.ipynb")):
        if any(part.startswith((".", "_")) for part in nb.relative_to(nbs).parts): continue
        n = sum(1 for c in json.loads(nb.read_text())["cells"]
                if c["cell_type"] == "code" and "gpu" in cell_directives("".join(c["source"])))
        if n: found[str(nb.relative_to(REPO))] = n
    return found


def cell_directives(source: str) -> dict[str, list[str]]:
    "nbdev directives at the top of a cell (`#| gpu` -> {'gpu': []}, `#| eval: false` -> {'eval:': ['false']})."
    out = {}
    for line in source.splitlines():
        m = re.match(r"^\s*#\s*\|\s*(\S+)(.*)$", line)
        if not m:
            if line.strip(): break
            continue
        out[m[1]] = m[2].split()
    return out


def test_flags() -> set[str]:
    "settings.ini's tst_flags: the flags nbdev_test skips unless --flags names them."
    text = (REPO / "settings.ini").read_text()
    m = re.search(r"^tst_flags\s*=\s*(.*)$", text, re.M)
    return set(m[1].split()) if m else set()


def selected_cells(nb_path: Path, force: set[str]) -> list[tuple[int, str]]:
    "(index, source) of the code cells `nbdev_test --flags <force>` would run (same rules as nbdev.test.test_nb)."
    skip = test_flags() - set(force)
    cells = []
    for i, c in enumerate(json.loads(Path(nb_path).read_text())["cells"]):
        src = "".join(c["source"])
        if c["cell_type"] != "code" or "nbdev_export" + "(" in src: continue
        d = cell_directives(src)
        if d.get("eval:", [""])[0].lower() == "false" or skip & d.keys(): continue
        cells.append((i, src))
    return cells


def run_notebook(nb_path: str, force: list[str]) -> int:
    "Run a notebook's selected cells in this process, in its folder, as nbdev_test would (show_doc stubbed without nbdev)."
    import importlib.util, types
    nb_path = Path(nb_path).resolve()
    if importlib.util.find_spec("nbdev") is None:   # the GPU machine has no nbdev: docs rendering is not under test
        stub = types.ModuleType("nbdev.showdoc"); stub.show_doc = lambda *a, **k: None
        sys.modules.setdefault("nbdev", types.ModuleType("nbdev")); sys.modules["nbdev.showdoc"] = stub
    os.environ.setdefault("MPLBACKEND", "Agg"); os.environ["IN_TEST"] = "1"
    os.chdir(nb_path.parent)
    ns = {"__name__": "__main__"}
    for i, src in selected_cells(nb_path, set(force)):
        print(f"--- cell {i}", flush=True)
        try: exec(compile(src, f"{nb_path.name}[cell {i}]", "exec"), ns)
        except BaseException:
            traceback.print_exc()
            print(f"FAILED in cell {i}", flush=True)
            return 1
    print(f"PASSED {nb_path.name}", flush=True)
    return 0


def _toy_notebook(folder: Path) -> Path:
    "A notebook whose cells say whether the runner picked them as nbdev_test would (dry run: no GPU cells can run)."
    cells = [("x = []", None), ("#| gpu\nx.append('gpu')", None), ("#| slow\nraise RuntimeError('slow cell ran')", None),
             ("#| eval: false\nraise RuntimeError('eval: false cell ran')", None),
             ("assert x == ['gpu'], x", None)]
    nb = {"cells": [{"cell_type": "code", "execution_count": None, "id": f"c{i}", "metadata": {}, "outputs": [],
                     "source": s} for i, (s, _) in enumerate(cells)],
          "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
    p = folder / "toy_gpu_flags.ipynb"
    p.write_text(json.dumps(nb))
    return p


def stage_correctness_notebooks(ctx: dict, rec: Records) -> dict:
    "Run the `#| gpu` notebooks (all their cells, gpu cells included) in parallel processes; one record each."
    import importlib.util
    found = gpu_notebooks()
    if ctx["dry_run"]:   # CPU: run the selection on a toy notebook, list (not run) the real GPU cells
        targets = {str(_toy_notebook(Path(ctx["work"]))): None}
    else:
        targets = {str(REPO / p): n for p, n in found.items()}
    use_nbdev = importlib.util.find_spec("nbdev") is not None and not ctx["dry_run"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "MPLBACKEND": "Agg", "IGNORE_ATTN_SHARED": os.environ.get("IGNORE_ATTN_SHARED", str(REPO.parent / "shared"))}
    procs = {}
    for nb in targets:
        cmd = (["nbdev_test", "--path", nb, "--flags", "gpu", "--do_print"] if use_nbdev else
               [sys.executable, __file__, "--run-notebook", nb, "--flags", "gpu"])
        log = open(Path(ctx["log_dir"]) / f"notebook-{Path(nb).stem}.log", "w")
        procs[nb] = (subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                                      start_new_session=True), log, time.time())
    failed = []
    for nb, (p, log, t0) in procs.items():
        try: p.wait(timeout=max(1, ctx["caps"]["correctness_notebooks"] - 10 - (time.time() - t0)))
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL); p.wait()
        log.close()
        out = _tail(Path(log.name), 40)
        ok = p.returncode == 0
        if not ok: failed.append(Path(nb).name)
        rec.write("result", notebook=str(Path(nb).relative_to(REPO)) if nb.startswith(str(REPO)) else Path(nb).name,
                  gpu_cells=targets[nb], passed=ok, returncode=p.returncode, time_s=time.time() - t0,
                  runner="nbdev_test --flags gpu" if use_nbdev else "device_suite --run-notebook (nbdev_test's rules)",
                  output_tail=out)
    summary = {"notebooks": len(targets), "gpu_notebooks_found": found,
               "gpu_tests_in_tests_folder": "none: tests/ has no CUDA tests; the fast-path checks are the next stage"}
    if ctx["dry_run"]: summary["note"] = "CPU dry run: the runner's cell selection was run on a toy notebook; the GPU cells were only listed"
    if failed: raise StageFailed(f"notebook(s) failed: {', '.join(failed)} (their output_tail says where)")
    return summary


# ------------------------------------------------------------------------------------------------- stage: prepare
def synthetic_pack(path: Path, n_train: int = 24, n_test: int = 8, size: int = 32, seed: int = 0) -> Path:
    "A pack in the cifar10-jpg.npz format (jpeg bytes, offsets, paths) of random 32x32 JPEGs, per class (dry run)."
    import numpy as np
    from PIL import Image
    rng, blobs, paths = np.random.default_rng(seed), [], []
    classes = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    for part, n in (("train", n_train), ("test", n_test)):
        for c, name in enumerate(classes):
            for i in range(n):
                img = (rng.random((size, size, 3)) * 80 + c * 17).astype(np.uint8)   # a class-coloured tint, some noise
                buf = io.BytesIO(); Image.fromarray(img).save(buf, format="JPEG", quality=75)
                blobs.append(buf.getvalue()); paths.append(f"{part}/{name}/{i:04d}.jpg".encode())
    offsets = np.cumsum([0] + [len(b) for b in blobs]).astype(np.int64)
    np.savez(path, jpeg=np.frombuffer(b"".join(blobs), dtype=np.uint8), offsets=offsets, paths=np.array(paths))
    return path


def _decode_jpegs(blobs: list[bytes]):
    "uint8 (N, H, W, 3) of JPEG byte strings (one worker's share)."
    import numpy as np
    from PIL import Image
    return np.stack([np.asarray(Image.open(io.BytesIO(b)).convert("RGB")) for b in blobs])


def decode_pack(pack: Path, workers: int | None = None) -> dict:
    "The cifar10-jpg.npz pack decoded from its bytes: {'classes', 'train': (uint8 (N, 32, 32, 3), labels), 'test': ...}."
    import multiprocessing as mp, numpy as np
    z = np.load(pack)
    jpeg, offsets, paths = z["jpeg"], z["offsets"], [p.decode() for p in z["paths"]]   # paths: part/class/file.jpg
    classes = sorted({p.split("/")[1] for p in paths})
    out, workers = {"classes": classes}, workers or min(16, os.cpu_count() or 1)
    with mp.get_context("fork").Pool(workers) as pool:   # 60,000 small JPEGs: about 1 s on 16 cores
        for part in ("train", "test"):
            idx = sorted((i for i, p in enumerate(paths) if p.split("/")[0] == part), key=paths.__getitem__)
            if not idx: raise ValueError(f"{pack} holds no {part}/ images; is it the CIFAR-10 JPEG pack?")
            blobs = [jpeg[offsets[i]:offsets[i + 1]].tobytes() for i in idx]
            chunks = [blobs[k:k + 2000] for k in range(0, len(blobs), 2000)]
            images = np.concatenate(pool.map(_decode_jpegs, chunks))
            out[part] = (images, np.array([classes.index(paths[i].split("/")[1]) for i in idx], dtype=np.int64))
    return out


def prepare_cifar(pack: Path, root: Path) -> dict:
    "The pack as torchvision-format CIFAR-10 pickles under `root` (written once, beside and renamed; reused when there)."
    from ignore_attn.data import CIFAR_FILES, cifar_folder, write_cifar
    if (cifar_folder(root, "cifar10") / CIFAR_FILES["cifar10"]["meta"]).is_file():
        return {"data_root": str(root), "decoded": False, "note": "reused the pickles already there"}
    if not pack.is_file():
        raise FileNotFoundError(f"CIFAR-10 pack {pack} not found; carry it (benchmarks/prepare_carry.sh copies it to "
                                ".carry/cifar10-jpg.npz) or pass --pack PATH")
    t0 = time.time()
    d = decode_pack(pack)
    tmp = root.with_name(f".{root.name}.part{os.getpid()}")
    write_cifar(tmp, "cifar10", d["train"], d["test"], d["classes"])
    root.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, root)
    return {"data_root": str(root), "decoded": True, "decode_s": time.time() - t0,
            "how": f"decoded from the bytes of {pack.name}, written as CIFAR-10 pickles"}


def stage_prepare(ctx: dict, rec: Records) -> dict:
    "Decode the JPEG pack into CIFAR pickles (or reuse them), then build the data once as every later stage will."
    from ignore_attn.data import DataConfig, build_data
    root = Path(ctx["data_root"])
    pack = Path(ctx["pack"])
    if ctx["dry_run"] and not pack.exists(): synthetic_pack(pack)
    info = prepare_cifar(pack, root)
    t0 = time.time()
    data = build_data(DataConfig(dataset="cifar10", data_dir=str(root), val_size=ctx["val_size"], resident="yes"),
                      batch_size=ctx["batch"], device="cpu", seed=0)
    info |= {"images": {"train+val": data.train.total_samples + data.val.total_samples, "test": data.test.total_samples},
             "build_s": time.time() - t0, "num_classes": data.num_classes}
    rec.write("result", **info)
    if ctx["dry_run"]: info["note"] = "CPU dry run: a synthetic pack of random JPEGs in the cifar10-jpg.npz format"
    return info


# ------------------------------------------------------------------------------------------- stage: fast paths
# Tolerances, agreed before any run (the records carry the measured values, so they can be tightened later):
#   loss_rel   = max over the 5 steps of |loss_fast - loss_ref| / |loss_ref|
#   update_rel = ||dW_fast - dW_ref|| / ||dW_ref||, dW = weights after 5 steps - initial weights (all parameters)
# float32 paths (TF32 off everywhere in this stage): roundoff 6e-8 per operation; other kernels or fusions reorder
#   sums, which through ~50 layers and 5 momentum steps moves results by ~1e-6..1e-5 relative. 1e-4 (loss) and 1e-3
#   (update) leave that margin and still catch real faults (a stale graph input, a lost gradient term), which move
#   the update by O(1).
# bfloat16 paths: 8 significant bits, roundoff 2^-9 ~ 2e-3 per rounding; activations are rounded at every layer, so
#   logits move by ~sqrt(50) x 2e-3 ~ 1.4e-2 and single gradients by a few percent. 3e-2 (loss) and 0.2 (update)
#   allow that and still catch O(1) faults. A control (the reference run on another batch) must differ by more
#   than every tolerance, so that passing means something.
TOL = {"fp32": {"loss_rel": 1e-4, "update_rel": 1e-3}, "bf16": {"loss_rel": 3e-2, "update_rel": 0.2}}


def _fastpath_run(ctx: dict, device, x, y, *, amp: bool, channels_last: bool, graphs: bool, compile: bool,
                  fused: bool = True, partial: bool = False, steps: int = 5, lr: float = 0.05) -> dict:
    "Losses and weights of `steps` TrainStep steps on one batch (`partial`: the last on half of it), from the seed-0 model."
    import torch
    from ignore_attn.models import get_model
    from ignore_attn.engine import Runtime, TrainStep
    from ignore_attn.train import param_groups
    torch.manual_seed(0)
    model = get_model(ctx["check_arch"], num_classes=10, attention=ctx["check_attention"]).to(device)
    if channels_last: model = model.to(memory_format=torch.channels_last)
    w0 = torch.cat([p.detach().float().flatten().clone() for p in model.parameters()])
    opt = torch.optim.SGD(param_groups(model, 1e-4), lr=lr, momentum=0.9,
                          **({"fused": fused} if device.type == "cuda" else {}))
    rt = Runtime(device, torch.bfloat16 if amp else None, channels_last, compile, graphs)
    net = model
    if compile: net = torch.compile(model, dynamic=False, **({"backend": ctx["compile_backend"]} if ctx["compile_backend"] else {}))
    step = TrainStep(net, opt, rt, warmup=2)
    losses = []
    for i in range(steps):
        xb, yb = (x[: len(x) // 2], y[: len(y) // 2]) if partial and i == steps - 1 else (x, y)
        loss, _ = step(xb, yb, lr)
        losses.append(float(loss) / yb.shape[0])
    w = torch.cat([p.detach().float().flatten() for p in model.parameters()])
    return {"losses": losses, "w0": w0.cpu(), "w": w.cpu(), "graph_captured": step.graph is not None,
            "bn_steps": int(sum(b.item() for n, b in model.named_buffers() if n.endswith("num_batches_tracked")))}


def _compare(ref: dict, run: dict) -> dict:
    "loss_rel and update_rel (see TOL) of a run against the reference run."
    import torch
    loss_rel = max(abs(a - b) / abs(b) for a, b in zip(run["losses"], ref["losses"]))
    d_ref, d_run = ref["w"] - ref["w0"], run["w"] - run["w0"]
    return {"loss_rel": loss_rel, "update_rel": float(torch.linalg.vector_norm(d_run - d_ref) / torch.linalg.vector_norm(d_ref)),
            "init_equal": bool(torch.equal(ref["w0"], run["w0"]))}


FASTPATH_CHECKS = {  # name: (TrainStep options, precision, needs CUDA)
    "graphs_fp32": (dict(amp=False, channels_last=False, graphs=True, compile=False), "fp32", True),
    # a short last batch after capture: the graph step's eager fallback (loaders with drop_last=False)
    "graphs_fp32_partial_last_batch": (dict(amp=False, channels_last=False, graphs=True, compile=False, partial=True), "fp32", True),
    "foreach_sgd_fp32": (dict(amp=False, channels_last=False, graphs=False, compile=False, fused=False), "fp32", True),
    "bf16_channels_last": (dict(amp=True, channels_last=True, graphs=False, compile=False), "bf16", False),
    "graphs_bf16_channels_last": (dict(amp=True, channels_last=True, graphs=True, compile=False), "bf16", True),
    "compile_bf16_channels_last": (dict(amp=True, channels_last=True, graphs=False, compile=True), "bf16", False),
}
# Each group in its own process, the ones that capture or compile after the plain ones: a failed capture (which can
# leave the process's CUDA state unusable) or a compile crash takes no other check with it.
CHECK_GROUPS = (("control_other_batch", "foreach_sgd_fp32", "bf16_channels_last"),
                ("graphs_fp32", "graphs_fp32_partial_last_batch"), ("graphs_bf16_channels_last",),
                ("compile_bf16_channels_last",))


def _fastpath_group(ctx: dict, rec: Records, group: int, names: tuple[str, ...]) -> None:
    "One process: the eager float32 reference on the fixed batch, then the checks `names` against it, a record each."
    import torch
    device = _device(ctx)
    cuda = device.type == "cuda"
    torch.backends.cudnn.allow_tf32 = False; torch.backends.cuda.matmul.allow_tf32 = False   # a float32 reference
    torch.backends.cudnn.benchmark = False; torch.backends.cudnn.deterministic = True
    g = torch.Generator().manual_seed(0)
    b, s = ctx["check_batch"], ctx["image_size"]
    x, y = torch.randn(b, 3, s, s, generator=g).to(device), torch.randint(0, 10, (b,), generator=g).to(device)
    x2 = torch.randn(b, 3, s, s, generator=g).to(device)
    ref = _fastpath_run(ctx, device, x, y, amp=False, channels_last=False, graphs=False, compile=False)
    common = {"check_group": group, "arch": ctx["check_arch"], "attention": ctx["check_attention"], "batch": b, "steps": 5,
              "lr": 0.05, "reference": "eager float32, TF32 off, fused SGD" if cuda else "eager float32 (CPU)",
              "loss_ref": ref["losses"]}
    ref_p = None
    for name in names:
        if name == "control_other_batch":
            control = _compare(ref, _fastpath_run(ctx, device, x2, y, amp=False, channels_last=False, graphs=False, compile=False))
            loosest = max(t["update_rel"] for t in TOL.values())
            rec.write("result", check=name, **common, **control, status="ok", passed=control["update_rel"] > loosest,
                      note="the reference on a different batch: must differ by more than every tolerance")
            continue
        kw, precision, needs_cuda = FASTPATH_CHECKS[name]
        if needs_cuda and not cuda:
            rec.write("result", check=name, **common, status="skipped", passed=None, reason="needs CUDA (CPU dry run)")
            continue
        t0 = time.time()
        try:
            run = _fastpath_run(ctx, device, x, y, **kw)
        except Exception as e:
            rec.write("result", check=name, **common, status="error", passed=False, error=f"{type(e).__name__}: {e}",
                      traceback=traceback.format_exc())
            continue
        if kw.get("partial") and ref_p is None:   # its own reference: eager float32, same short last batch
            ref_p = _fastpath_run(ctx, device, x, y, amp=False, channels_last=False, graphs=False, compile=False, partial=True)
        cmp = _compare(ref_p if kw.get("partial") else ref, run)
        tol = TOL[precision]
        ok = cmp["init_equal"] and cmp["loss_rel"] <= tol["loss_rel"] and cmp["update_rel"] <= tol["update_rel"] \
             and (not kw["graphs"] or run["graph_captured"]) and run["bn_steps"] == ref["bn_steps"]
        rec.write("result", check=name, **common, status="ok", passed=ok, precision=precision, tolerance=tol, **cmp,
                  losses=run["losses"], graph_captured=run["graph_captured"], time_s=time.time() - t0,
                  compile_backend=(ctx["compile_backend"] or "inductor") if kw["compile"] else None)


def stage_correctness_fastpaths(ctx: dict, rec: Records) -> dict:
    "Each fast path against eager float32 (TF32 off) on one fixed batch: 5 SGD steps, loss and weights within TOL."
    t_end = time.time() + ctx["caps"]["correctness_fastpaths"] - 3
    for i, names in enumerate(CHECK_GROUPS):
        run_isolated(f"fast-path checks {', '.join(names)}", lambda: _fastpath_group(ctx, rec, i, names),
                     t_end - time.time(), rec, check_group=i)
    got = _results(rec, "correctness_fastpaths")
    failures = [r.get("check", f"group {r['check_group']} ({r.get('error')})") for r in got
                if r.get("passed") is False or r.get("status") in ("error", "timeout")]
    if failures: raise StageFailed(f"fast path(s) outside tolerance or failing: {', '.join(failures)}")
    return {"checks": sum(map(len, CHECK_GROUPS)), "tolerances": TOL}


# ------------------------------------------------------------------------------------------------- stage: throughput
PATHS = {  # trainer paths: (amp, channels_last, compile, cuda_graphs)
    "eager_fp32": ("off", False, False, False),
    "bf16_channels_last": ("bf16", True, False, False),
    "cuda_graphs": ("bf16", True, False, True),           # the trainer's default on one GPU
    "compile": ("bf16", True, True, False),
    "compile_cuda_graphs": ("bf16", True, True, True),    # Inductor's kernels replayed from the trainer's own graph
}
PATH_LABELS = {"plain": "plain PyTorch loop (torchvision + DataLoader x4, fp32 eager)",
               "eager_fp32": "trainer, eager fp32", "bf16_channels_last": "trainer, bf16 + channels-last",
               "cuda_graphs": "trainer, CUDA graphs + bf16 + channels-last", "compile": "trainer, torch.compile + bf16 + channels-last",
               "compile_cuda_graphs": "trainer, torch.compile + CUDA graphs + bf16 + channels-last"}


def _bench_args(ctx: dict, arch: str, attention: str, path: str):
    "An argparse namespace for benchmarks/train_throughput.py's plain_loop / trainer_loop."
    import train_throughput as tt
    amp, cl, comp, graphs = PATHS.get(path, ("off", False, False, False))
    device = "cpu" if ctx["dry_run"] else "cuda"
    a = tt.parse_args(["--arch", arch, "--attention", attention, "--batch", str(ctx["batch"]), "--steps", str(ctx["steps"]),
                       "--warmup", str(ctx["warmup"]), "--device", device, "--data", ctx["data_root"],
                       "--workers", str(ctx["plain_workers"]), "--amp", amp])
    a.channels_last, a.compile, a.cuda_graphs = cl, comp, graphs
    return a


def _compile_fallback_guard():
    "Make a failed CUDA-graph capture an error here, not the trainer's silent eager fallback (a warning)."
    import warnings
    warnings.filterwarnings("error", message="CUDA graph capture failed")


def _dry_compile(ctx: dict) -> None:
    "Dry run: torch.compile with the cheap backend of ctx['compile_backend'] (no C++ compiler on the CPU path)."
    if not ctx["compile_backend"]: return
    import functools, torch
    if getattr(torch.compile, "_suite_backend", None): return
    patched = functools.partial(torch.compile, backend=ctx["compile_backend"])
    patched._suite_backend = ctx["compile_backend"]
    torch.compile = patched


def stage_data(ctx: dict, n_images: int) -> dict:
    """The stage's data, built once on the CPU before any path's process forks off (they inherit it): the trainer's
    resident loaders (each path copies them to its device) and the plain loop's HWC images."""
    import train_throughput as tt
    return tt.stage_inputs(ctx["data_root"], ctx["batch"], n_images)


def throughput_plan(ctx: dict) -> list[tuple[str, str, str]]:
    "(arch, attention, path) to time, in order: every non-compile path of every model, then the compile paths."
    plan = [(a, att, p) for a, att in ctx["models"] for p in ("plain",) + tuple(k for k in PATHS if not PATHS[k][2])]
    return plan + [(a, att, p) for a, att in ctx["models"] for p in PATHS if PATHS[p][2]]


def _time_path(ctx: dict, rec: Records, data: dict, arch: str, attention: str, path: str) -> None:
    "Body of one path's process: set up, time, write its record (ratio to this run's plain loop of the same model)."
    import torch, train_throughput as tt
    _device(ctx)
    _compile_fallback_guard(); _dry_compile(ctx)
    _injected_failure(ctx, (arch, attention), path)
    t0 = time.time()
    args = _bench_args(ctx, arch, attention, path)
    if path == "plain":
        dev = torch.device(args.device)
        if dev.type == "cuda": torch.backends.cudnn.benchmark = True   # as the trainer sets it, to be fair
        timer = tt.plain_loop(args, dev, ctx["image_size"], 10, data["n_images"], images=data["plain"])
        settings = PATH_LABELS["plain"].replace("x4", f"x{ctx['plain_workers']}")
    else:
        rt, _, timer = tt.trainer_loop(args, data["n_images"], data=data["trainer"])
        settings = (f"amp {rt.amp_dtype or 'off'}, channels_last {rt.channels_last}, compile {rt.compile}, "
                    f"cuda_graphs {rt.cuda_graphs}, resident data True")
    img_s = timer(ctx["steps"], ctx["warmup"])
    plain = img_s if path == "plain" else next((r["img_per_s"] for r in _results(rec, "throughput") if r.get("status") == "ok"
                                                and r["arch"] == arch and r["attention"] == attention and r["path"] == "plain"), None)
    rec.write("result", arch=arch, attention=attention, path=path, label=PATH_LABELS[path].replace("x4", f"x{ctx['plain_workers']}"),
              status="ok", img_per_s=img_s, ratio_to_plain=(img_s / plain) if plain else None, batch=ctx["batch"],
              steps=ctx["steps"], warmup=ctx["warmup"], settings=settings, time_s=time.time() - t0)


def stage_throughput(ctx: dict, rec: Records) -> dict:
    "Images/s of the training step per model and path, each path in its own process; ratios to the plain loop of this run."
    t_end = time.time() + ctx["caps"]["throughput"] - 3
    data = stage_data(ctx, ctx["batch"] * min(ctx["warmup"] + ctx["steps"] + 1, 80))
    first = ctx["models"][0]
    plan = throughput_plan(ctx)
    for i, (arch, attention, path) in enumerate(plan):
        fields = dict(arch=arch, attention=attention, path=path)
        if PATHS.get(path, (0, 0, 0, False))[3] and ctx["dry_run"]:
            rec.write("result", **fields, status="skipped", reason="needs CUDA (CPU dry run)"); continue
        if PATHS.get(path, (0, 0, False))[2] and (arch, attention) != tuple(first) and not ctx["compile_all"]:
            rec.write("result", **fields, status="skipped",
                      reason="compile is measured on the first model only, to fit the device budget (--compile-all)"); continue
        left = t_end - time.time()
        if left < 5:
            rec.write("result", **fields, status="skipped", reason="out of the stage's time"); continue
        compile_path = PATHS.get(path, (0, 0, False))[2]
        run_isolated(f"{arch} {attention} {path}", lambda: _time_path(ctx, rec, data, arch, attention, path),
                     left if compile_path else min(left, ctx["path_cap"]), rec, **fields)
    got = _results(rec, "throughput")
    errors = [r for r in got if r.get("status") in ("error", "timeout")]
    if errors: raise StageFailed(f"{len(errors)} measurement(s) failed: " + "; ".join(f"{r['arch']} {r['path']}: {r['error']}" for r in errors))
    return {"measurements": sum(r.get("status") == "ok" for r in got), "order": [f"{a} {att} {p}" for a, att, p in plan]}


# ------------------------------------------------------------------------------------------------------ stage: packed
def packed_path(dry_run: bool) -> tuple[str, dict]:
    "The packed runs' path: CUDA graphs on the GPU (eager float32 on a CPU), never compile."
    if dry_run: return "eager_fp32", {"why": "CPU dry run: the trainer's CPU path"}
    return "cuda_graphs", {"why": "the trainer's default on one GPU; compile is never chosen here, as N processes "
                                  "compiling at once would spend the stage on compiling, and a CPU-noisy timing "
                                  "must not decide it"}


def _packed_worker(ctx, arch, attention, path, data, steps, barrier, queue, index, parent):
    "One packed run: set up, warm up (capture included), wait for all, time `steps` steps, report."
    _die_with_parent(parent)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    try:
        import torch, train_throughput as tt
        if ctx["dry_run"]: torch.set_num_threads(1)
        _compile_fallback_guard(); _dry_compile(ctx)
        rt, _, timer = tt.trainer_loop(_bench_args(ctx, arch, attention, path), data["n_images"], data=data["trainer"])
        timer(0, ctx["warmup"])                       # warm-up and capture, untimed
        barrier.wait(timeout=300)
        t0 = time.time()
        timer(steps, 0)
        queue.put({"index": index, "ok": True, "t0": t0, "t1": time.time(), "images": steps * ctx["batch"]})
    except BaseException as e:
        try: barrier.abort()
        except Exception: pass
        queue.put({"index": index, "ok": False, "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()})
    finally:
        queue.close(); queue.join_thread()   # the message must leave before os._exit
        os._exit(0)


def stage_packed(ctx: dict, rec: Records) -> dict:
    "Aggregate images/s of N runs packed on one GPU, N in ctx['packs'], each its own process, on CUDA graphs (`packed_path`)."
    import multiprocessing as mp, queue as q
    arch, attention = ctx["packed_model"]
    path, why = packed_path(ctx["dry_run"])
    plain = next((r["img_per_s"] for r in _results(rec, "throughput") if r.get("status") == "ok" and r["arch"] == arch
                  and r["attention"] == attention and r["path"] == "plain"), None)
    t_end = time.time() + ctx["caps"]["packed"] - 5
    fork = mp.get_context("fork")
    data = stage_data(ctx, ctx["batch"] * 40)   # once, before the runs fork off
    single, errors = None, []
    for n in ctx["packs"]:
        barrier, queue = fork.Barrier(n), fork.Queue()
        procs = [fork.Process(target=_packed_worker, args=(ctx, arch, attention, path, data, ctx["packed_steps"],
                                                           barrier, queue, i, os.getpid())) for i in range(n)]
        t0 = time.time()
        for p in procs: p.start()
        got = []
        for _ in procs:
            try: got.append(queue.get(timeout=max(1, t_end - time.time())))   # the stage's deadline, not a round's
            except q.Empty: break
        for p in procs:
            p.join(5)
            if p.is_alive(): p.kill()
        bad = [g for g in got if not g["ok"]] + ([{"error": f"{n - len(got)} run(s) never reported"}] if len(got) < n else [])
        if bad:
            errors.append(n)
            rec.write("result", n_runs=n, arch=arch, attention=attention, path=path, status="error",
                      error=bad[0]["error"], traceback=bad[0].get("traceback", ""))
            continue
        span = max(g["t1"] for g in got) - min(g["t0"] for g in got)
        agg = sum(g["images"] for g in got) / span
        per_run = [g["images"] / (g["t1"] - g["t0"]) for g in got]
        if n == 1: single = agg
        rec.write("result", n_runs=n, arch=arch, attention=attention, path=path, label=PATH_LABELS[path], status="ok",
                  aggregate_img_per_s=agg, per_run_img_per_s=per_run, ratio_to_plain=agg / plain if plain else None,
                  ratio_to_one_run=agg / single if single else None, steps_per_run=ctx["packed_steps"],
                  batch=ctx["batch"], path_choice=why, wall_s=time.time() - t0)
    if errors: raise StageFailed(f"packing {errors} run(s) failed (see their records)")
    return {"path": path, "packs": list(ctx["packs"])}


# ------------------------------------------------------------------------------------------------------ stage: table1
def scaled_milestones(epochs: int, paper=(60, 120, 160), paper_epochs: int = 200) -> list[int]:
    "The paper's milestones moved to the same fractions of a shorter schedule (kept inside 1..epochs-1, distinct)."
    out = sorted({min(epochs - 1, max(1, round(m * epochs / paper_epochs))) for m in paper}) if epochs > 1 else []
    return [m for m in out if 1 <= m < epochs]


def plan_epochs(rec: Records, seconds: float, n_train: int, n_val: int, runs: int, setup_s: float) -> dict:
    "Epochs that fit `seconds`, from this run's packed throughput (per-run rate with `runs` packed)."
    packs = {r["n_runs"]: r["aggregate_img_per_s"] for r in _results(rec, "packed") if r.get("status") == "ok"}
    if packs:
        lo = max((n for n in packs if n <= runs), default=min(packs)); hi = min((n for n in packs if n >= runs), default=max(packs))
        agg = packs[lo] if lo == hi else packs[lo] + (packs[hi] - packs[lo]) * (runs - lo) / (hi - lo)
        rate, source = agg / runs, f"packed aggregate at {runs} runs interpolated from {sorted(packs)}"
    else:
        rate, source = 1500.0, "no packed result in this run: a cautious 1500 img/s per run"
    epoch_s = n_train / rate + n_val / (2 * rate) + 0.5        # train, eager validation (cheaper), epoch overhead
    epochs = int(max(1, min(200, (seconds - setup_s) * 0.85 // epoch_s)))
    return {"epochs": epochs, "est_img_per_s_per_run": rate, "est_epoch_s": epoch_s, "rate_from": source}


class _Deadline(Exception):
    "Raised after an epoch when the next one would not finish before the stage's deadline."


def _table1_run(opts: dict, out: str, deadline: float, queue, parent: int) -> None:
    "One Table 1 run in its own process: the trainer, stopping between epochs if the deadline comes; report."
    _die_with_parent(parent)
    try:
        import torch
        if opts.get("device") == "cpu": torch.set_num_threads(1)   # three runs share the CPU
        from ignore_attn.experiments import make_train_config
        from ignore_attn.engine import evaluate, train, setup_run
        from ignore_attn.rundir import load_checkpoint
        def guard(epoch, record):   # stop when one more epoch like this one would end past the deadline
            if epoch < opts["epochs"] and time.time() + 1.2 * record["epoch_time_s"] > deadline: raise _Deadline(epoch)
        cfg = make_train_config(opts | {"out": out, "quiet": True})
        stopped = None
        try: metrics = train(cfg, on_epoch_end=guard)
        except _Deadline as d:
            stopped = int(d.args[0])
            run = setup_run(cfg)                                   # resumes the folder: data, model, runtime as trained
            run.model.load_state_dict(load_checkpoint(Path(out) / "best.pt", run.rt.device)["model"])
            te = evaluate(run.model, run.data.test, run.rt)
            metrics = {"test_top1_err": te["top1_err"], "best_epoch": run.best["epoch"],
                       "best_val_top1_err": run.best["val_top1_err"], "epochs": stopped, "n_test": te["n"]}
        hist = []
        hp = Path(out) / "history.csv"
        if hp.exists():
            import csv
            hist = [{k: float(v) for k, v in r.items()} for r in csv.DictReader(hp.open())]
        queue.put({"ok": True, "attention": opts["attention"], "metrics": metrics, "stopped_after": stopped,
                   "history": [{k: h[k] for k in ("epoch", "lr", "train_loss", "val_top1", "img_per_s")} for h in hist]})
    except BaseException as e:
        queue.put({"ok": False, "attention": opts.get("attention"), "error": f"{type(e).__name__}: {e}",
                   "traceback": traceback.format_exc()})
    finally:
        queue.close(); queue.join_thread()   # the message must leave before os._exit
        os._exit(0)


def stage_table1(ctx: dict, rec: Records) -> dict:
    "Table 1's first cell (ResNet50, standard / se / se-ign3, seed 0): 3 runs packed, epochs as the cap allows."
    import multiprocessing as mp, queue as q
    from ignore_attn.sweeps import sweep_runs
    t_start = time.time()
    cap = ctx["caps"]["table1"]
    from ignore_attn.data import read_cifar
    n_train = len(read_cifar(ctx["data_root"])["train"][1]) - ctx["val_size"]
    plan = plan_epochs(rec, cap - (8 if ctx["dry_run"] else 30), n_train, ctx["val_size"], 3, ctx["table1_setup_s"])
    epochs = plan["epochs"] = min(plan["epochs"], ctx["table1_max_epochs"])
    milestones = scaled_milestones(epochs)
    overrides = {"datasets": ["cifar10"], "archs": [ctx["table1_arch"]], "attentions": list(PAPER_TABLE1), "seeds": [0],
                 "epochs": epochs, "milestones": milestones, "val_size": ctx["val_size"],
                 "device": "cpu" if ctx["dry_run"] else "cuda:0"}
    if ctx["dry_run"]: overrides["batch_size"] = ctx["batch"]
    _, runs = sweep_runs("table1", ctx["data_root"], overrides)
    out_root = Path(ctx["work"]) / "table1"
    fork, queue = mp.get_context("fork"), mp.get_context("fork").Queue()
    # Training stops between epochs by `train_until`; what is left (a test pass of the best checkpoint, and after a
    # stop the run's data and model rebuilt for it) must fit before `collect_until`, before the parent's cap.
    train_until, collect_until = t_start + cap - (8 if ctx["dry_run"] else 30), t_start + cap - 3
    procs = [fork.Process(target=_table1_run, args=(r.options, str(out_root / r.run_id), train_until, queue, os.getpid())) for r in runs]
    for p in procs: p.start()
    got = []
    for _ in procs:
        try: got.append(queue.get(timeout=max(1, collect_until - time.time())))
        except q.Empty: break
    for p in procs:
        p.join(5)
        if p.is_alive(): p.kill()
    protocol = ("CPU DRY RUN (synthetic random images, tiny model): not a result at all. " if ctx["dry_run"] else "") + (
                f"NOT the paper's protocol: {epochs} epochs planned instead of 200, milestones scaled to {milestones} "
                f"(paper 60/120/160, lr 0.1 divided by 5), one seed instead of three, the JPEG re-encoded CIFAR-10; "
                f"the trainer's defaults otherwise ({runs[0].options.get('schedule')} preset, batch "
                f"{runs[0].options.get('batch_size', 128)}). Differences of a few tenths of a percent are within seed "
                "noise at this length.")
    errs = {}
    for g in got:
        if not g["ok"]:
            errs[g["attention"]] = g["error"]
            rec.write("result", variant=g["attention"], status="error", error=g["error"], traceback=g["traceback"])
            continue
        m = g["metrics"]
        rec.write("result", variant=g["attention"], status="ok", test_top1_err=m["test_top1_err"],
                  best_epoch=m.get("best_epoch"), best_val_top1_err=m.get("best_val_top1_err"),
                  epochs_run=g["stopped_after"] or m.get("epochs"), epochs_planned=epochs, milestones=milestones,
                  stopped_at_deadline=g["stopped_after"] is not None, paper_test_top1_err=PAPER_TABLE1[g["attention"]],
                  history=g["history"], protocol=protocol)
    err = {g["attention"]: g["metrics"]["test_top1_err"] for g in got if g["ok"]}
    diffs = {f"{a} - {b}": err[a] - err[b] for a, b in (("se", "standard"), ("se-ign3", "standard"), ("se-ign3", "se"))
             if a in err and b in err}
    paper_d = {f"{a} - {b}": PAPER_TABLE1[a] - PAPER_TABLE1[b] for a, b in (("se", "standard"), ("se-ign3", "standard"), ("se-ign3", "se"))}
    summary = {"test_top1_err": err, "differences": diffs, "paper_test_top1_err": PAPER_TABLE1, "paper_differences": paper_d,
               "epochs_planned": epochs, "milestones": milestones, "plan": plan, "protocol": protocol,
               "arch": ctx["table1_arch"], "dataset": "cifar10 (decoded from the CIFAR-10 JPEG pack)"}
    rec.write("result", summary=True, **summary)
    missing = [a for a in PAPER_TABLE1 if a not in err]
    if missing: raise StageFailed(f"variant(s) {missing} did not finish: {errs or 'no report before the deadline'}")
    return summary


STAGE_FUNCS = {"correctness_notebooks": stage_correctness_notebooks, "prepare": stage_prepare,
               "correctness_fastpaths": stage_correctness_fastpaths, "throughput": stage_throughput,
               "packed": stage_packed, "table1": stage_table1}


# ------------------------------------------------------------------------------------------------------------ driver
def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog="stages:\n" + __doc__.split("\n\n")[1]
                                + "\n\nexamples:" + __doc__.split("examples:")[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dry-run", action="store_true", help="every stage on the CPU at toy sizes (well under a minute)")
    p.add_argument("--out", help="folder of the JSONL, written line by line (default: benchmarks/results; a dry run: a "
                                 "new temp folder; on a lent GPU: $OUT, so that it comes back even if the call is stopped)")
    p.add_argument("--logs", help="folder the stage logs are written to as they run (default: beside the JSONL in a dry "
                                  "run, else the work folder in /tmp)")
    p.add_argument("--budget", type=float, default=400, help="seconds for the whole suite (default 400: what a 600 s "
                                                              "device call leaves after its start, the preamble and margin)")
    p.add_argument("--pack", default=".carry/cifar10-jpg.npz", help="the CIFAR-10 JPEG pack (relative to the checkout)")
    p.add_argument("--data-root", default="/tmp/cifar10-from-jpg", help="where the pack is decoded to CIFAR pickles (reused when there)")
    p.add_argument("--stages", default=",".join(DEFAULT_STAGES),
                   help=f"comma-separated stages, in suite order (default: all but table1; all: {','.join(STAGES)})")
    p.add_argument("--fail-stage", choices=STAGES, help="make this stage raise at its start (tests the failure path)")
    p.add_argument("--fail-path", metavar="PATH:MODE", help=f"make the first model's throughput PATH fail in its process, MODE one of "
                   f"{', '.join(FAIL_MODES)} (tests that the paths after it still report)")
    p.add_argument("--compile-all", action="store_true", help="time torch.compile for every model, not only the first")
    p.add_argument("--run-notebook", help=argparse.SUPPRESS)
    p.add_argument("--flags", default="gpu", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def make_context(args, out: Path, work: Path) -> dict:
    "Sizes and paths of a real or a dry run."
    rel = lambda s: str(s if Path(s).is_absolute() else REPO / s)
    ctx = {"dry_run": args.dry_run, "fail_stage": args.fail_stage, "work": str(work),
           "log_dir": args.logs or str((out if args.dry_run else work) / "logs"),   # not in benchmarks/results
           "pack": rel(args.pack), "data_root": args.data_root, "fail_path": args.fail_path,
           "compile_all": args.compile_all, "compile_backend": None}
    if args.dry_run:
        ctx |= {"pack": str(work / "cifar10-jpg-synthetic.npz") if args.pack == parse_args([]).pack else rel(args.pack),
                "data_root": str(work / "cifar10-jpg") if args.data_root == parse_args([]).data_root else args.data_root,
                "caps": dict(DRY_CAPS), "path_cap": 40, "batch": 8, "steps": 2, "warmup": 1,
                "plain_workers": 0, "val_size": 40, "models": [("resnet8-cifar", "se-ign3"), ("resnet8-cifar", "cbam-ign1(0.5)")],
                "check_arch": "resnet8-cifar", "check_attention": "se-ign3", "check_batch": 8, "compile_backend": "eager", "image_size": 32,
                "packs": [1, 2], "packed_model": ("resnet8-cifar", "se-ign3"), "packed_steps": 3,
                "table1_arch": "resnet8-cifar", "table1_setup_s": 8, "table1_max_epochs": 2}
    else:
        ctx |= {"caps": dict(CAPS), "path_cap": PATH_CAP, "batch": 128, "steps": 100, "warmup": 15, "plain_workers": 4, "val_size": 10000,
                "models": list(THROUGHPUT_MODELS), "check_arch": "resnet50-cifar", "check_attention": "se-ign3",
                "check_batch": 128, "image_size": 32, "packs": [1, 2, 4, 8], "packed_model": ("resnet50-cifar", "se-ign3"),
                "packed_steps": 150, "table1_arch": "resnet50-cifar", "table1_setup_s": 35,
                "table1_max_epochs": 200}
    return ctx


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.run_notebook: return run_notebook(args.run_notebook, args.flags.split())
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    unknown = [s for s in stages if s not in STAGES]
    if unknown: raise SystemExit(f"unknown stage(s) {unknown}; the stages are {', '.join(STAGES)}")
    if args.fail_path is not None:
        name, _, mode = args.fail_path.partition(":")
        if name not in ("plain", *PATHS) or mode not in FAIL_MODES:
            raise SystemExit(f"--fail-path {args.fail_path!r}: use PATH:MODE, PATH one of plain, {', '.join(PATHS)} and "
                             f"MODE one of {', '.join(FAIL_MODES)}")
    results_dir = REPO / "benchmarks" / "results"
    if args.dry_run:
        out = Path(args.out or tempfile.mkdtemp(prefix="device-suite-dry-"))
        if out.resolve() == results_dir.resolve():
            raise SystemExit("a dry run never writes into benchmarks/results (it holds GPU results only); pass another --out")
    else:
        out = Path(args.out or results_dir)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="device-suite-work-", dir=out if args.dry_run else None))
    os.environ.setdefault("IGNORE_ATTN_CACHE", str(work / "cache") if args.dry_run else "/tmp/ignore-attn-cache")
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", "/tmp/ignore-attn-inductor")
    os.environ.setdefault("MPLBACKEND", "Agg")
    facts, commit = gpu_facts(args.dry_run), git_commit()
    # Imported once here, shared by every forked stage (none of these initialises CUDA).
    import torchvision, ignore_attn.engine, ignore_attn.data, ignore_attn.models, ignore_attn.sweeps, train_throughput  # noqa: F401
    path = results_path(out, "cpu-dry-run" if args.dry_run else facts["gpu"])
    run_id = f"{_dt.datetime.now(_dt.timezone.utc):%Y%m%dT%H%M%SZ}-{os.getpid()}"
    ctx = make_context(args, out, work)
    Path(ctx["log_dir"]).mkdir(parents=True, exist_ok=True)
    rec = Records(path, {"run_id": run_id, "gpu": facts["gpu"], "torch": facts["torch"], "cuda": facts["cuda"],
                         "commit": commit["commit"], "dry_run": args.dry_run})
    t0 = time.time()
    rec.write("header", suite_version=SUITE_VERSION, stage=None, **facts, **commit, argv=sys.argv[1:], budget_s=args.budget,
              stages=stages, caps=ctx["caps"], started=_now(), logs=ctx["log_dir"],
              note=("CPU DRY RUN: toy sizes, not GPU results" if args.dry_run else "GPU run"))
    print(f"device suite {run_id}: {facts['gpu']}, torch {facts['torch']}, CUDA {facts['cuda']}, commit "
          f"{(commit['commit'] or '?')[:10]}{' (dirty)' if commit['dirty'] else ''} -> {path}", flush=True)
    status, background = {}, None
    signal.signal(signal.SIGTERM, _stop); signal.signal(signal.SIGINT, _stop)
    try:
        for name in stages:
            left = args.budget - (time.time() - t0)
            later = sum(MIN_S.get(s, 0) for s in stages[stages.index(name) + 1:])
            cap = min(ctx["caps"][name], left - later) if name != "table1" else left - 5
            if name == "table1" and not args.dry_run: ctx["caps"]["table1"] = cap
            if cap < MIN_S.get(name, 10):
                rec.write("stage", stage=name, status="skipped", time_s=0, cap_s=cap,
                          error=f"budget exhausted ({left:.0f} s left of {args.budget:.0f} s)")
                status[name] = "skipped"; continue
            if name in ("throughput", "packed", "table1") and background is not None:   # timing needs the GPU to itself
                status[background["name"]] = finish_stage(background, rec); background = None
                left = args.budget - (time.time() - t0)
                cap = min(cap, left - later) if name != "table1" else left - 5
                if name == "table1" and not args.dry_run: ctx["caps"]["table1"] = cap
            ctx["caps"][name] = cap
            print(f"[{time.time() - t0:6.1f} s] {name} (cap {cap:.0f} s)", flush=True)
            if name == "correctness_notebooks" and len(stages) > 1:
                background = run_stage(name, ctx, rec, cap, background=True)
                continue
            status[name] = run_stage(name, ctx, rec, cap)
            print(f"[{time.time() - t0:6.1f} s] {name}: {status[name]}", flush=True)
        if background is not None: status[background["name"]] = finish_stage(background, rec)
    except Stopped as e:   # kill what runs, say so in the JSONL; the lines already written stay as they are
        for job in list(_RUNNING.values()):
            try: os.killpg(job["proc"].pid, signal.SIGKILL)
            except ProcessLookupError: pass
            rec.write("stage", stage=job["name"], status="stopped", time_s=time.time() - job["t0"], cap_s=job["cap"],
                      error=f"the suite got {e} (its time limit) while this stage ran")
            status[job["name"]] = "stopped"
        rec.write("footer", stage=None, wall_s=time.time() - t0, stage_status=status, results=str(path), stopped_by=str(e))
        print(f"stopped by {e} after {time.time() - t0:.1f} s; results so far: {path}", flush=True)
        return 124
    rec.write("footer", stage=None, wall_s=time.time() - t0, stage_status=status, results=str(path))
    print(f"done in {time.time() - t0:.1f} s: " + ", ".join(f"{k} {v}" for k, v in status.items()), flush=True)
    print(f"results: {path}", flush=True)
    _print_summary(rec)
    return 0 if all(v == "ok" for v in status.values()) else 1


def _print_summary(rec: Records) -> None:
    "A short table of what the run measured (the JSONL has everything)."
    for r in rec.read():
        if r["record"] != "result": continue
        if r.get("status") in ("error", "timeout"):
            what = " ".join(str(r[k]) for k in ("arch", "attention", "path", "check", "check_group", "n_runs") if r.get(k) is not None)
            print(f"  {r['stage']} {what}: {r['status'].upper()}: {str(r.get('error'))[:300]}")
        elif r["stage"] == "throughput" and r.get("status") == "ok":
            print(f"  {r['arch']:>18} {r['attention']:<15} {r['path']:<20} {r['img_per_s']:10.0f} img/s"
                  + (f"  x{r['ratio_to_plain']:.2f} plain" if r.get("ratio_to_plain") else ""))
        elif r["stage"] == "packed" and r.get("status") == "ok":
            print(f"  packed x{r['n_runs']} ({r['path']}): {r['aggregate_img_per_s']:10.0f} img/s aggregate")
        elif r["stage"] == "correctness_fastpaths" and r.get("passed") is not None:
            print(f"  check {r['check']:<28} passed={r['passed']}  loss_rel={r.get('loss_rel', float('nan')):.2e}  "
                  f"update_rel={r.get('update_rel', float('nan')):.2e}")
        elif r["stage"] == "table1" and r.get("summary"):
            print(f"  table1 test error % {r['test_top1_err']} after {r['epochs_planned']} planned epochs; paper {r['paper_test_top1_err']}")


if __name__ == "__main__":
    sys.exit(main())
