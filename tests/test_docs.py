"""The docs stay true: every ``lesionspark`` and ``spark-submit jobs/...`` command shown in README.md
and docs/*.md names a real stage and real flags (the commands themselves run in the demo, the cluster
test and the stage tests); every job file and config file they name exists."""
import re
import shlex
from pathlib import Path

import pytest

from lesionspark.cli import build_parser
from lesionspark.core.config import Config

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), REPO / "docker" / "README.md"]


def _commands(text: str) -> list[str]:
    out = []
    for block in re.findall(r"```(?:bash|cron)\n(.*?)```", text, re.S):
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            line = line.split(" #")[0].strip()
            if re.search(r"(^|\s|/)lesionspark\s+[a-z]", line) or re.search(r"jobs/\w+\.py", line):
                out.append(line)
    return out


def _args(line: str) -> tuple[str, list[str]] | None:
    line = [part for part in line.split("&&") if "lesionspark " in part or "jobs/" in part][-1]
    line = re.split(r"\s[12]?>>?\s?", line)[0]              # shell redirections
    line = re.sub(r"\[[^\]]*\]", "", line)             # optional parts
    line = re.sub(r"<[^>]*>", "x", line)                # placeholders
    line = line.replace("$SUBMIT", "spark-submit")
    words = shlex.split(line.replace("...", ""))
    for i, w in enumerate(words):
        m = re.search(r"jobs/(\w+)\.py$", w)
        if m:
            return m.group(1), words[i + 1:]
        if w.endswith("lesionspark") and i + 1 < len(words) and not words[i + 1].startswith("-"):
            return words[i + 1], words[i + 2:]
    return None


def _all():
    return [(doc.name, line) for doc in DOCS for line in _commands(doc.read_text())]


@pytest.mark.parametrize("doc,line", _all())
def test_documented_command_parses(doc, line):
    parsed = _args(line)
    assert parsed, f"{doc}: cannot find the stage in {line!r}"
    stage, args = parsed
    assert stage == "demo" or (REPO / "jobs" / f"{stage}.py").exists(), f"{doc}: no jobs/{stage}.py for {line!r}"
    ns = build_parser().parse_args([stage, *args])
    assert ns.stage == stage
    for override in getattr(ns, "overrides", []):
        key = override.split("=", 1)[0]
        if not key.startswith(("spark.conf.", "model.params.", "balance.counts.")):
            Config.load().get(key)  # raises for a key that does not exist
    conf = getattr(ns, "conf", None)
    if conf:
        assert (REPO / conf).exists(), f"{doc}: {conf} does not exist"
        Config.load(str(REPO / conf))


def test_the_docs_show_every_stage():
    shown = {(_args(line) or ("?",))[0] for _, line in _all()}
    assert {"ingest", "balance", "train", "evaluate", "compare", "score", "sql", "serve", "pipeline", "demo"} <= shown


@pytest.mark.parametrize("job", sorted(p.stem for p in (REPO / "jobs").glob("*.py")))
def test_each_job_file_runs_its_own_stage(job):
    """A job is ``main([<its stage>, *sys.argv[1:]])`` and nothing else: the cluster test submits the
    pipeline, sql and compare jobs; the others are the same two lines with another stage name."""
    import ast
    tree = ast.parse((REPO / "jobs" / f"{job}.py").read_text())
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", None) == "main"]
    assert len(calls) == 1, job
    first = calls[0].args[0].elts[0]
    assert isinstance(first, ast.Constant) and first.value == job
    assert job in build_parser()._subparsers._group_actions[0].choices
    assert [type(n).__name__ for n in tree.body] == ["Expr", "Import", "ImportFrom", "If"], job


def test_the_readme_shows_the_exit_code_table_the_exceptions_make():
    from lesionspark.exitcodes import markdown
    assert markdown() in (REPO / "README.md").read_text()


def test_the_architecture_doc_names_every_module():
    """docs/architecture.md's module list names every module of the library by its path."""
    text = (REPO / "docs" / "architecture.md").read_text().split("## Modules", 1)[1]
    package = REPO / "lesionspark"
    modules = sorted(str(p.relative_to(package)) for p in package.rglob("*.py") if p.name != "__init__.py")
    assert len(modules) > 60
    assert [m for m in modules if f"`{m}`" not in text] == []


DIARY = re.compile(r"\b(?:[Ii]ssues? #?\d+|[Ss]ession \d+|developm[e]nt machine|this sandb[o]x|gVis[o]r|"
                   r"Firecrack[e]r)\b")
TEXT = (".py", ".md", ".yaml", ".yml", ".toml", ".sh", ".ipynb", ".txt", ".cfg")
SKIP = {".git", ".venv", "data", "__pycache__", "dist", "build", ".pytest_cache"}


def test_product_text_speaks_of_the_product():
    """No file says how the work was organised (issue or session numbers) or what it ran on."""
    found = []
    for p in sorted(REPO.rglob("*")):
        rel = p.relative_to(REPO)
        if p.is_file() and p.suffix in TEXT and not SKIP & set(rel.parts):
            found += [f"{rel}:{n}" for n, line in enumerate(p.read_text(errors="replace").splitlines(), 1)
                      if DIARY.search(line)]
    assert found == []


def test_every_section_the_code_cites_exists():
    """``docs/<file>.md, "<heading>"`` in the code, tests and docs names a heading of that file (a prefix)."""
    cited = re.compile(r'docs/([a-z]+)\.md`?, "([^"]+)"')
    missing = []
    for p in [*REPO.joinpath("lesionspark").rglob("*.py"), *REPO.joinpath("lesionspark").rglob("*.yaml"),
              *REPO.joinpath("tests").glob("*.py"), *DOCS]:
        for doc, heading in cited.findall(" ".join(p.read_text().split())):
            target = REPO / "docs" / f"{doc}.md"
            headings = [h.lstrip("#").strip() for h in target.read_text().splitlines() if h.startswith("#")] \
                if target.exists() else []
            if not any(h.startswith(heading) for h in headings):
                missing.append(f"{p.name}: {doc}.md \"{heading}\"")
    assert missing == []


def test_every_command_and_job_help_shows_the_exit_codes():
    from lesionspark.cli import build_parser
    from lesionspark.exitcodes import text
    commands = build_parser()._subparsers._group_actions[0].choices
    assert [name for name, p in commands.items() if text() not in p.format_help()] == []
