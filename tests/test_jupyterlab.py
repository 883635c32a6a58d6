"""Notebooks in JupyterLab (issue 20): every notebook names its kernel, a notebook opened and autosaved (or run and
saved) through Jupyter's own contents manager comes back to its committed bytes after `nbdev_clean`, and a figure has
the same resolution in a JupyterLab kernel as in the book's executor."""
from __future__ import annotations
import json, os, shutil, subprocess, sys
from pathlib import Path
import pytest

from ignore_attn.book import KERNELSPEC, all_notebooks, check_book, default_nbs_dir, kernel_env, metadata_problem

fcm = pytest.importorskip("jupyter_server.services.contents.filemanager", reason="jupyter_server (JupyterLab) is not installed")
from nbformat.sign import NotebookNotary   # noqa: E402

REPO = Path(__file__).resolve().parents[1]
NBS = default_nbs_dir()
LAB_KERNELSPEC = {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"}   # what JupyterLab saves
LANGUAGE_INFO = {"codemirror_mode": {"name": "ipython", "version": 3}, "file_extension": ".py", "mimetype": "text/x-python",
                 "name": "python", "nbconvert_exporter": "python", "pygments_lexer": "ipython3", "version": "3.11.7"}

@pytest.fixture
def jupyter_home(tmp_path, monkeypatch):
    "Jupyter's data, config and runtime folders in the test's temp folder (the notary would write a signature DB)."
    for var in ("JUPYTER_DATA_DIR", "JUPYTER_CONFIG_DIR", "JUPYTER_RUNTIME_DIR"):
        monkeypatch.setenv(var, str(tmp_path / var.lower()))
    return tmp_path

def lab_save(root: Path, rel: str, run: bool) -> None:
    "Save notebook `rel` under `root` as JupyterLab does: its model from the contents manager, with what the lab adds."
    cm = fcm.FileContentsManager(root_dir=str(root))
    cm.notary = NotebookNotary(db_file=":memory:", data_dir=str(root))
    model = cm.get(rel, content=True, type="notebook")
    nb = model["content"]
    nb.metadata.kernelspec = dict(LAB_KERNELSPEC)
    nb.metadata.language_info = dict(LANGUAGE_INFO)
    nb.nbformat, nb.nbformat_minor = 4, 5
    if run:   # Run All: execution counts, timing and UI state in cell metadata (outputs: the committed ones)
        count = 0
        for cell in nb.cells:
            cell.metadata["trusted"] = True
            if cell.cell_type != "code": continue
            count += 1
            cell.execution_count = count
            cell.metadata["execution"] = {"iopub.execute_input": "2026-12-01T20:00:00.000000Z",
                                          "shell.execute_reply": "2026-12-01T20:00:01.000000Z"}
            cell.metadata["scrolled"] = True
            for out in cell.get("outputs", []):
                if out.get("output_type") == "execute_result": out["execution_count"] = count
    cm.save({"type": "notebook", "format": "json", "content": nb}, rel)

@pytest.mark.parametrize("run", [False, True], ids=["opened-autosaved", "run-saved"])
def test_jupyterlab_save_then_nbdev_clean_gives_committed_bytes(tmp_path, jupyter_home, run):
    root = tmp_path / "nbs"
    notebooks = [p.relative_to(NBS).as_posix() for p in all_notebooks(NBS)]
    assert len(notebooks) > 20 and "experiments/train.ipynb" in notebooks
    for rel in notebooks:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(NBS / rel, root / rel)
        lab_save(root, rel, run)
    saved = json.loads((root / notebooks[1]).read_text())
    assert saved["metadata"]["kernelspec"] == LAB_KERNELSPEC and "language_info" in saved["metadata"]   # the lab's diff
    assert metadata_problem(saved) is not None
    # the project's clean step, with the repository's settings.ini (nbdev_clean reads it from the working folder)
    subprocess.run([shutil.which("nbdev_clean") or "nbdev_clean", "--fname", str(root)], cwd=REPO, check=True,
                   capture_output=True)
    differ = [rel for rel in notebooks if (root / rel).read_bytes() != (NBS / rel).read_bytes()]
    assert differ == [], f"not back to the committed bytes after nbdev_clean: {differ}"

def test_every_notebook_names_its_kernel():
    for p in all_notebooks(NBS):
        assert json.loads(p.read_text())["metadata"].get("kernelspec") == KERNELSPEC, p.name

def test_check_book_names_a_metadata_diff(tmp_path):
    "A notebook committed as JupyterLab saved it, or without a kernelspec, is named by the book's check."
    nbs = tmp_path / "nbs"; (nbs / "experiments").mkdir(parents=True)
    shutil.copy2(NBS / "00_flip.ipynb", nbs / "00_flip.ipynb")
    shutil.copy2(NBS / ".book.json", nbs / ".book.json")
    shutil.copy2(NBS / "experiments" / "train.ipynb", nbs / "experiments" / "train.ipynb")
    def problems(): return [p for p in check_book(nbs) if "kernelspec" in p or "metadata" in p]
    assert problems() == []
    for rel, change in (("00_flip.ipynb", lambda m: m.update(language_info=LANGUAGE_INFO)),
                        ("00_flip.ipynb", lambda m: m.update(kernelspec=LAB_KERNELSPEC)),
                        ("experiments/train.ipynb", lambda m: m.pop("kernelspec"))):
        before = (nbs / rel).read_text()
        nb = json.loads(before); change(nb["metadata"]); (nbs / rel).write_text(json.dumps(nb))
        found = problems()
        assert len(found) == 1 and found[0].startswith(f"nbs/{rel}: ") and "nbdev_clean" in found[0], found
        (nbs / rel).write_text(before)

FIGURE_CELL = ("import matplotlib, matplotlib.pyplot as plt\n"
               "fig, ax = plt.subplots(figsize=(2, 1)); ax.plot([0, 1]); plt.show()\n"
               "print(matplotlib.rcParams['figure.dpi'])")

def run_in_kernel(env: dict) -> tuple[float, tuple[int, int]]:
    "figure.dpi and the PNG size of a 2 x 1 inch figure, from a kernel started in nbs/ with `env`."
    import base64, io, nbformat
    from nbclient import NotebookClient
    from PIL import Image
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(FIGURE_CELL)])
    NotebookClient(nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(NBS)}}).execute(env=env)
    outs = nb.cells[0].outputs
    png = next(o for o in outs if o.get("output_type") == "display_data")["data"]["image/png"]
    text = "".join(o.get("text", "") for o in outs if o.get("output_type") == "stream")
    return float(text.split()[-1]), Image.open(io.BytesIO(base64.b64decode(png))).size

def test_figures_have_one_resolution_in_jupyterlab_and_the_book(jupyter_home):
    pytest.importorskip("nbclient"); pytest.importorskip("PIL")
    lab = {k: v for k, v in os.environ.items() if k not in ("MPLBACKEND", "MATPLOTLIBRC")}   # ipykernel picks inline itself
    book = kernel_env(1, NBS)
    dpi_lab, size_lab = run_in_kernel(lab)
    dpi_book, size_book = run_in_kernel(book)
    assert dpi_lab == dpi_book == 72
    assert size_lab == size_book

def test_set_kernelspec_changes_only_the_kernelspec_and_nbdev_clean_keeps_it(tmp_path):
    "The script that gave the notebooks their kernelspec: metadata only, idempotent, and a fixed point of nbdev_clean."
    nbs = tmp_path / "nbs"; nbs.mkdir(); shutil.copy2(REPO / "settings.ini", tmp_path / "settings.ini")
    nb = json.loads((NBS / "00_flip.ipynb").read_text()); del nb["metadata"]["kernelspec"]
    (nbs / "00_flip.ipynb").write_text(json.dumps(nb, sort_keys=True, indent=1, ensure_ascii=False) + "\n")
    run = lambda: subprocess.run([sys.executable, "-m", "ignore_attn.book", "--set-kernelspec", "--nbs", str(nbs)],
                                 capture_output=True, text=True, check=True).stdout
    assert run().startswith("kernelspec set in 1 notebooks")
    assert (nbs / "00_flip.ipynb").read_bytes() == (NBS / "00_flip.ipynb").read_bytes()
    assert run().startswith("kernelspec set in 0 notebooks")
    subprocess.run([shutil.which("nbdev_clean") or "nbdev_clean", "--fname", str(nbs)], cwd=tmp_path, check=True, capture_output=True)
    assert (nbs / "00_flip.ipynb").read_bytes() == (NBS / "00_flip.ipynb").read_bytes()
