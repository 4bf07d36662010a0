"""The exit codes of ``lesionspark <stage>`` and ``spark-submit jobs/<stage>.py``, built from the
exceptions that carry them: the CLI's ``--help``, the README and the jobs show this one table.
Runs on the driver."""
from __future__ import annotations


def table() -> list[tuple[int, str]]:
    """(code, meaning) in order: 0 and 1 by convention, the rest from each exception's ``exit_code``
    and the first sentence of its docstring."""
    from .core.config import ConfigError
    from .score.driver import DriftAlert, ScoreFenced, ScoreLocked
    from .core.signals import Terminated
    rows = [(0, "done"), (1, "the stage failed (the log has the error and its trace)"),
            (2, "bad arguments or configuration, a missing input, or an input or root refused "
                f"({ConfigError.__name__} and its kinds: the message says which)")]
    for exc in (DriftAlert, ScoreFenced, ScoreLocked, Terminated):
        first = " ".join((exc.__doc__ or "").split()).split(": exit", 1)[0].replace("``", "`")
        rows.append((exc.exit_code, f"{first} ({exc.__name__})"))
    return sorted(rows)


def text() -> str:
    return "exit codes:\n" + "\n".join(f"  {code:>3}  {meaning}" for code, meaning in table())


def markdown() -> str:
    return "| exit code | meaning |\n| ---: | --- |\n" + "\n".join(f"| {c} | {m} |" for c, m in table())
