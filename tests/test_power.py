"`ignore-attn sweep NAME --dry-run` ends with the sweep's cost and power; `--seeds` changes them; sweep.json keeps them."
import contextlib, io, re

import pytest

from ignore_attn.cli import main
from ignore_attn.stats import paper_evidence, seeds_needed, welch_power


def run_cli(argv):
    "(exit status, stdout, stderr) of `ignore-attn ...` in this process."
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try: code = main([str(a) for a in argv])
        except SystemExit as e: code = e.code
    return code, out.getvalue(), err.getvalue()


def power_line(out: str) -> str:
    return next(l for l in out.splitlines() if l.startswith("power:"))


@pytest.fixture(scope="module")
def dry_runs(tmp_path_factory):
    "table1's dry run at its 3 seeds and at 8 seeds, at 2,000 img/s."
    tmp = tmp_path_factory.mktemp("dry")
    base = ["sweep", "table1", "--dry-run", "--data", tmp, "--out", tmp / "runs", "--img-per-s", 2000]
    return run_cli(base), run_cli(base + ["--seeds", "0,1,2,3,4,5,6,7"])


def test_dry_run_prints_cost_and_power(dry_runs):
    (code, out, err), _ = dry_runs
    assert code == 0, err
    # 84 runs of 200 epochs over CIFAR's 40,000 training images (10,000 held out for validation)
    assert "cost: 84 runs, 672,000,000 training images in all" in out
    assert "time: 93.3 h of training at 2,000 img/s (given by --img-per-s)" in out
    line = power_line(out)
    assert "at 3 seeds per arm" in line and "80 % power needs a median of" in line
    # the claim table: SE-Ign3 vs SE on CIFAR-10 ResNet-50, with the power Welch's test has at 3 seeds
    ev = paper_evidence()
    e = ev[(ev.table == 1) & (ev.dataset == "cifar10") & (ev.arch == "ResNet50") & (ev.method == "se-ign3")
           & (ev.reference == "se") & (ev.metric == "top1_err")].iloc[0]
    row = next(l for l in out.splitlines() if re.match(r"\s*cifar10\s+resnet50-cifar\s+top1_err\s+se-ign3\s+se\s", l))
    assert row.split()[-2:] == [f"{welch_power(e['diff'], e['std'], e['ref_std'], 3):.2f}",
                                str(seeds_needed(e["diff"], e["std"], e["ref_std"]))]


def test_seeds_change_the_cost_and_the_power(dry_runs):
    (_, out3, _), (code, out8, err) = dry_runs
    assert code == 0, err
    assert "cost: 224 runs, 1,792,000,000 training images in all" in out8
    p3 = float(re.search(r"\(median ([0-9.]+)\)", power_line(out3)).group(1))
    p8 = float(re.search(r"\(median ([0-9.]+)\)", power_line(out8)).group(1))
    assert "at 8 seeds per arm" in power_line(out8) and p8 > p3


def test_no_throughput_known_says_so(tmp_path, monkeypatch):
    import ignore_attn.performance
    monkeypatch.setattr(ignore_attn.performance, "default_results_dir", lambda: tmp_path / "no-results")
    code, out, err = run_cli(["sweep", "quick", "--dry-run", "--out", tmp_path / "runs"])
    assert code == 0, err
    assert "time: no throughput known (no benchmark result in" in out and "pass --img-per-s N" in out
    assert "covers none of the paper's claimed differences" in out   # Cluttered Digits is not in the paper


def test_a_bad_throughput_is_refused(tmp_path):
    code, out, err = run_cli(["sweep", "quick", "--dry-run", "--out", tmp_path / "runs", "--img-per-s", "-5"])
    assert code == 2 and "--img-per-s must be a positive number" in err and "Traceback" not in err
    assert not (tmp_path / "runs").exists()
