"""The ``score_runs`` table: one row per scoring run, whatever became of it (docs/contracts.md).

Each run's row is one Parquet file in ``tables/score_runs/run_id=<id>/``, written by pyarrow and
replaced atomically (a ``_tmp`` file renamed over it): ``waiting`` while it asks for the lease,
``running`` once it holds it, then ``succeeded`` or ``failed`` with the error, or ``fenced`` when it
lost the lease and stopped. A run that could not start because another held the root gets a
``locked`` row. The next run that holds the lease marks ``killed`` every row still ``running`` (no
other run can be) and every ``waiting`` row whose process is gone from this host; a ``running`` row
whose run had already moved rows into the tables becomes ``committed``.

Runs on the driver of a scoring run.
"""
from __future__ import annotations

import datetime as dt
import logging

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from . import storage
from .layout import Layout

from . import parquet

log = logging.getLogger(__name__)

_TS = pa.timestamp("us", tz="UTC")
SCHEMA = pa.schema([
    ("model", pa.string()), ("model_version", pa.string()), ("archive", pa.string()),
    ("started_at", _TS), ("finished_at", _TS), ("status", pa.string()), ("error", pa.string()),
    ("listed", pa.int64()), ("new_files", pa.int64()), ("read", pa.int64()), ("scored", pa.int64()),
    ("rejected", pa.int64()), ("skipped", pa.int64()), ("seconds", pa.float64()), ("images", pa.int64()),
    ("predicted_by_class", pa.map_(pa.string(), pa.int64())), ("mean_confidence", pa.float64()),
    ("low_confidence_share", pa.float64()), ("drift_psi", pa.float64()), ("drift_alert", pa.bool_()),
    ("flagged", pa.int64()), ("review_threshold", pa.float64()), ("threshold_source", pa.string()),
    ("host", pa.string()), ("pid", pa.int64()),
])


def table_uri(root: str) -> str:
    return Layout(root).table("score_runs")


def write(root: str, run_id: str, row: dict) -> None:
    """Write (or replace) the row of ``run_id``; keys missing from ``row`` are null."""
    data = {f.name: [row.get(f.name)] for f in SCHEMA}
    if data["predicted_by_class"][0] is not None:
        data["predicted_by_class"] = [list(data["predicted_by_class"][0].items())]
    table = pa.Table.from_pydict(data, schema=SCHEMA)
    storage.replace_file(f"{table_uri(root)}/run_id={run_id}/part-0.parquet", parquet.parquet_bytes(table))


def read(root: str) -> list[dict]:
    """Every run row, with its ``run_id`` (pyarrow; for the driver's own bookkeeping and tests)."""
    fs, base = storage.filesystem(table_uri(root))
    out = []
    for info in fs.get_file_info(pafs.FileSelector(base, allow_not_found=True)):
        if info.type == pafs.FileType.Directory and info.base_name.startswith("run_id="):
            part = f"{info.path}/part-0.parquet"
            if fs.get_file_info(part).type == pafs.FileType.File:
                try:
                    # the single-file reader, one thread: ``pq.read_table`` goes through pyarrow's
                    # dataset API, whose threads abort the process at exit ("terminate called without
                    # an active exception") after a refused planted file
                    with fs.open_input_file(part) as fh:
                        found = pq.ParquetFile(fh).read(use_threads=False).to_pylist()[0]
                    if not isinstance(found.get("status"), str):
                        raise ValueError("no status")
                    row = {name: found.get(name) for name in SCHEMA.names}  # rows of older versions lack columns
                except Exception as exc:  # noqa: BLE001 - a malformed or planted file is skipped, never fatal
                    log.warning("score_runs: skipping %s: not a run row (%s)", info.base_name, type(exc).__name__)
                    continue
                out.append({"run_id": info.base_name[len("run_id="):], **row})
    return out


def _gone(row: dict) -> bool:
    import os
    import socket
    if row.get("host") != socket.gethostname() or not row.get("pid"):
        return False  # another host's waiting run: it writes its own outcome
    try:
        os.kill(int(row["pid"]), 0)
        return False
    except ProcessLookupError:
        return True
    except PermissionError:
        return False


def committed(root: str, run_id: str) -> bool:
    """Whether any table holds rows of ``run_id`` (its commit moved at least one partition)."""
    fs, base = storage.filesystem(Layout(root).tables())
    part = f"run_id={run_id}"
    for table in ("score_files", "score_rejects"):
        if fs.get_file_info(f"{base}/{table}/{part}").type != pafs.FileType.NotFound:
            return True
    return any(i.base_name == part for i in fs.get_file_info(
        pafs.FileSelector(f"{base}/predictions", recursive=True, allow_not_found=True)))


def reap(root: str, current_run: str) -> list[str]:
    """Mark rows of dead runs ``killed`` (or ``committed``, when the run died after its commit moved
    rows into the tables, before it could record its counts). Call only while holding the lease: no
    other run can be running then, so a ``running`` row belongs to a run that died (or was fenced off)."""
    killed = []
    now = dt.datetime.now(dt.timezone.utc)
    for row in read(root):
        if row["run_id"] != current_run and (row["status"] == "running" or
                                             (row["status"] == "waiting" and _gone(row))):
            run_id = row.pop("run_id")
            if row["status"] == "running" and committed(root, run_id):
                write(root, run_id, {**row, "status": "committed", "finished_at": now,
                                     "error": f"found running by run {current_run}: it died after committing rows "
                                              "(its counts were not recorded; the tables hold what it committed)"})
                continue
            write(root, run_id, {**row, "status": "killed", "finished_at": now,
                                 "error": f"found {row['status']} by run {current_run}, its process gone or its lease "
                                          "lost; any uncommitted staging of it was removed"})
            killed.append(run_id)
    if killed:
        log.warning("score: %d earlier run(s) died before finishing and are marked killed: %s",
                    len(killed), ", ".join(killed))
    return killed
