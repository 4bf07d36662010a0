"""The product's documentation as one text (README.md and docs/*.md): where tests look for the
commands and SQL examples that the docs show."""
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def all_docs() -> str:
    """docs/*.md, then README.md: a query's full block is in the docs; the README quotes a part of it."""
    return "\n".join(p.read_text() for p in [*sorted((REPO / "docs").glob("*.md")), REPO / "README.md"])


def morning_queries() -> list[str]:
    """The operator's morning queries, as docs/operations.md shows them (its first ```sql block after
    "Each morning"): one statement each, comments dropped."""
    text = (REPO / "docs" / "operations.md").read_text()
    block = text[text.index("```sql", text.index("Each morning")) + 6:]
    block = block[:block.index("```")]
    lines = [line for line in block.splitlines() if not line.strip().startswith("--")]
    return [q.strip() for q in "\n".join(lines).split(";") if q.strip()]
