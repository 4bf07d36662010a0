"""Logging set-up and timed, counted log lines for long work.

Runs on the driver (log lines, Spark progress); ``PhaseClock`` accumulators are added to in executors
and ``quiet_library_warnings`` runs in ranks.
"""
from __future__ import annotations

import logging
import sys
import time
from contextlib import contextmanager


def _not_py4j_chatter(record: logging.LogRecord) -> bool:
    """py4j logs its own reconnects as INFO tracebacks (seen with Horovod on Spark): drop them."""
    return not ("/py4j/" in record.pathname and record.levelno < logging.WARNING)


def quiet_library_warnings() -> None:
    """Petastorm uses pyarrow's legacy dataset API, which warns on every dataset it opens: harmless
    with the pinned versions (docs/operations.md: Troubleshooting), and it would bury the progress lines."""
    import warnings
    warnings.filterwarnings("ignore", category=FutureWarning, module="petastorm")
    warnings.filterwarnings("ignore", category=FutureWarning, message=".*(ParquetDataset|pyarrow.localfs).*")


def setup_logging(level: str = "INFO") -> None:
    quiet_library_warnings()
    root = logging.getLogger()
    if not any(getattr(h, "_lesionspark", False) for h in root.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.addFilter(_not_py4j_chatter)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s",
                                               "%H:%M:%S"))
        handler._lesionspark = True
        root.addHandler(handler)
    root.setLevel(level)
    for noisy in ("py4j", "petastorm", "pyarrow", "tensorflow", "absl"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


class Step:
    """``with timed(log, 'decode') as step: ...; step.count = n`` logs duration and rate."""

    def __init__(self):
        self.count: int | None = None
        self.seconds = 0.0


@contextmanager
def timed(log: logging.Logger, what: str, unit: str = "img", spark=None):
    """With ``spark``, the step's Spark jobs carry ``what`` as their description (UI, event log)."""
    step = Step()
    log.info("%s ...", what)
    if spark is not None:
        spark.sparkContext.setJobDescription(what)
    start = time.perf_counter()
    try:
        yield step
    finally:
        if spark is not None:
            spark.sparkContext.setJobDescription(None)
    step.seconds = time.perf_counter() - start
    if step.count is not None and step.seconds > 0:
        log.info("%s: %d %s in %.1fs (%.1f %s/s)", what, step.count, unit, step.seconds,
                 step.count / step.seconds, unit)
    else:
        log.info("%s: done in %.1fs", what, step.seconds)


class PhaseClock:
    """Seconds spent inside Python workers, per phase, summed over tasks (a Spark accumulator).

    Driver: ``clock = PhaseClock(spark, ("read", "decode"))``; executors: ``clock.add(read=0.1)``;
    driver again, after the job: ``clock.summary()`` -> ``'read 12.0s, decode 40.1s'``."""

    def __init__(self, spark, phases: tuple[str, ...]):
        self.phases = tuple(phases)
        self._acc = spark.sparkContext.accumulator([0.0] * len(self.phases), _VectorParam())

    def add(self, **seconds: float) -> None:
        self._acc.add([float(seconds.get(p, 0.0)) for p in self.phases])

    def totals(self) -> dict[str, float]:
        return dict(zip(self.phases, self._acc.value))

    def summary(self) -> str:
        """Phases as seconds; a ``files`` phase is a count (``'files 9965, read 12.0s'``)."""
        return ", ".join(f"{p} {s:.0f}" if p == "files" else f"{p} {s:.1f}s" for p, s in self.totals().items())


try:
    from pyspark.accumulators import AccumulatorParam as _Param
except ImportError:  # progress is also imported where pyspark is not needed
    _Param = object


class _VectorParam(_Param):
    def zero(self, value):
        return [0.0] * len(value)

    def addInPlace(self, a, b):
        return [x + y for x, y in zip(a, b)]
