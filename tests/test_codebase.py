"""The shape of the library, checked by parsing it: no import circle (imports inside functions
count), no function over 60 lines, no private name used across modules, and every module saying
where it runs (driver, executors or Horovod ranks)."""
import ast
import re
from pathlib import Path

import lesionspark

PACKAGE = Path(lesionspark.__file__).parent
MODULES = {p.stem: ast.parse(p.read_text(), str(p)) for p in sorted(PACKAGE.glob("*.py"))}
MAX_LINES = 60


def imports(tree: ast.Module) -> list[tuple[str, list[str]]]:
    """(imported lesionspark module, names taken from it), anywhere in the module."""
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1 and node.module:
                out.append((node.module.split(".")[0], [a.name for a in node.names]))
            elif node.level == 1:  # from . import storage, calibration
                out += [(a.name, []) for a in node.names]
            elif (node.module or "").startswith("lesionspark."):
                out.append((node.module.split(".")[1], [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            out += [(a.name.split(".")[1], []) for a in node.names if a.name.startswith("lesionspark.")]
    return [(m, names) for m, names in out if m in MODULES]


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
    """evaluate <-> report as it once was: report's import of evaluate sat inside a function."""
    evaluate = ast.parse("from .report import write_report\n")
    report = ast.parse("def markdown():\n    from .evaluate import scored\n")
    graph = {"evaluate": {m for m, _ in imports(evaluate)}, "report": {m for m, _ in imports(report)}}
    assert cycles(graph) == [["evaluate", "report"]]


def test_the_import_graph_has_no_circle():
    graph = {m: {dep for dep, _ in imports(tree) if dep != "__init__"} for m, tree in MODULES.items()}
    assert sum(len(v) for v in graph.values()) > 60  # the parse found the imports
    assert cycles(graph) == []


def test_no_function_is_over_60_lines():
    long = [f"{m}.{n.name} {n.end_lineno - n.lineno + 1}" for m, tree in MODULES.items() for n in ast.walk(tree)
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.end_lineno - n.lineno + 1 > MAX_LINES]
    assert long == []


def test_no_private_name_is_used_outside_its_module():
    used = [f"{m} takes {dep}.{name}" for m, tree in MODULES.items() for dep, names in imports(tree)
            for name in names if name.startswith("_") and dep != m]
    assert used == []
    src = "\n".join((PACKAGE / f"{m}.py").read_text() for m in MODULES)
    assert "_parse_datatype_string" not in src  # pyspark's private parser


def test_every_module_says_where_it_runs():
    words = re.compile(r"\b(driver|executors?|Horovod ranks?|ranks|wherever|everywhere)\b", re.I)
    silent = [m for m, tree in MODULES.items() if m != "__init__" and not words.search(ast.get_docstring(tree) or "")]
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
