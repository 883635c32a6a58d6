"""Tests of ignore_attn.book: the real book rendered into the report's site (every link resolves, every page opens in
headless Chromium with its equations typeset by the site's own MathJax and no broken image), and executing and checking
a tiny book, including that `nbdev_clean` leaves a freshly executed notebook as it is and the check passes after it.
"""
import argparse
import contextlib
import io
import html
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from ignore_attn.book import (MANIFEST, TABLE_NOTEBOOKS, add_docs_arguments, book_notebooks, check_book, docs_main,
                              execute_book, notebook_title, render_book)
from ignore_attn.report import build_report, missing_links

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    "The report of an empty runs folder with the real book inside it, as `build_report(..., book=render_book)` makes it."
    root = tmp_path_factory.mktemp("site")
    (root / "runs").mkdir()
    with contextlib.redirect_stdout(io.StringIO()):
        build_report(root / "runs", root / "site", quarto="never", analysis=False, book=render_book)
    return root / "site"


def test_book_is_every_numbered_notebook_in_order():
    names = [p.name for p in book_notebooks(REPO / "nbs")]
    numbered = [*(REPO / "nbs").glob("[0-9][0-9]_*.ipynb"), *(REPO / "nbs").glob("[0-9][0-9][a-z]_*.ipynb")]
    assert names[0] == "index.ipynb" and names[1:] == sorted(p.name for p in numbered)
    assert names.index("13_stats.ipynb") == names.index("12_analysis.ipynb") + 1   # the statistics build on the analysis
    stems = {n.removesuffix(".ipynb") for n in names}
    assert {s for v in TABLE_NOTEBOOKS.values() for s in v} <= stems, "TABLE_NOTEBOOKS names a notebook that is gone"


def test_site_pages_and_links(site):
    book = site / "book"
    pages = sorted(p.name for p in book.glob("*.html"))
    assert pages == sorted(p.stem + ".html" for p in book_notebooks(REPO / "nbs"))
    assert (book / "_static/mathjax/tex-svg-full.js").stat().st_size > 1_000_000
    assert missing_links(site) == []
    for path in book_notebooks(REPO / "nbs"):
        text = (book / f"{path.stem}.html").read_text()
        sidebar = text[text.index('<nav class="sidebar"'):text.index("</nav>")]
        links = re.findall(r'href="([^"#]+)', sidebar)
        assert "../index.html" in links and len(set(links)) == 1 + len(pages)        # the report, then every chapter
        assert f'<li class="current"><a href="{path.stem}.html">' in sidebar
        assert not re.search(r'<span class="c1">#\| ?(export|hide)', text)              # nbdev's lines are not shown
        title = notebook_title(nbformat.read(path, as_version=4))
        assert f"<title>{title} - ignore-attn" in html.unescape(text)
    # a chapter that explains a table links to the report's tables
    assert 'href="../index.html#tables">Table 1</a>' in (book / "04_models.html").read_text()


def test_pages_show_no_raw_markup_and_show_doc_once(site):
    "No Quarto attribute or div markup, no link to settings.ini's placeholder host; show_doc as heading, signature, table."
    for path in book_notebooks(REPO / "nbs"):
        text = (site / "book" / f"{path.stem}.html").read_text()
        prose = re.sub(r"<pre.*?</pre>|<code>.*?</code>|<script.*?</script>", "", text, flags=re.S)   # code may quote markup
        assert "{target=" not in prose and not re.search(r"^:::", prose, re.M), f"{path.name}: raw Quarto markup"
        assert "github.com/ignore-attn/ignore-attn" not in text, f"{path.name}: a link to the placeholder host"
    flip = (site / "book" / "00_flip.html").read_text()
    documented = [c.source for c in nbformat.read(REPO / "nbs" / "00_flip.ipynb", as_version=4).cells
                  if c.cell_type == "code" and c.source.startswith("show_doc(") and c.outputs]   # executed ones
    assert flip.count('class="showdoc"') == len(documented) > 0
    assert '<h3 id="attend">attend' in flip and '<table class="params">' in flip
    assert flip.count("attend(logits:torch.Tensor, alpha:float=1.0)") == 1        # the signature once, not twice
    links = re.findall(r'class="source-link" href="([^"]+)"', flip)
    assert links and all((site / "book" / l).resolve() == (REPO / "ignore_attn" / "flip.py").resolve() for l in links)


def test_check_fails_on_warnings_tracebacks_and_machine_paths(tmp_path):
    "A freshly executed chapter passes; a warning, a traceback or a machine path in an output fails, naming the cell."
    nbs = tiny_book(tmp_path)
    execute_book(nbs, log=lambda *a: None)
    assert check_book(nbs) == []
    for text, what in [("/opt/x/ignore_attn/train.py:9: UserWarning: late\n", "a warning (UserWarning: late"),
                       ("Traceback (most recent call last):\n  File x\n", "a traceback"),
                       (f"saved to {tmp_path}/out.pt\n", "a path of the machine that ran it (/"),   # a scratch folder
                       ("loaded /home/ana/data.pt\n", "a path of the machine that ran it (/home/ana/data.pt")]:
        nb = nbformat.read(nbs / "00_tiny.ipynb", as_version=4)
        clean = nb.cells[1].outputs
        nb.cells[1].outputs = clean + [nbformat.from_dict({"output_type": "stream", "name": "stdout", "text": text})]
        nbformat.write(nb, nbs / "00_tiny.ipynb")
        problems = check_book(nbs, lib_dir=None)
        assert len(problems) == 1 and problems[0].startswith("nbs/00_tiny.ipynb: cell 1 ") and what in problems[0], problems
        nb.cells[1].outputs = clean
        nbformat.write(nb, nbs / "00_tiny.ipynb")
    assert check_book(nbs) == []


def chromium_dom(url: str, profile: Path) -> str:
    "The DOM of `url` after load in headless Chromium (flags as in test_report.py: offline, no first-run work)."
    flags = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={profile}", "--virtual-time-budget=15000", "--window-size=1280,2000"]
    return subprocess.run(flags + ["--dump-dom", url], capture_output=True, text=True, timeout=180, check=True).stdout


def body_attrs(dom: str) -> dict[str, str]:
    return dict(re.findall(r'(data-[\w-]+)="([^"]*)"', re.search(r"<body[^>]*>", dom)[0]))


@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium not installed (Debian: apt-get install chromium; .ci/run does)")
def test_browser_opens_every_page_with_typeset_math(site, tmp_path):
    for path in book_notebooks(REPO / "nbs"):
        nb = nbformat.read(path, as_version=4)
        prose = [re.sub(r"```.*?```|`[^`]*`", "", c.source, flags=re.S) for c in nb.cells if c.cell_type == "markdown"]
        has_math = any("$" in p for p in prose)                                         # not inside code
        attrs = body_attrs(chromium_dom((site / "book" / f"{path.stem}.html").resolve().as_uri(), tmp_path / "profile"))
        assert attrs.get("data-loaded") == "yes", f"{path.name}: the page's load handler did not run"
        assert attrs.get("data-broken-images") == "0", f"{path.name}: {attrs.get('data-broken-images')} broken images"
        assert attrs.get("data-math-done") == "yes", f"{path.name}: MathJax did not run ({attrs.get('data-math-done')})"
        assert attrs["data-math-raw"] == "0", f"{path.name}: {attrs['data-math-raw']} pieces of TeX left raw"
        assert attrs["data-math-errors"] == "0", f"{path.name}: {attrs['data-math-errors']} TeX errors"
        assert (int(attrs["data-math"]) > 0) == has_math, f"{path.name}: {attrs['data-math']} equations typeset"
    home = body_attrs(chromium_dom((site / "index.html").resolve().as_uri(), tmp_path / "profile"))
    assert home.get("data-loaded") == "yes" and home.get("data-broken-images") == "0"


def tiny_book(root: Path) -> Path:
    "A project folder (settings.ini copied from this repository) whose nbs/ holds one chapter with one code cell."
    shutil.copy2(REPO / "settings.ini", root / "settings.ini")
    nbs = root / "nbs"
    nbs.mkdir()
    nb = new_notebook(cells=[new_markdown_cell("# Tiny\n\n$a^2$"),
                             new_code_cell("import torch\nprint(torch.ones(2).sum().item())\nobject()")])
    nbformat.write(nb, nbs / "00_tiny.ipynb")
    return nbs


def test_execute_then_nbdev_clean_then_check(tmp_path):
    nbs = tiny_book(tmp_path)
    records = execute_book(nbs, log=lambda *a: None)
    rec = records["00_tiny.ipynb"]
    assert rec["outputs"] == 1 and rec["errors"] == [] and rec["seconds"] > 0
    assert json.loads((nbs / MANIFEST).read_text())["notebooks"]["00_tiny.ipynb"] == rec
    nb = nbformat.read(nbs / "00_tiny.ipynb", as_version=4)
    texts = [o.get("text") or o["data"]["text/plain"] for o in nb.cells[1].outputs]
    assert texts[0] == "2.0\n" and "at 0x" not in texts[1]          # cleaned as nbdev_clean does: no object address
    before = (nbs / "00_tiny.ipynb").read_bytes()
    subprocess.run(["nbdev_clean", "--fname", str(nbs / "00_tiny.ipynb")], cwd=tmp_path, check=True, capture_output=True)
    assert (nbs / "00_tiny.ipynb").read_bytes() == before, "nbdev_clean changed a freshly executed notebook"
    assert check_book(nbs) == []
    nb.cells[1].source += "\nprint('more')"
    nbformat.write(nb, nbs / "00_tiny.ipynb")
    assert [p.split(":")[0] for p in check_book(nbs)] == ["nbs/00_tiny.ipynb"]


def test_docs_command_check_and_render(tmp_path):
    nbs = tiny_book(tmp_path)
    parse = lambda *a: add_docs_arguments(argparse.ArgumentParser()).parse_args(list(a))
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert docs_main(parse("--check", "--nbs", str(nbs))) == 1
    assert "nbs/00_tiny.ipynb: never executed for the book" in err.getvalue()
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert docs_main(parse("--execute", "--nbs", str(nbs), "--out", str(tmp_path / "_docs"))) == 0
    assert (tmp_path / "_docs/00_tiny.html").is_file() and "open it in a browser: file://" in out.getvalue()
    assert missing_links(tmp_path / "_docs") == []
    check = subprocess.run([sys.executable, "-m", "ignore_attn.book", "--check", "--nbs", str(nbs)], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    with contextlib.redirect_stderr(io.StringIO()) as err:
        assert docs_main(parse("--nbs", str(tmp_path / "absent"))) == 2
    assert "ignore-attn docs: error: notebooks folder" in err.getvalue()
    (tmp_path / "thesis").mkdir(); (tmp_path / "thesis/chapter1.tex").write_text("precious")
    with contextlib.redirect_stderr(io.StringIO()) as err:
        assert docs_main(parse("--nbs", str(nbs), "--out", str(tmp_path / "thesis"))) == 2
    assert "refusing to overwrite" in err.getvalue() and (tmp_path / "thesis/chapter1.tex").read_text() == "precious"
