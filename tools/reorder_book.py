"""Put the book's chapters in reading order (issue 21, section 1) and give things names that say what they are (section 4).

The mechanical part of branch `order`, written to be re-run on a merged checkout: notebook renames (`git mv`),
new chapters (`rundir`, `sweeps`), cells moved whole by cell id, imports rewritten to where each name now lives,
and renamed names. Run from the repository root, then `nbdev_export && nbdev_clean`; MOVES.md lists the hand edits.
Running it twice changes nothing the second time.
"""
from __future__ import annotations
import ast, json, re, subprocess, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NBS = ROOT / "nbs"

# old notebook -> new notebook. Part I: the paper (00-13); Part II: the machinery (14-23).
RENAMES = {
    "20_flops.ipynb": "09_flops.ipynb",          # the cost of every backbone, NTU included: after the backbones
    "09_train.ipynb": "10_train.ipynb",
    "10_experiments.ipynb": "11_experiments.ipynb",
    "10b_stats.ipynb": "12_stats.ipynb",         # another branch's chapter: statistics for the analysis
    "11_analysis.ipynb": "13_analysis.ipynb",
    # 14_rundir.ipynb: new, cut from the engine
    "13_engine.ipynb": "15_engine.ipynb",
    # 16_sweeps.ipynb: new, cut from the experiments
    "16_performance.ipynb": "17_performance.ipynb",
    "12_report.ipynb": "18_report.ipynb",
    "15_book.ipynb": "19_book.ipynb",
    "18_export.ipynb": "20_export.ipynb",
    "17_timm.ipynb": "21_timm.ipynb",
    "19_tracking.ipynb": "22_tracking.ipynb",
    "14_cli.ipynb": "23_cli.ipynb",
}

# New chapters: notebook -> (module, title, one-line summary, the cell whose export imports it starts from, what its
# examples import).
NEW = {
    "14_rundir.ipynb": ("rundir", "# The run folder",
                        "> What lets a run be killed at any moment and started again: files replaced in one step, "
                        "checkpoints that say when they are damaged, one process per run folder (a lock with a "
                        "heartbeat), and the folder itself: its config, history and metrics.",
                        "b6243d26", "import tempfile\nfrom ignore_attn.data import DataConfig\n"
                        "from ignore_attn.train import TrainConfig, config_to_dict, resolve_config"),
    "16_sweeps.ipynb": ("sweeps", "# Running sweeps",
                        "> How the runs of `11_experiments` are executed: each run a papermill execution of "
                        "`nbs/experiments/train.ipynb` in its own folder; resumable, fault-tolerant, and spread over "
                        "processes, GPUs or a Dask cluster.",
                        "0ad47c0b", "import tempfile"),
}

# Cells moved whole, in this order: (cell ids, to notebook, after cell id or None for the end).
MOVES = [
    # the engine's files, locks and run folder -> rundir (Part II), in their order
    (["a8865fa6", "48788e11", "a34940cf", "7c1e0a01", "7c1e0a02", "47778066", "7c1e0a03",
      "180b189e", "ff670525", "8e1813b7", "d14fe923", "4366ac9b"], "14_rundir.ipynb", None),
    # the train() entry point and what it needs (it writes run folders) -> the engine, after one epoch/evaluation
    (["0f1269a9", "33f3a07b", "ed25f710", "d5e6efb5", "2c387ded", "4336e179", "be1252c1", "e6f787f0",
      "8b8c6e55", "0df7183a"], "15_engine.ipynb", "ebca19a4"),
    # running sweeps -> sweeps (Part II)
    (["5fc880dc", "be5c71d4", "79bc657b", "05017881", "af625924", "835c843f", "06ea99b1", "ffd9fc6d", "a01dc6fc",
      "2504aec4", "d84918e5", "28e427df", "0670444e", "707fe4e8", "8707e205", "33d2d082", "013064c3",
      "a650a5a6", "30afb580", "82c20e45", "27bcf804"], "16_sweeps.ipynb", None),
    # `ignore-attn reproduce`: a sweep, then the report and the book -> the command line, which comes last
    (["a7f0bd9f", "c6146db7"], "23_cli.ipynb", "dcc97458"),   # before `main` and the `__main__` cell that runs it
    # the learnability check trains on normalised digits (data's norm_stats): it reads after the data chapter
    (["b766f952", "ed35a4a9", "07f93670"], "06_data.ipynb", None),
    # the backbones' multiply-adds table needs the counter: it moves to the cost chapter, after its imports
    (["60a40494", "3a8ff2d6", "6f8f01ab", "a3e86cd1", "5d275005", "0f5c2435"], "09_flops.ipynb", "8c238a82"),
    # the analysis checked on runs it trained itself (setup_run, train): machinery, after the whole run in the engine
    (["2499ead7", "f2904992", "0c1a2fd5", "b212e705", "1cad999a", "9be4ab30", "b55a21f7", "f42fd94e"],
     "15_engine.ipynb", "5d2a234e"),
]

# Modules whose names moved: an import of a moved name from one of them is rewritten to the name's new module.
SPLIT = ("train", "engine", "experiments")
# The modules of the moved code, in chapter order: their import cells are recomputed.
CORE = ("train", "experiments", "rundir", "engine", "sweeps", "cli")

# Renamed names: (regex, replacement, files it applies to: a glob under the root, or None for all).
NAME_RENAMES = [
    (r"\bcount_flops\b", "count_madds", None),            # it returns multiply-adds, not FLOPs
    (r"\b_unwrap\(state\b", "_state_dict_of(state", "nbs/03_registry.ipynb"),  # registry's: a state dict out of a checkpoint
    (r"\b_unwrap\(source\b", "_state_dict_of(source", "nbs/03_registry.ipynb"),
    (r"\bRun\b(?! [a-z`(])", "SweepRun", "nbs/1[16]_*.ipynb"),  # a sweep's run (experiments, sweeps)
    (r"\bRun\b(?! [a-z`(])", "PreparedRun", "nbs/15_engine.ipynb"),  # the trainer's prepared run
    (r"\bRun\.history\b", "PreparedRun.history", "nbs/22_tracking.ipynb"),
    (r"ignore_attn/engine\.py", "ignore_attn/rundir.py", "tests/*.py"),
]

TEXT_FILES = ["nbs/*.ipynb", "nbs/experiments/*.ipynb", "tests/*.py", "benchmarks/*.py", "benchmarks/*.sh",
              "hubconf.py", ".ci/*.py", "nbs/_quarto.yml", "README.md", "settings.ini", "nbs/fixtures/*/README.md"]


def new_id(*parts: str) -> str:
    "A cell id that is the same every time the script runs."
    import hashlib
    return hashlib.sha1("/".join(parts).encode()).hexdigest()[:8]


def read(nb: Path) -> dict: return json.loads(nb.read_text())
def write(nb: Path, d: dict) -> None: nb.write_text(json.dumps(d, indent=1, ensure_ascii=False) + "\n")
def src(c) -> str: return "".join(c["source"]) if isinstance(c["source"], list) else c["source"]
def set_src(c, s: str) -> None: c["source"] = s.splitlines(keepends=True)


def code(s: str, cid: str) -> dict:
    return {"cell_type": "code", "execution_count": None, "id": cid, "metadata": {}, "outputs": [],
            "source": s.splitlines(keepends=True)}


def md(s: str, cid: str) -> dict: return {"cell_type": "markdown", "id": cid, "metadata": {}, "source": s.splitlines(keepends=True)}


def rename_notebooks() -> None:
    for old, new in RENAMES.items():
        if (NBS / old).exists() and not (NBS / new).exists():
            subprocess.run(["git", "mv", f"nbs/{old}", f"nbs/{new}"], cwd=ROOT, check=True)
    m = NBS / ".book.json"
    if m.exists():   # rename keys only: the coordinator re-executes the book
        d = read(m)
        d["notebooks"] = {RENAMES.get(k, k): v for k, v in d["notebooks"].items()}
        write(m, d)


def all_cells() -> dict[str, tuple[Path, dict]]:
    return {c["id"]: (nb, c) for nb in sorted(NBS.glob("*.ipynb")) for c in read(nb)["cells"] if "id" in c}


def create_new_chapters() -> None:
    cells = all_cells()
    for name, (module, title, summary, imports_from, example_imports) in NEW.items():
        p = NBS / name
        if p.exists(): continue
        template = read(ROOT / "nbs" / "00_flip.ipynb")
        imports = src(cells[imports_from][1])
        nb = dict(template, cells=[
            md(f"{title}\n\n{summary}", new_id(name, "title")),
            code(f"#| default_exp {module}", new_id(name, "default_exp")),
            code("#| hide\nfrom nbdev.showdoc import show_doc\nfrom fastcore.test import test_eq, test_close, test_fail",
                 new_id(name, "hide")),
            code(imports, new_id(name, "imports")),
            code("#| hide\n" + example_imports, new_id(name, "examples")),
        ] + ([code("#| hide\ntorch.set_num_threads(1)  # the book's kernels share a small machine", new_id(name, "threads"))]
             if "torch" in imports else []) + [
        ])
        write(p, nb)


def move_cells() -> None:
    for ids, to, after in MOVES:
        cells = all_cells()
        order = [c.get("id") for c in read(NBS / to)["cells"]] if (NBS / to).exists() else []
        if all(i in order for i in ids):   # already moved: in this order, the first right after `after`
            at = [order.index(i) for i in ids]
            if at == sorted(at) and (after is None or order.index(after) + 1 == at[0]): continue
        moving = []
        for cid in ids:
            if cid not in cells: print(f"cell {cid} not found: skipped"); continue
            nb_path, _ = cells[cid]
            nb = read(nb_path)
            moving += [c for c in nb["cells"] if c.get("id") == cid]
            nb["cells"] = [c for c in nb["cells"] if c.get("id") != cid]
            write(nb_path, nb)
        target = read(NBS / to)
        at = len(target["cells"]) if after is None else next(i for i, c in enumerate(target["cells"]) if c.get("id") == after) + 1
        target["cells"][at:at] = moving
        write(NBS / to, target)


def exported(nb: Path) -> list[str]:
    return [src(c) for c in read(nb)["cells"] if c["cell_type"] == "code" and src(c).lstrip().startswith("#| export")]


def module_of(nb: Path) -> str | None:
    for c in read(nb)["cells"]:
        if c["cell_type"] == "code" and src(c).startswith("#| default_exp "): return src(c).split()[2]


def defined(sources: list[str]) -> set[str]:
    "Top-level names the exported cells define."
    out = set()
    for s in sources:
        try: tree = ast.parse(s)
        except SyntaxError: continue
        for node in tree.body:
            if isinstance(node, (ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef)): out.add(node.name)
            elif isinstance(node, ast.Assign): out |= {t.id for t in node.targets if isinstance(t, ast.Name)}
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name): out.add(node.target.id)
    return out


def used(sources: list[str]) -> set[str]:
    out = set()
    for s in sources:
        try: tree = ast.parse(s)
        except SyntaxError: continue
        out |= {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
        out |= {n.value.id for n in ast.walk(tree) if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name)}
    return out


def homes() -> dict[str, dict]:
    "module -> {notebook, defines}."
    out = {}
    for nb in sorted(NBS.glob("*.ipynb")):
        m = module_of(nb)
        if m: out[m] = {"nb": nb, "defines": defined(exported(nb))}
    return out


DROP = "\x00drop this line\x00"   # an import whose every name the notebook now defines itself
_IMPORT = re.compile(r"^(?P<indent>[ \t]*)from (?P<prefix>ignore_attn\.|\.)(?P<mod>\w+) import "
                     r"(?P<names>\([^)]*\)|[^\n]*)(?P<tail>[^\n]*)$", re.M)


def _names(text: str) -> tuple[list[str], str]:
    "The names of an import list and its trailing comment."
    comment = ""
    if not text.startswith("("):
        text, _, comment = text.partition("#")
    else:
        text = re.sub(r"#[^\n]*", "", text)
    names = [n.strip() for n in text.strip("() \n").replace("\n", " ").split(",") if n.strip()]
    return names, ("#" + comment).rstrip() if comment else ""


def _format(indent: str, prefix: str, mod: str, names: list[str], comment: str, width: int = 116) -> str:
    head = f"{indent}from {prefix}{mod} import "
    line = head + ", ".join(names)
    if len(line) <= width: return line + (f"  {comment.strip()}" if comment else "")
    out, cur = [], head + "("
    for i, n in enumerate(names):
        piece = n + (", " if i < len(names) - 1 else ")")
        if len(cur) + len(piece.rstrip()) > width and cur.strip() not in (head.strip() + "(",):
            out.append(cur.rstrip()); cur = " " * len(head + "(") + piece
        else: cur += piece
    out.append(cur)
    return "\n".join(out) + (f"  {comment.strip()}" if comment else "")


def rewrite_imports(text: str, where: dict[str, str], own: dict[str, set], self_mod: str | None = None) -> str:
    "Point each `from ignore_attn.<split module> import name` at the module that now defines `name`."
    def fix(m):
        mod = m["mod"]
        if mod not in SPLIT: return m.group(0)
        if m["names"].startswith("("): names, comment = _names(m["names"])[0], m["tail"].strip()
        else: names, comment = _names(m["names"])
        groups: dict[str, list[str]] = {}
        for n in names:
            base = n.split(" as ")[0].strip()
            target = mod if base in own.get(mod, set()) else where.get(base, mod)
            if target == self_mod and target != mod: continue   # the notebook defines it itself now
            groups.setdefault(target, []).append(n)
        if list(groups) == [mod] and len(groups[mod]) == len(names): return m.group(0)
        if not groups: return DROP
        return "\n".join(_format(m["indent"], m["prefix"], t, ns, comment if i == 0 else "")
                         for i, (t, ns) in enumerate(groups.items()))
    out = _IMPORT.sub(fix, text)
    return re.sub(r"^" + DROP + r"\n?", "", out, flags=re.M) if DROP in out else out


def rewrite_dotted(text: str, where: dict[str, str], own: dict[str, set]) -> str:
    "`ignore_attn.train.RunDir` in prose and strings -> `ignore_attn.rundir.RunDir`."
    def fix(m):
        mod, name = m[1], m[2]
        if mod in SPLIT and name not in own.get(mod, set()) and name in where: return f"ignore_attn.{where[name]}.{name}"
        return m.group(0)
    return re.sub(r"ignore_attn\.(\w+)\.(\w+)", fix, text)


def files() -> list[Path]:
    out = []
    for g in TEXT_FILES: out += sorted(ROOT.glob(g))
    return [p for p in out if p.is_file()]


def rewrite_everywhere() -> None:
    h = homes()
    own = {m: v["defines"] for m, v in h.items()}
    where = {}
    for m in CORE:
        for n in own.get(m, ()): where.setdefault(n, m)
    old_names = {re.escape(Path(o).stem): Path(n).stem for o, n in RENAMES.items()}
    nb_name = re.compile(r"(?<!\w)(" + "|".join(old_names) + r")(?![\w-])")
    for p in files():
        is_nb = p.suffix == ".ipynb"
        text = p.read_text()
        def fix_text(s: str, code: bool, self_mod: str | None = None) -> str:
            if code: s = rewrite_imports(s, where, own, self_mod)
            s = rewrite_dotted(s, where, own)
            return s
        if is_nb:
            nb = json.loads(text)
            self_mod = module_of(p)
            for c in nb["cells"]:
                s = src(c); new = fix_text(s, c["cell_type"] == "code", self_mod)
                if new != s: set_src(c, new)
            new_text = json.dumps(nb, indent=1, ensure_ascii=False) + "\n"
        else:
            new_text = fix_text(text, p.suffix == ".py")
        new_text = nb_name.sub(lambda m: old_names[m[1]], new_text)   # chapter names: 09_train -> 10_train
        for pattern, repl, glob in NAME_RENAMES:
            if glob is None or p in set(ROOT.glob(glob)): new_text = re.sub(pattern, repl, new_text)
        if new_text != text: p.write_text(new_text)


def chapter(nb: Path) -> str: return nb.stem.split("_")[0]


def bound_by_imports(sources: list[str]) -> set[str]:
    "Names the cells bind by an import statement anywhere (a lazy import inside a function stays lazy)."
    out = set()
    for s in sources:
        try: tree = ast.parse(s)
        except SyntaxError: continue
        for n in ast.walk(tree):
            if isinstance(n, (ast.Import, ast.ImportFrom)): out |= {(a.asname or a.name).split(".")[0] for a in n.names}
    return out


def fix_core_imports() -> None:
    """The import cell of each module of the moved code imports, from earlier chapters, what its cells use: imports of
    the core modules are recomputed, other imports are kept and only missing names added."""
    h = homes()
    for mod in CORE:
        if mod not in h: continue
        nb_path = h[mod]["nb"]
        nb = read(nb_path)
        exports = [c for c in nb["cells"] if c["cell_type"] == "code" and src(c).lstrip().startswith("#| export")]
        head, body = exports[0], [src(c) for c in exports[1:]]
        kept, skip = [], False
        for l in src(head).splitlines():   # drop the old top-level imports of the core modules: recomputed below
            if skip:
                skip = not l.rstrip().endswith(")"); continue
            m = re.match(r"from (?:ignore_attn\.|\.)(\w+) import (\(?)", l)
            if m and m[1] in CORE:
                skip = bool(m[2]) and not l.rstrip().endswith(")"); continue
            kept.append(l)
        provided = bound_by_imports(["\n".join(kept)])
        needed = used(body) - h[mod]["defines"] - bound_by_imports(body) - provided
        add = []
        earlier = sorted((m for m in h if chapter(h[m]["nb"]) < chapter(nb_path)), key=lambda m: chapter(h[m]["nb"]))
        for other in earlier:
            names = sorted(h[other]["defines"] & needed, key=lambda n: (not n[0].isupper(), n.lower()))
            needed -= set(names)
            if names: add.append(_format("", "ignore_attn.", other, names, ""))
        if "ignore_attn" in needed: add.insert(0, "import ignore_attn")
        new = "\n".join(kept + add)
        if new != src(head): set_src(head, new); write(nb_path, nb)


# Long export cells cut where a reader wants a sentence: cell id -> [(line the piece starts with (None: before the
# first piece), the sentence before it)]. The first piece keeps the cell's id.
SPLITS = {
    "ed25f710": [   # was 09_train cell 26: 160 lines, 10 functions
        ("def _prepare_folder(", "Once the run holds its folder's lock, `_prepare_folder` writes `split.json` and then `config.json`, "
         "whose presence marks an initialised run. `_repair_best` rebuilds a finished run's lost or damaged `best.pt` "
         "from the best weights that `last.pt` keeps."),
        ("def model_options(", "The network is built from the config alone (`model_options`). An NTU model's streams may start from "
         "checkpoints: a path that is not a file fails before any data is read, and `config.json` records each file's "
         "SHA-1 and what was loaded from it."),
        ("def _resume(", "A run that resumes loads `last.pt` (weights, optimiser, history, best epoch, random state) and mends "
         "what a kill between two writes can leave behind: a `best.pt` or a `history.csv` one epoch behind."),
        ("def train(", "`train(cfg)` is the one entry point: it prepares the run (`setup_run`) and fits it, or, for a folder "
         "that holds a finished run, reports its metrics."),
    ],
    "7c1e0a02": [   # was 13_engine cell 16: 171 lines
        (None, "A pid alone does not name a process: the system gives it to another one later. `process_identity` adds "
         "the host, the start time and the command line, and `is_same_process` checks all of them."),
        ("def is_fresh(", "Across hosts a lock may not be visible (some NFS mounts). A file its holder touches every "
         "`HEARTBEAT_S` (a `Heartbeat`) stands in for it: it counts as held while `is_fresh`, until `STALE_AFTER_S` "
         "after the last touch."),
        ("def read_holder(", "The holder writes who it is into the lock file, so a refused command can say who holds the folder "
         "and since when (`describe_holder`, `RunLocked`)."),
        ("# Locks this process holds", "`RunLock` is the lock itself: a POSIX record lock held until `release` or the end of "
         "the process, with its holder's record inside. `lock_holder` tells who holds a lock file, if anyone."),
    ],
    "af625924": [   # was 10_experiments cell 28: 143 lines
        (None, "A run executes `nbs/experiments/train.ipynb`, or `ntu.ipynb` for NTU RGB+D (`notebook_for`)."),
        ("# The runs this process is executing", "The runner keeps the runs it executes in a table, with their sweep and "
         "their kernel, so that Ctrl-C (`stop_runs`) kills the kernels of its own sweep and starts no more of its runs."),
        ("def _inside(", "Three small guards: a run folder must lie inside the sweep's output, a failure lands in "
         "`error.txt`, and a kernel's CPU threads can be capped (`thread_env`)."),
        ("def execute_run(", "`execute_run` runs one run: it takes the run's runner lock and looks again under it (done "
         "meanwhile, or running elsewhere: skipped), then executes the notebook with papermill in the run folder, "
         "heartbeating `running.json` while it lasts."),
    ],
}

# Argument checks that opened a chapter before its idea: hidden (still exported) right after the imports.
HIDE = {"01_attention.ipynb": {"cells": ["973593e1", "d781a84a"], "after": "400c22c7",
                               "markdown_to_comment": {"226b7fbe": "d781a84a"}}}

# Chapters whose public functions and classes get a `show_doc` entry after the cell that defines them.
SHOW_DOC = ("10_train.ipynb", "14_rundir.ipynb", "15_engine.ipynb", "13_analysis.ipynb")


def split_cells() -> None:
    for nb_path in sorted(NBS.glob("*.ipynb")):
        nb = read(nb_path); changed = False
        have = {c.get("id") for c in nb["cells"]}
        out = []
        for c in nb["cells"]:
            cuts = SPLITS.get(c.get("id"))
            if not cuts or new_id(c["id"], "piece", "0") in have: out.append(c); continue   # not here, or cut already
            lines = src(c).splitlines(keepends=True)
            starts = []
            for marker, sentence in cuts:
                if marker is None: starts.append((None, sentence)); continue
                i = next((k for k, l in enumerate(lines) if l.startswith(marker)), None)
                if i is None: print(f"{c['id']}: no line starts with {marker!r}: not cut there"); continue
                starts.append((i, sentence))
            bounds = [i for i, _ in starts if i is not None]
            pieces, prev = [], 0
            for b in bounds: pieces.append("".join(lines[prev:b]).rstrip("\n") + "\n"); prev = b
            pieces.append("".join(lines[prev:]))
            first_sentence = next((s for i, s in starts if i is None), None)
            if first_sentence: out.append(md(first_sentence, new_id(c["id"], "intro")))
            set_src(c, pieces[0].rstrip("\n")); out.append(c)
            for k, ((i, sentence), piece) in enumerate(zip([s for s in starts if s[0] is not None], pieces[1:])):
                out.append(md(sentence, new_id(c["id"], "text", str(k))))
                out.append(code("#| export\n" + piece.rstrip("\n"), new_id(c["id"], "piece", str(k))))
            changed = True
        if changed: nb["cells"] = out; write(nb_path, nb)


def hide_checks() -> None:
    for name, h in HIDE.items():
        p = NBS / name
        if not p.exists(): continue
        nb = read(p)
        by_id = {c.get("id"): c for c in nb["cells"]}
        if all(src(by_id[i]).startswith("#| hide") for i in h["cells"] if i in by_id): continue
        for md_id, code_id in h["markdown_to_comment"].items():
            if md_id in by_id and code_id in by_id:
                text = src(by_id[md_id]).strip().replace("\n", " ")
                body = src(by_id[code_id]).split("\n", 1)
                set_src(by_id[code_id], body[0] + "\n# " + text + "\n" + body[1])
                nb["cells"] = [c for c in nb["cells"] if c.get("id") != md_id]
        moving = [by_id[i] for i in h["cells"] if i in by_id]
        for c in moving: set_src(c, "#| hide\n" + src(c))
        nb["cells"] = [c for c in nb["cells"] if c.get("id") not in h["cells"]]
        at = next(k for k, c in enumerate(nb["cells"]) if c.get("id") == h["after"]) + 1
        nb["cells"][at:at] = moving
        write(p, nb)


def add_show_docs() -> None:
    for name in SHOW_DOC:
        p = NBS / name
        if not p.exists(): continue
        nb = read(p)
        text = "\n".join(src(c) for c in nb["cells"])
        out = []
        for c in nb["cells"]:
            out.append(c)
            s = src(c)
            if c["cell_type"] != "code" or not s.lstrip().startswith("#| export"): continue
            try: tree = ast.parse(s)
            except SyntaxError: continue
            for node in tree.body:
                if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and not node.name.startswith("_") \
                        and f"show_doc({node.name}" not in text:
                    out.append(code(f"show_doc({node.name})", new_id(name, "show_doc", node.name)))
        if len(out) != len(nb["cells"]): nb["cells"] = out; write(p, nb)


def prune_imports() -> None:
    "Drop from the import cell of each module of the moved code the names no cell of its notebook uses any more."
    h = homes()
    for mod in CORE:
        if mod not in h: continue
        nb = read(h[mod]["nb"])
        cells = [c for c in nb["cells"] if c["cell_type"] == "code"]
        head = next(c for c in cells if src(c).lstrip().startswith("#| export"))
        used = set()
        for c in cells:
            if c is head: continue
            code_ = "\n".join(l for l in src(c).splitlines() if not l.lstrip().startswith(("%", "!")))
            try: tree = ast.parse(code_)
            except SyntaxError: continue
            for n in ast.walk(tree):
                if isinstance(n, ast.Name): used.add(n.id)
        lines, out = src(head).splitlines(), []
        i = 0
        while i < len(lines):   # one statement at a time (a parenthesised import spans lines)
            stmt = lines[i]
            while stmt.count("(") > stmt.count(")") and i + 1 < len(lines): i += 1; stmt += "\n" + lines[i]
            i += 1
            try: node = ast.parse(stmt.split("#")[0] if "(" not in stmt else stmt).body
            except SyntaxError: out.append(stmt); continue
            if len(node) != 1 or not isinstance(node[0], (ast.Import, ast.ImportFrom)) or \
                    (isinstance(node[0], ast.ImportFrom) and node[0].module == "__future__"):
                out.append(stmt); continue
            n = node[0]
            keep = [a for a in n.names if (a.asname or a.name).split(".")[0] in used]
            if len(keep) == len(n.names): out.append(stmt); continue
            if not keep: continue
            comment = "  #" + stmt.split("#", 1)[1] if "#" in stmt and "(" not in stmt else ""
            names = [a.name + (f" as {a.asname}" if a.asname else "") for a in keep]
            if isinstance(n, ast.Import): out.append("import " + ", ".join(names) + comment)
            else: out.append(_format("", "." * n.level, n.module or "", names, comment.strip()))
        new = "\n".join(out)
        if new != src(head): set_src(head, new); write(h[mod]["nb"], nb)


def main() -> int:
    rename_notebooks()
    create_new_chapters()
    move_cells()
    rewrite_everywhere()
    fix_core_imports()
    split_cells()
    hide_checks()
    add_show_docs()
    prune_imports()
    return 0


if __name__ == "__main__":
    sys.exit(main())
