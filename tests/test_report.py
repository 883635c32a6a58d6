"""Tests of ignore_attn.analysis and ignore_attn.report on real finished runs: tables with the paper's numbers in the
right cells, figures, the static site (every link resolves), headless Chromium, and bad input.

The runs are made by the trainer itself (`ignore_attn.engine.train`), tiny: Cluttered Digits, ResNet-8, two epochs on
128 images, four attention variants x two seeds. The paper has no Cluttered Digits numbers, so to check that the
paper's values land in the right cells of Table 1 a copy of these runs is *relabelled* as CIFAR-10 / ResNet50 (only
`dataset` and `arch` in config.json and metrics.json change; the numbers are the real runs'), without checkpoints.
"""
import contextlib
import html
import io
import json
import os
import shutil
import subprocess
import warnings
from pathlib import Path

import nbformat
import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats

from ignore_attn.analysis import (collect_runs, load_history, loss_curves_figure, paper_results, paper_table,
                                  error_figure)
from ignore_attn.data import DataConfig
from ignore_attn.report import add_report_arguments, build_report, missing_links, report_command, report_main
from ignore_attn.train import TrainConfig
from ignore_attn.engine import train

torch.set_num_threads(1)
REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("IGNORE_ATTN_SHARED") or REPO.parent / "shared")
ATTENTIONS = ("standard", "se", "se-ign3", "cbam-ign3")
SEEDS = (0, 1)
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def slug(spec: str) -> str:
    return spec.replace("(", "_").replace(")", "")


def run_notebook(run_dir: Path, title: str) -> None:
    "A small executed-style notebook in the run folder, standing in for the sweep's papermill copy of train.ipynb."
    metrics = json.loads((run_dir / "metrics.json").read_text())
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell(f"# {title}"),
                nbformat.v4.new_code_cell("print(metrics)", execution_count=1, outputs=[
                    nbformat.v4.new_output("stream", name="stdout", text=json.dumps(metrics) + "\n")])]
    nbformat.write(nb, run_dir / "train.ipynb")


@pytest.fixture(scope="session")
def real_runs(tmp_path_factory) -> Path:
    "Eight real finished runs in the sweep layout <root>/<dataset>/<arch>/<slug>/seed<k>/."
    root = tmp_path_factory.mktemp("runs")
    data = DataConfig(limit_train=128, limit_val=64, limit_test=64)
    for attention in ATTENTIONS:
        for seed in SEEDS:
            d = root / "cluttered-digits" / "resnet8-cifar" / slug(attention) / f"seed{seed}"
            train(TrainConfig(arch="resnet8-cifar", attention=attention, data=data, seed=seed, schedule="quick",
                              epochs=2, quiet=True, out=str(d)))
            run_notebook(d, f"cluttered-digits / resnet8-cifar / {attention} / seed {seed}")
    return root


def relabel(src: Path, dest: Path, dataset: str, arch: str) -> Path:
    "Copy the runs under `src` to `dest` as if they had been trained on `dataset` with `arch` (no checkpoints)."
    for m in src.rglob("metrics.json"):
        d = dest / dataset / arch / m.parent.relative_to(src).parts[-2] / m.parent.name
        d.mkdir(parents=True)
        for name in ("history.csv", "train.ipynb"): shutil.copy2(m.parent / name, d / name)
        config = json.loads((m.parent / "config.json").read_text())
        config["config"]["arch"], config["config"]["data"]["dataset"] = arch, dataset
        (d / "config.json").write_text(json.dumps(config))
        metrics = json.loads(m.read_text()) | {"arch": arch, "dataset": dataset}
        (d / "metrics.json").write_text(json.dumps(metrics))
    return dest


@pytest.fixture(scope="session")
def all_runs(real_runs, tmp_path_factory) -> Path:
    "The real runs plus their relabelled copy (cifar10 / resnet50-cifar) in one folder."
    root = tmp_path_factory.mktemp("all")
    shutil.copytree(real_runs, root, dirs_exist_ok=True)
    relabel(real_runs, root, "cifar10", "resnet50-cifar")
    return root


@pytest.fixture(scope="session")
def site(all_runs, tmp_path_factory) -> Path:
    "The report of all runs, pure-Python renderer, with the analysis notebook executed."
    out = tmp_path_factory.mktemp("site") / "_report"
    with contextlib.redirect_stdout(io.StringIO()):
        home = build_report(all_runs, out, quarto="never", analysis="auto")
    assert home == out / "index.html"
    return out


def test_paper_numbers_shipped():
    "The package's copy of the paper's numbers is the shared one."
    src = SHARED / "data" / "paper_results.csv"
    if not src.is_file(): pytest.skip(f"shared paper_results.csv not found at {src} (set IGNORE_ATTN_SHARED)")
    ours, theirs = paper_results(), pd.read_csv(src)
    assert len(ours) == len(theirs) and np.allclose(ours["mean"], theirs["mean"])


def test_collect_real_runs(real_runs):
    runs = collect_runs(real_runs)
    assert len(runs) == len(ATTENTIONS) * len(SEEDS) and set(runs.status) == {"done"}
    assert runs["attention"].tolist() == [a for a in ATTENTIONS for _ in SEEDS]  # paper order, then seed
    for r in runs.itertuples():
        m = json.loads((Path(r.run_dir) / "metrics.json").read_text())
        assert (r.test_top1_err, r.seed, r.arch, r.dataset) == (m["test_top1_err"], m["seed"], "resnet8-cifar", "cluttered-digits")
    assert len(load_history(runs)) == len(runs) * 2


def test_table1_has_the_papers_numbers_in_the_right_cells(all_runs):
    runs = collect_runs(all_runs)
    t = paper_table(runs, 1)
    cells = t.tidy.set_index(["arch", "method", "dataset", "metric"])
    ours = runs[(runs.dataset == "cifar10") & (runs.attention == "standard")]["test_top1_err"]
    std = cells.loc[("ResNet50", "standard", "cifar10", "top1_err")]
    assert (std["paper_mean"], std["paper_std"], std["n"]) == (8.27, 0.54, 2)
    assert np.isclose(std["mean"], ours.mean()) and np.isclose(std["diff"], ours.mean() - 8.27)
    assert std["ours_text"] == f"{ours.mean():.2f} ± {ours.std(ddof=1):.2f} (2)"
    ign3 = cells.loc[("ResNet50", "se-ign3", "cifar10", "top1_err")]
    assert (ign3["paper_mean"], ign3["vs"]) == (7.28, "se")
    seeds = lambda m: runs[(runs.dataset == "cifar10") & (runs.attention == m)].set_index("seed")["test_top1_err"].sort_index()
    expected = stats.ttest_rel(seeds("se-ign3"), seeds("se")).pvalue      # paired by seed: the runs of one seed share data
    assert np.isclose(ign3["p_value"], expected, equal_nan=True)
    # methods not run keep the paper's value and no result of ours; CBAM runs go to Table 2, not 1
    assert cells.loc[("DenseNet", "se-ign2", "cifar100", "top5_err"), ["paper_mean", "n"]].tolist() == [7.39, 0]
    assert "cbam-ign3" not in set(t.tidy.method) and "cbam-ign3" in set(paper_table(runs, 2).tidy.query("n > 0").method)
    # the real (unrelabelled) runs land in the quick table, without paper numbers
    q = paper_table(runs, "quick").tidy
    assert set(q.dataset) == {"cluttered-digits"} and q.paper_mean.isna().all() and q.n.sum() == len(ATTENTIONS) * len(SEEDS)
    # the HTML row of standard ResNet50 holds the paper's cell
    row = next(l for l in t.html.splitlines() if 'data-arch="ResNet50" data-method="standard"' in l)
    assert "8.27 ± 0.54" in row and std["ours_text"] in row


def test_figures_from_real_runs(real_runs, tmp_path):
    runs = collect_runs(real_runs)
    fig = loss_curves_figure(load_history(runs), "cluttered-digits", "resnet8-cifar")
    assert {t.get_text() for t in fig.axes[0].get_legend().get_texts()} == set(ATTENTIONS)
    fig.savefig(tmp_path / "loss.png")
    assert (tmp_path / "loss.png").stat().st_size > 5000
    with pytest.raises(ValueError, match="pick a pair from run_groups"):
        error_figure(runs, "cifar10", "resnet8-cifar")


def test_site_links_resolve(site, all_runs):
    index = (site / "index.html").read_text()
    assert missing_links(site) == []
    assert index.count('class="paper-table"') == 3  # Tables 1 and 2 (relabelled runs) and the quick table
    for r in collect_runs(all_runs).itertuples():
        base = f"runs/{r.run_id}/"
        for name in ("train.html", "metrics.json", "history.csv"):
            assert f'href="{base}{name}"' in index and (site / base / name).is_file()
    assert (site / "runs.csv").is_file() and len(pd.read_csv(site / "runs.csv")) == 16
    figures = list((site / "figures").glob("*.png"))
    assert len(figures) == 2 * 3  # per group: loss curves, test error, cost
    page = (site / "runs/cluttered-digits/resnet8-cifar/se-ign3/seed1/train.html").read_text()
    assert "test_top1_err" in page and 'href="../../../../../index.html#runs"' in page


def test_site_attention_analysis(site):
    "The analysis notebook ran on the real runs: Grad-CAM, channel masks, border/centre and distractor tables."
    assert (site / "analysis.html").is_file() and (site / "analysis.ipynb").is_file()
    pngs = {p.name for p in (site / "figures" / "analysis").glob("*.png")}
    assert {"resnet8-cifar_grad-cam.png", "resnet8-cifar_channel-masks.png", "resnet8-cifar_cbam-ign3_ignoring-mass.png"} <= pngs
    border = pd.read_csv(site / "analysis_border_vs_centre.csv")
    assert set(border.attention) == {"cbam-ign3"} and list(border.stage) == ["stage1", "stage2", "stage3"]
    assert border["border_share"].between(0, 1).all() and np.allclose(border["border_area"], 1 - (24 / 32) ** 2)
    distractors = pd.read_csv(site / "analysis_distractors.csv")
    assert distractors["auc"].between(0, 1).all()
    index = (site / "index.html").read_text()
    assert 'href="analysis.html"' in index and "figures/analysis/resnet8-cifar_grad-cam.png" in index
    assert 'id="analysis-error"' not in index
    # one table of paired comparisons per group, with Holm-adjusted p and verdicts computed from it
    comp = pd.read_csv(site / "analysis_comparisons_cluttered-digits_resnet8-cifar.csv")
    assert {"se-ign3 − se", "se − standard"} <= set(comp["comparison"]) and (comp["p_adj"].dropna() >= comp["p"].dropna()).all()
    verdict = (site / "analysis_verdict_cluttered-digits_resnet8-cifar.txt").read_text().splitlines()
    assert "Holm" in verdict[0] and "comparisons" in verdict[1]


def test_report_has_paired_comparisons_and_the_papers_evidence(tmp_path):
    "The shipped real quick sweep: the home page shows its comparison table; a page of its own, the paper's evidence."
    from ignore_attn.stats import comparison_summary, comparison_table, evidence_sentence, paper_evidence
    fixture = Path(__file__).resolve().parents[1] / "nbs" / "fixtures" / "quick"
    with contextlib.redirect_stdout(io.StringIO()):
        home = build_report(fixture, tmp_path / "site", quarto="never", analysis=False)
    index = home.read_text()
    assert 'id="comparisons"' in index and 'href="evidence.html"' in index
    t = comparison_table(collect_runs(fixture), "cluttered-digits", "resnet8-cifar")
    assert html.escape(comparison_summary(t)) in index and index.count("<td>cbam-ign3 − cbam</td>") == 1
    page = (tmp_path / "site" / "evidence.html").read_text()
    assert html.escape(evidence_sentence(paper_evidence())) in page
    assert page.count("<h2>") == 4 and "seeds for 80 % power" in page
    assert not missing_links(tmp_path / "site")


def chromium_dom(url: str, profile: Path, screenshot: Path | None = None) -> str:
    "The DOM of `url` after load in headless Chromium (and optionally a screenshot)."
    flags = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={profile}", "--virtual-time-budget=10000", "--window-size=1280,2000"]
    if screenshot is not None:
        subprocess.run(flags + [f"--screenshot={screenshot}", url], capture_output=True, timeout=120, check=True)
    return subprocess.run(flags + ["--dump-dom", url], capture_output=True, text=True, timeout=120, check=True).stdout


@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium not installed (Debian: apt-get install chromium; .ci/run does)")
def test_browser_opens_the_report_from_disk(site, tmp_path):
    shot = tmp_path / "report.png"
    dom = chromium_dom((site / "index.html").resolve().as_uri(), tmp_path / "profile", shot)
    assert 'data-loaded="yes"' in dom, "the page's load handler did not run"
    assert 'data-broken-images="0"' in dom, "some image of the report did not load"
    n_images = int(dom.split('data-images="')[1].split('"')[0])
    assert n_images >= 6 + 3  # the figures and the analysis figures
    assert dom.count('class="paper-table"') == 3 and "8.27 ± 0.54" in dom
    assert shot.is_file() and shot.stat().st_size > 20_000
    print(f"screenshot: {shot}")


def test_missing_and_empty_runs_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist; pass the folder a sweep wrote"):
        build_report(tmp_path / "absent", tmp_path / "out", quarto="never")
    assert not (tmp_path / "out").exists()  # nothing written for a typo
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert report_command([str(tmp_path / "absent"), "--out", str(tmp_path / "out")]) == 2
    assert "ignore-attn report: error: runs folder" in err.getvalue()
    (tmp_path / "empty").mkdir()
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert report_command([str(tmp_path / "empty"), "--out", str(tmp_path / "out"), "--quarto", "never"]) == 0
    index = (tmp_path / "out" / "index.html").read_text()
    assert 'id="no-runs"' in index and "ignore-attn sweep quick --out" in index and "no runs found" in out.getvalue()
    assert missing_links(tmp_path / "out") == []


def test_broken_and_failed_runs_are_listed_and_the_rest_builds(real_runs, tmp_path):
    root = tmp_path / "runs"
    for d in ("standard/seed0", "standard/seed1", "se/seed0"):
        src = real_runs / "cluttered-digits/resnet8-cifar" / d
        shutil.copytree(src, root / d, ignore=shutil.ignore_patterns("*.pt"))
    (root / "se/seed0/metrics.json").write_text('{"test_top1_err": 12.')  # cut short
    (root / "se-ign3/seed0").mkdir(parents=True)
    (root / "se-ign3/seed0/error.txt").write_text("RuntimeError: out of memory\n\ndetails\n")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        runs = collect_runs(root)
    assert any("is broken" in str(w.message) for w in caught)
    assert runs.set_index("run_id")["status"].to_dict() == {"standard/seed0": "done", "standard/seed1": "done",
                                                            "se/seed0": "broken", "se-ign3/seed0": "failed"}
    with contextlib.redirect_stdout(io.StringIO()) as log:
        home = build_report(root, tmp_path / "site", quarto="never", analysis=False)
    assert "warning: run" in log.getvalue() and "is broken" in log.getvalue()
    index = home.read_text()
    assert 'id="problems"' in index and "metrics.json cannot be read (JSONDecodeError" in index
    assert "RuntimeError: out of memory" in index and 'data-status="broken"' in index and 'data-status="failed"' in index
    assert index.count('class="paper-table"') == 1
    quick = paper_table(runs, "quick").tidy.set_index("method")
    assert quick.loc["standard", "n"] == 2 and "se" not in quick.index  # the broken run gives no result
    assert missing_links(tmp_path / "site") == []


def test_out_folder_that_is_not_a_report_is_refused(tmp_path, real_runs):
    (tmp_path / "thesis").mkdir(); (tmp_path / "thesis" / "chapter1.tex").write_text("precious")
    with pytest.raises(FileExistsError, match="refusing to overwrite"):
        build_report(real_runs, tmp_path / "thesis", quarto="never", analysis=False, quiet=True)
    assert (tmp_path / "thesis" / "chapter1.tex").read_text() == "precious"


def test_report_arguments():
    import argparse
    args = add_report_arguments(argparse.ArgumentParser()).parse_args(["runs/", "--out", "site", "--no-analysis"])
    assert (args.runs_dir, args.out, args.quarto, args.no_analysis) == ("runs/", "site", "auto", True)
    with pytest.raises(SystemExit):
        with contextlib.redirect_stderr(io.StringIO()):
            add_report_arguments(argparse.ArgumentParser()).parse_args(["runs", "--quarto", "sometimes"])


def stand_in_quarto(bin_dir: Path, fail: bool = False) -> None:
    "A fake `quarto` on the PATH: `quarto render SRC` writes SRC/_site/index.html from index.qmd and copies figures/runs."
    bin_dir.mkdir()
    script = bin_dir / "quarto"
    body = "exit 3" if fail else ('src="$2"; mkdir -p "$src/_site"; cp -r "$src/figures" "$src/runs" "$src/_site/" 2>/dev/null; '
                                  '{ echo "<html><body>"; cat "$src/index.qmd"; echo "</body></html>"; } > "$src/_site/index.html"')
    script.write_text(f"#!/bin/sh\n[ \"$1\" = render ] || exit 2\n{body}\n")
    script.chmod(0o755)


def test_quarto_path_writes_sources_and_copies_the_site(real_runs, tmp_path, monkeypatch):
    "With quarto on the PATH: Quarto sources (index.qmd, _quarto.yml, notebooks) are rendered and the site copied out."
    stand_in_quarto(tmp_path / "bin")
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    with contextlib.redirect_stdout(io.StringIO()):
        home = build_report(real_runs, tmp_path / "site", quarto="auto", analysis=False)
    src = tmp_path / "site" / "_quarto_src"
    assert home == tmp_path / "site" / "index.html" and "```{=html}" in home.read_text()
    assert "output-dir: _site" in (src / "_quarto.yml").read_text()
    qmd = (src / "index.qmd").read_text()
    assert "## Tables {#tables}" in qmd and 'class="paper-table"' in qmd and "runs/cluttered-digits/resnet8-cifar/se/seed0/train.html" in qmd
    assert not (src / "runs/cluttered-digits/resnet8-cifar/se/seed0/train.ipynb").exists()  # untrusted: not given to Quarto
    assert (tmp_path / "site/runs/cluttered-digits/resnet8-cifar/se/seed0/train.html").is_file()   # sanitised by nbconvert
    assert (tmp_path / "site/runs/cluttered-digits/resnet8-cifar/se/seed0/metrics.json").is_file()


def test_failing_quarto_falls_back_to_python(real_runs, tmp_path, monkeypatch):
    stand_in_quarto(tmp_path / "bin", fail=True)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    with contextlib.redirect_stdout(io.StringIO()) as log:
        home = build_report(real_runs, tmp_path / "site", quarto="auto", analysis=False)
    assert "quarto failed" in log.getvalue() and "pure-Python renderer" in log.getvalue()
    assert missing_links(tmp_path / "site") == [] and 'class="paper-table"' in home.read_text()
    with pytest.raises(subprocess.CalledProcessError):
        with contextlib.redirect_stdout(io.StringIO()):
            build_report(real_runs, tmp_path / "site2", quarto="always", analysis=False)
