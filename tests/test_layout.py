"The book's layout: one notebook per module, and no module that imports a module importing it back."
import ast
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LIB = ROOT / "ignore_attn"
MODULES = sorted(p.stem for p in LIB.glob("*.py") if p.stem not in ("__init__", "_modidx"))


def imports_of(module: str) -> set[str]:
    "The ignore_attn modules `module` imports anywhere in its source (top level or inside functions)."
    return modules_imported((LIB / f"{module}.py").read_text()) & set(MODULES)


def test_no_import_cycles():
    graph = {m: imports_of(m) for m in MODULES}
    def path_back(start):
        "A chain of imports from `start` back to itself, or None."
        stack, seen = [(start, [start])], set()
        while stack:
            node, path = stack.pop()
            for dep in graph[node]:
                if dep == start: return path + [start]
                if dep not in seen: seen.add(dep); stack.append((dep, path + [dep]))
    cycles = [" -> ".join(p) for m in MODULES if (p := path_back(m))]
    assert not cycles, f"import cycles: {cycles}"


def test_every_module_comes_from_one_notebook():
    exported = {}
    for nb in sorted((ROOT / "nbs").glob("*.ipynb")):
        cells = json.loads(nb.read_text())["cells"]
        for c in cells:
            src = "".join(c["source"])
            if c["cell_type"] == "code" and src.startswith("#| default_exp "):
                exported.setdefault(src.split()[2], []).append(nb.name)
    assert {m: nbs for m, nbs in exported.items() if len(nbs) > 1} == {}
    assert sorted(exported) == MODULES, "modules without a notebook (or notebooks without their module)"


def chapter_of_module() -> dict[str, str]:
    "module -> the number of the chapter (notebook) that exports it, from each notebook's `#| default_exp`."
    out = {}
    for nb in sorted((ROOT / "nbs").glob("*.ipynb")):
        for c in json.loads(nb.read_text())["cells"]:
            src = "".join(c["source"])
            if c["cell_type"] == "code" and src.startswith("#| default_exp "): out[src.split()[2]] = nb.stem.split("_")[0]
    return out


def modules_imported(source: str) -> set[str]:
    "The ignore_attn modules a piece of code imports (IPython magics and shell lines skipped)."
    code = "\n".join(l for l in source.splitlines() if not l.lstrip().startswith(("%", "!")))
    found = set()
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1: found |= {node.module.split(".")[0]} if node.module else {a.name for a in node.names}
            elif node.module == "ignore_attn": found |= {a.name for a in node.names}
            elif node.module and node.module.startswith("ignore_attn."): found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("ignore_attn.")}
    return found


def later_chapters_used() -> list[str]:
    "Every place a chapter uses a later one: a module importing a later module, or a notebook cell importing one."
    chapter = chapter_of_module()
    out = [f"module {m} ({chapter[m]}) imports {d} ({chapter[d]})"
           for m in MODULES for d in sorted(imports_of(m)) if chapter[d] > chapter[m]]
    for nb in sorted((ROOT / "nbs").glob("[0-9]*.ipynb")):
        num = nb.stem.split("_")[0]
        for c in json.loads(nb.read_text())["cells"]:
            if c["cell_type"] != "code": continue
            for d in sorted(modules_imported("".join(c["source"])) & set(chapter)):
                if chapter[d] > num: out.append(f"{nb.name} cell {c.get('id')} imports {d} ({chapter[d]})")
    return out


def test_no_chapter_uses_a_later_one():
    "The book reads front to back: chapter k (its notebook and its module) imports only chapters before k."
    assert later_chapters_used() == []


def test_chapter_numbers_are_unique_and_every_module_has_one():
    chapter = chapter_of_module()
    assert sorted(chapter) == MODULES
    numbers = sorted(nb.stem.split("_")[0] for nb in (ROOT / "nbs").glob("[0-9]*.ipynb"))
    assert len(numbers) == len(set(numbers)), f"two chapters share a number: {numbers}"


def test_the_ordering_check_sees_a_later_import(tmp_path, monkeypatch):
    "The check itself: a notebook cell and a module that import a later chapter are both reported."
    assert modules_imported("from ignore_attn.cli import main\n%time x = 1") == {"cli"}
    assert modules_imported("from .engine import TrainStep\nimport ignore_attn.book") == {"engine", "book"}
    nbs, lib = tmp_path / "nbs", tmp_path / "ignore_attn"
    nbs.mkdir(); lib.mkdir()
    def notebook(name, module, cell):
        cells = [{"cell_type": "code", "id": "a", "source": [f"#| default_exp {module}"]},
                 {"cell_type": "code", "id": "b", "source": [cell]}]
        (nbs / name).write_text(json.dumps({"cells": cells}))
    notebook("00_first.ipynb", "first", "from ignore_attn.second import x")
    notebook("01_second.ipynb", "second", "from ignore_attn.first import y")
    (lib / "first.py").write_text("from .second import x\n")
    (lib / "second.py").write_text("from .first import y\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    monkeypatch.setattr(sys.modules[__name__], "LIB", lib)
    monkeypatch.setattr(sys.modules[__name__], "MODULES", ["first", "second"])
    assert later_chapters_used() == ["module first (00) imports second (01)", "00_first.ipynb cell b imports second (01)"]
