"""The report and book sites against hostile run folders and interrupted builds (issue 18, items 8-10).

- A run folder is untrusted: its notebook, error.txt and config.json must not put a script into the report.
- A file of a run folder that is a link out of it is neither copied into the site nor printed.
- A build killed at any moment leaves the earlier site whole; two builds into one folder never mix.
"""
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from html.parser import HTMLParser
from pathlib import Path

import nbformat
import pytest

from ignore_attn.analysis import collect_runs, write_demo_runs
from ignore_attn.report import build_report, missing_links

HOSTILE = ('<img src=x onerror="alert(1)"><script>alert(2)</script><a href="javascript:alert(3)">x</a>'
           '<svg onload="alert(4)"></svg><p onclick="alert(5)" style="x">p</p>')


class Scripts(HTMLParser):
    "Everything in a page that could run: event-handler attributes, javascript: links, script elements and their text."
    def __init__(self):
        super().__init__(); self.handlers, self.js_links, self.scripts, self._in = [], [], [], False

    def handle_starttag(self, tag, attrs):
        for k, v in attrs:
            if k.startswith("on"): self.handlers.append((tag, k, v))
            if k in ("href", "src", "action", "formaction") and v and "".join(v.split()).lower().startswith(("javascript:", "data:text")):
                self.js_links.append((tag, k, v))
        if tag == "script": self._in = True; self.scripts.append("")

    def handle_endtag(self, tag):
        if tag == "script": self._in = False

    def handle_data(self, data):
        if self._in: self.scripts[-1] += data


def hostile_run(root: Path) -> Path:
    "A failed run whose every file a stranger wrote: config values, error.txt, and a notebook with hostile markdown and outputs."
    d = root / "cluttered-digits" / "resnet8-cifar" / "evil" / "seed0"
    d.mkdir(parents=True)
    (d / "config.json").write_text(json.dumps({"config": {"arch": HOSTILE, "attention": "<script>alert(6)</script>", "seed": 0,
                                                          "data": {"dataset": '"><img src=y onerror=alert(7)>'}}}))
    (d / "error.txt").write_text("RuntimeError: <script>alert(8)</script><img src=z onerror=alert(9)>\n")
    nb = nbformat.v4.new_notebook()
    md = nbformat.v4.new_markdown_cell(f"# Run\n\n{HOSTILE}\n\n[click](javascript:alert(10))")
    code = nbformat.v4.new_code_cell("x", execution_count=1, outputs=[
        nbformat.v4.new_output("display_data", data={"text/html": HOSTILE, "text/plain": "x"}),
        nbformat.v4.new_output("display_data", data={"text/markdown": HOSTILE}),
        nbformat.v4.new_output("display_data", data={"application/javascript": "alert(11)"}),
        nbformat.v4.new_output("display_data", data={"image/svg+xml": '<svg onload="alert(12)"><script>alert(13)</script></svg>'}),
        nbformat.v4.new_output("stream", name="stdout", text="<script>alert(14)</script>\n"),
        nbformat.v4.new_output("error", ename="E", evalue=HOSTILE, traceback=[HOSTILE])])
    code.metadata["tags"] = ['t" onmouseover="alert(15)']
    raw = nbformat.v4.new_raw_cell("<script>alert(16)</script>", metadata={"format": "text/html"})
    nb.cells = [md, code, raw]
    nbformat.write(nb, d / "train.ipynb")
    return d


def build(runs: Path, out: Path, **kw) -> Path:
    return build_report(runs, out, quarto="never", analysis=False, quiet=True, **kw)


def test_hostile_run_folder_cannot_script_the_report(tmp_path):
    runs = tmp_path / "runs"
    write_demo_runs(runs, attentions=("standard", "se"), seeds=(0,), epochs=2)
    hostile_run(runs)
    site = tmp_path / "site"
    build(runs, site)
    page = site / "runs/cluttered-digits/resnet8-cifar/evil/seed0/train.html"
    assert page.is_file() and "alert(2)" in page.read_text()   # the hostile text is shown, as text
    assert "alert(8)" in (site / "index.html").read_text()
    for p in site.rglob("*.html"):
        found = Scripts(); found.feed(p.read_text(encoding="utf-8"))
        where = p.relative_to(site)
        assert found.handlers == [], (where, found.handlers)
        assert found.js_links == [], (where, found.js_links)
        assert not [s for s in found.scripts if "alert" in s], (where, found.scripts)


def test_links_out_of_a_run_folder_are_neither_copied_nor_printed(tmp_path):
    private = tmp_path / "private"; private.mkdir()
    (private / "secret.txt").write_text("TOP-SECRET-LINE\n")
    (private / "secret.csv").write_text("epoch,val_loss\n1,0.5\nTOP-SECRET-CSV,1\n")
    (private / "secret.json").write_text(json.dumps({"test_top1_err": 1.0, "note": "TOP-SECRET-JSON"}))
    runs = tmp_path / "runs"
    standard, se = write_demo_runs(runs, attentions=("standard", "se"), seeds=(0,), epochs=2)
    (standard / "error.txt").symlink_to(private / "secret.txt")
    (se / "history.csv").unlink(); (se / "history.csv").symlink_to(private / "secret.csv")
    (se / "metrics.json").unlink(); (se / "metrics.json").symlink_to(private / "secret.json")
    (se / "train.ipynb").unlink(); (se / "train.ipynb").symlink_to(private / "secret.txt")
    with pytest.warns(UserWarning, match="link out of the run folder"):
        runs_table = collect_runs(runs)
    assert set(runs_table["status"]) == {"broken"}
    linked = runs_table[runs_table["run_dir"] == str(se)].iloc[0]
    assert not linked["has_history"] and not linked["has_notebook"]
    site = tmp_path / "site"
    build(runs, site)
    for p in site.rglob("*"):
        assert not p.is_symlink(), p
        if p.is_file(): assert b"TOP-SECRET" not in p.read_bytes(), p
    assert "error.txt is a link out of the run folder" in (site / "index.html").read_text()


# --- builds that are killed or race -------------------------------------------------------------------------------

BUILD = """
import sys
from ignore_attn.report import report_command
sys.exit(report_command([sys.argv[1], "--out", sys.argv[2], "--quarto", "never", "--no-analysis", "--quiet"]))
"""


def start_build(runs: Path, out: Path) -> subprocess.Popen:
    env = {**os.environ, "MPLBACKEND": "Agg", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-c", BUILD, str(runs), str(out)], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def snapshot(site: Path) -> dict[str, bytes]:
    return {p.relative_to(site).as_posix(): p.read_bytes() for p in sorted(site.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def demo_runs(tmp_path_factory) -> Path:
    runs = tmp_path_factory.mktemp("runs")
    write_demo_runs(runs, attentions=("standard", "se"), seeds=(0, 1), epochs=3)
    return runs


def test_a_killed_report_build_leaves_the_earlier_site_whole(demo_runs, tmp_path):
    site = tmp_path / "site"
    t0 = time.monotonic()
    p = start_build(demo_runs, site); assert p.wait() == 0, p.stderr.read()
    took = time.monotonic() - t0
    before = snapshot(site)
    assert "index.html" in before and missing_links(site) == []
    rng = random.Random(18)
    for delay in [rng.uniform(0.3, took) for _ in range(2)] + [took * 0.9]:
        p = start_build(demo_runs, site)
        time.sleep(delay)
        p.send_signal(signal.SIGKILL); p.wait()
        after = snapshot(site)
        # the earlier site, or (when the build won the race against the kill) a complete new one with the same files
        assert set(after) == set(before), (delay, sorted(set(before) ^ set(after))[:5])
        assert missing_links(site) == []
    p = start_build(demo_runs, site); assert p.wait() == 0, p.stderr.read()   # and the next build cleans up after them
    assert [x.name for x in tmp_path.iterdir() if x.name not in ("site", ".site.lock")] == []


def test_two_builds_into_one_folder_give_one_consistent_site(demo_runs, tmp_path):
    site = tmp_path / "site"
    first, second = start_build(demo_runs, site), start_build(demo_runs, site)
    codes = [first.wait(), second.wait()]
    errors = first.stderr.read() + second.stderr.read()
    assert 0 in codes and set(codes) <= {0, 2}, (codes, errors)
    assert "not a report" not in errors
    if 2 in codes: assert "is being built by another process" in errors and "held by pid" in errors, errors
    assert (site / "index.html").is_file() and missing_links(site) == []
    assert sorted(x.name for x in tmp_path.iterdir()) == [".site.lock", "site"]


def test_a_killed_book_build_leaves_the_earlier_book_whole(tmp_path):
    from ignore_attn.book import default_nbs_dir
    nbs = tmp_path / "nbs"; nbs.mkdir()
    for name in ("index.ipynb", "00_flip.ipynb", "01_attention.ipynb"): shutil.copy2(default_nbs_dir() / name, nbs / name)
    docs = tmp_path / "docs"
    cmd = [sys.executable, "-m", "ignore_attn.book", "--render", str(docs), "--nbs", str(nbs)]
    env = {**os.environ, "MPLBACKEND": "Agg"}
    t0 = time.monotonic()
    assert subprocess.run(cmd, env=env, capture_output=True).returncode == 0
    took = time.monotonic() - t0
    before = snapshot(docs)
    for delay in (took * 0.5, took * 0.8, took * 0.95):
        p = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(delay); p.send_signal(signal.SIGKILL); p.wait()
        assert set(snapshot(docs)) == set(before) and missing_links(docs) == []
