"""SIGTERM as an exception, so that a run stopped by a scheduler (a timeout, a kill) ends as one
that failed: its ``finally`` blocks run, score records the run as failed and releases the lease,
instead of leaving it ``running`` and held until a later run reaps it. Installed by the CLI (and
so by every ``jobs/*.py``), in the main thread of the driver."""
from __future__ import annotations

import signal


class Terminated(BaseException):
    """Stopped by SIGTERM (a scheduler's timeout or kill): score records the run as failed and
    releases the lease; 128 + 15, as a shell reports it: exit 143."""
    exit_code = 143


def _raise(signum, frame):
    raise Terminated(f"stopped by {signal.Signals(signum).name} (a scheduler's timeout or kill)")


def install() -> None:
    signal.signal(signal.SIGTERM, _raise)
