"""The shape of the library, checked by parsing it: no import circle (imports inside functions
count), no function over 60 lines, no private name used across modules, and every module saying
where it runs (driver, executors or Horovod ranks)."""
import ast
import re
from pathlib import Path

import lesionspark

PACKAGE = Path(lesionspark.__file__).parent
MODULES = {".".join(p.relative_to(PACKAGE).with_suffix("").parts): ast.parse(p.read_text(), str(p))
           for p in sorted(PACKAGE.rglob("*.py"))}
MAX_LINES = 60
# The layers, lowest first: a module imports only from its own package and from packages below it.
# The stage packages sit side by side and do not import one another; the top-level modules (cli,
# pipeline, exitcodes) may import anything.
LAYERS = [("core",), ("store",), ("dataset",), ("imaging",), ("modeling",), ("inference",), ("sql",),
          ("ingest", "balance", "train", "score", "evaluate", "explain")]


def package_of(module: str) -> str:
    return module.split(".")[0] if "." in module else ""


def layer(package: str) -> int:
    return next((i for i, names in enumerate(LAYERS) if package in names), len(LAYERS))


def resolve(module: str, level: int, name: str | None) -> str:
    """The qualified module (``store.storage``) of a relative import in ``module``."""
    parts = module.split(".")
    is_init = parts[-1] == "__init__"
    base = parts[:-1] if not is_init else parts[:-1]
    base = base[:len(base) - (level - 1)] if level > 1 else base
    return ".".join(base + ([name] if name else []))


def imports(tree: ast.Module, module: str = "") -> list[tuple[str, list[str]]]:
    """(imported lesionspark module, names taken from it), anywhere in the module."""
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                target = resolve(module, node.level, node.module)
            elif (node.module or "").startswith("lesionspark."):
                target = node.module.split(".", 1)[1]
            else:
                continue
            if target in MODULES or target + ".__init__" in MODULES and target not in PACKAGES:
                out.append((target, [a.name for a in node.names]))
            else:  # from .store import storage, lease
                out += [(f"{target}.{a.name}" if target else a.name, []) for a in node.names]
        elif isinstance(node, ast.Import):
            out += [(a.name.split(".", 1)[1], []) for a in node.names if a.name.startswith("lesionspark.")]
    return [(m, names) for m, names in out if m in MODULES]


PACKAGES = {m.rsplit(".", 1)[0] for m in MODULES if m.endswith(".__init__")}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module, or a module importing itself."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1 or v in graph[v]:
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_a_circle_hidden_inside_a_function_is_found():
    """A circle whose second import sits inside a function is still a circle."""
    driver = ast.parse("from .report import write_report\n")
    report = ast.parse("def markdown():\n    from .driver import scored\n")
    graph = {"evaluate.driver": {m for m, _ in imports(driver, "evaluate.driver")},
             "evaluate.report": {m for m, _ in imports(report, "evaluate.report")}}
    assert cycles(graph) == [["evaluate.driver", "evaluate.report"]]


def test_the_import_graph_has_no_circle():
    graph = {m: {dep for dep, _ in imports(tree, m) if dep != "__init__"} for m, tree in MODULES.items()}
    assert sum(len(v) for v in graph.values()) > 150  # the parse found the imports
    assert cycles(graph) == []


def test_no_import_runs_back_up_a_layer():
    """A module imports from its own package or a lower layer; no stage imports another stage."""
    up = [f"{m} imports {dep}" for m, tree in MODULES.items() for dep, _ in imports(tree, m)
          if package_of(m) and package_of(dep) != package_of(m) and layer(package_of(dep)) >= layer(package_of(m))]
    assert up == []


def test_the_layer_check_sees_a_stage_importing_another():
    tree = ast.parse("def f():\n    from ..score.driver import score\n")
    deps = [dep for dep, _ in imports(tree, "explain.driver")]
    assert deps == ["score.driver"] and layer("score") == layer("explain")


def test_every_stage_has_its_two_halves_by_name():
    for stage in LAYERS[-1]:
        assert {f"{stage}.driver", f"{stage}.executor"} <= set(MODULES), stage


def test_no_function_is_over_60_lines():
    long = [f"{m}.{n.name} {n.end_lineno - n.lineno + 1}" for m, tree in MODULES.items() for n in ast.walk(tree)
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.end_lineno - n.lineno + 1 > MAX_LINES]
    assert long == []


def test_no_private_name_is_used_outside_its_module():
    used = [f"{m} takes {dep}.{name}" for m, tree in MODULES.items() for dep, names in imports(tree, m)
            for name in names if name.startswith("_") and dep != m]
    assert used == []
    src = "\n".join(p.read_text() for p in PACKAGE.rglob("*.py"))
    assert "_parse_datatype_string" not in src  # pyspark's private parser


def test_every_module_says_where_it_runs():
    words = re.compile(r"\b(driver|executors?|Horovod ranks?|ranks|wherever|everywhere)\b", re.I)
    silent = [m for m, tree in MODULES.items() if not m.endswith("__init__") and not words.search(ast.get_docstring(tree) or "")]
    assert silent == []


def test_the_code_passes_the_linter():
    """ruff (pinned in requirements/lock.txt) with the project's settings (pyproject.toml: E, F, W at
    the code's width of 130)."""
    import subprocess
    import sys
    from pathlib import Path
    ruff = Path(sys.executable).parent / "ruff"
    assert ruff.exists(), "ruff is not installed: scripts/setup.sh installs requirements/lock.txt"
    out = subprocess.run([str(ruff), "check", "--output-format", "concise", "."], cwd=Path(__file__).resolve().parents[1],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout[-3000:]


ROOT_FOLDERS = {"datasets", "balanced", "models", "runs", "tables", "_staging", "_lease", "reports", "explanations"}


def test_every_path_under_the_root_comes_from_the_layout():
    """``store.layout.Layout`` names every folder of a storage root: no other module joins them."""
    built = [f"{m}:{n.lineno}" for m, tree in MODULES.items() if m != "store.layout" for n in ast.walk(tree)
             if isinstance(n, ast.Call) and getattr(n.func, "attr", getattr(n.func, "id", "")) == "join"
             and any(isinstance(a, ast.Constant) and a.value in ROOT_FOLDERS for a in n.args)]
    assert built == []
