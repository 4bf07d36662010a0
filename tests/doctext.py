"""The product's documentation as one text (README.md and docs/*.md): where tests look for the
commands and SQL examples that the docs show."""
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def all_docs() -> str:
    """docs/*.md, then README.md: a query's full block is in the docs; the README quotes a part of it."""
    return "\n".join(p.read_text() for p in [*sorted((REPO / "docs").glob("*.md")), REPO / "README.md"])
