"List every place a chapter (notebook or its exported module) uses a later chapter."
import ast, json, re, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

def chapters():
    "module -> (number, notebook name) from each notebook's `#| default_exp`."
    out = {}
    for nb in sorted((ROOT / "nbs").glob("*.ipynb")):
        for c in json.loads(nb.read_text())["cells"]:
            src = "".join(c["source"])
            if c["cell_type"] == "code" and src.startswith("#| default_exp "):
                out[src.split()[2]] = (nb.stem.split("_")[0], nb.name)
    return out

def imported(src, mods):
    found = set()
    try: tree = ast.parse(src)
    except SyntaxError: return found
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1: found |= {node.module.split(".")[0]} if node.module else {a.name for a in node.names}
            elif node.module == "ignore_attn": found |= {a.name for a in node.names}
            elif node.module and node.module.startswith("ignore_attn."): found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("ignore_attn.")}
    return found & set(mods)

def cell_code(src):
    return "\n".join(l for l in src.splitlines() if not l.lstrip().startswith(("%", "!")))

def violations():
    ch = chapters()
    out = []
    for mod, (num, nbname) in ch.items():
        p = ROOT / "ignore_attn" / f"{mod}.py"
        for dep in sorted(imported(p.read_text(), ch)):
            if ch[dep][0] > num: out.append(f"module {mod} ({num}) imports {dep} ({ch[dep][0]})")
    for nb in sorted((ROOT / "nbs").glob("*.ipynb")):
        num = nb.stem.split("_")[0]
        if not num[:2].isdigit(): continue
        for i, c in enumerate(json.loads(nb.read_text())["cells"]):
            if c["cell_type"] != "code": continue
            for dep in sorted(imported(cell_code("".join(c["source"])), ch)):
                if ch[dep][0] > num: out.append(f"notebook {nb.name} cell {i} ({c.get('id')}) imports {dep} ({ch[dep][0]})")
    return out

if __name__ == "__main__":
    v = violations()
    print("\n".join(v)); print(len(v), "violations")
