"The book's layout: one notebook per module, and no module that imports a module importing it back."
import ast
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LIB = ROOT / "ignore_attn"
MODULES = sorted(p.stem for p in LIB.glob("*.py") if p.stem not in ("__init__", "_modidx"))


def imports_of(module: str) -> set[str]:
    "The ignore_attn modules `module` imports anywhere in its source (top level or inside functions)."
    found = set()
    for node in ast.walk(ast.parse((LIB / f"{module}.py").read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1: found |= {node.module.split(".")[0]} if node.module else {a.name for a in node.names}
            elif node.module == "ignore_attn": found |= {a.name for a in node.names}
            elif node.module and node.module.startswith("ignore_attn."): found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("ignore_attn.")}
    return found & set(MODULES)


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
