"""Write README.md from nbs/index.ipynb without Quarto: execute the notebook, convert it to Markdown.

nbdev_readme needs Quarto, which is not installable everywhere; this does the same job with nbconvert.
Run from the repository root: `python .ci/readme.py`.
"""
import re
from pathlib import Path

import nbformat
from nbconvert import MarkdownExporter
from nbconvert.preprocessors import ExecutePreprocessor

root = Path(__file__).resolve().parents[1]
nb = nbformat.read(root / "nbs" / "index.ipynb", as_version=4)
ExecutePreprocessor(timeout=600, kernel_name="python3").preprocess(nb, {"metadata": {"path": str(root / "nbs")}})
for cell in nb.cells:  # nbdev directives (#| ...) are for nbdev, not for readers
    if cell.cell_type == "code":
        cell.source = "\n".join(l for l in cell.source.splitlines() if not l.startswith("#|"))
body, _ = MarkdownExporter(exclude_input_prompt=True, exclude_output_prompt=True).from_notebook_node(nb)
body = re.sub(r"\n{3,}", "\n\n", body).strip() + "\n"
note = "<!-- Generated from nbs/index.ipynb by .ci/readme.py: edit the notebook, not this file. -->\n\n"
(root / "README.md").write_text(note + body, encoding="utf-8")
print("wrote README.md")
