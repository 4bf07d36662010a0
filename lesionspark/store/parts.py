"""Petastorm datasets whose Parquet parts are written by the tasks that make the records: image
bytes never cross into the JVM.

A task that makes records (ingest's decode, hmnist's rows, balance's classes) writes them itself with
pyarrow into parts under ``<scratch>/<key>/`` (key: the split; ``scratch`` beside the staging folder), in row
groups of about ``rowgroup_mb`` of record bytes and files of about ``rows_per_file`` records, and yields one small row per record
that says where it went (``part``, ``row_group``; ingest sums them per part in the task,
``dataset.writer.summarize``). The driver takes those rows from a job's result, which holds only
successful task attempts' rows, so they name exactly the parts of committed task attempts.
``publish`` then moves those parts, and only those, to ``<out>/<key>/`` under names without the
attempt token (a failed or speculative attempt's parts stay behind and are deleted with the staging
directory), and writes Petastorm's ``_common_metadata`` (the Unischema and the row groups of each
file) from what the tasks reported, without opening a part.

Imported in executors (``PartWriter``, ``writing``) and on the driver (``publish``); no Spark here.
"""
from __future__ import annotations

import json
import pickle
import uuid
from contextlib import contextmanager
from typing import Callable, Iterator

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from . import storage

# Petastorm's metadata keys (petastorm.etl.dataset_metadata), as its reader looks them up.
UNISCHEMA_KEY = b"dataset-toolkit.unischema.v1"
ROW_GROUPS_PER_FILE_KEY = b"dataset-toolkit.num_row_groups_per_file.v1"

_ARROW_TYPES = {np.str_: pa.string(), np.int32: pa.int32(), np.int8: pa.int8(), np.float32: pa.float32(),
                np.bool_: pa.bool_(), np.int64: pa.int64(), np.float64: pa.float64()}


def arrow_schema(unischema) -> pa.Schema:
    """The Arrow schema of a Unischema's records as Spark wrote them before: scalars by their numpy
    type, encoded (shaped) fields as bytes; every field nullable, as Spark's were."""
    fields = []
    for f in unischema.fields.values():
        fields.append(pa.field(f.name, pa.binary() if f.shape else _ARROW_TYPES[f.numpy_dtype]))
    return pa.schema(fields)


def task_names() -> tuple[int, str]:
    """(partition id, a token unique to this task attempt): from Spark's TaskContext in a task,
    else partition 0 and a random token."""
    try:
        from pyspark import TaskContext
        ctx = TaskContext.get()
    except ImportError:
        ctx = None
    if ctx is None:
        return 0, "t" + uuid.uuid4().hex[:12]
    return ctx.partitionId(), f"a{ctx.taskAttemptId()}"


@contextmanager
def scratch(staging: str, keys) -> Iterator[str]:
    """Where a run's parts (``<scratch>/<key>/``, made here for each of ``keys``: tasks never create
    a directory) go: a sibling of the staging folder, never
    inside it, deleted when the block ends (either way). A zombie task attempt that outlives its job
    can then only ever recreate this sibling (whose name starts like the staging folder's, so the
    next run's ``AtomicDir`` deletes it), never a folder inside the published dataset."""
    uri = staging.rstrip("/") + "-parts"
    try:
        for key in keys:
            fs, path = storage.filesystem(storage.join(uri, key))
            fs.create_dir(path, recursive=True)
        yield uri
    finally:
        storage.delete(uri)


def final_name(part: str) -> str:
    """``part-00003-0001-a97.parquet`` -> ``part-00003-0001.parquet`` (the attempt token dropped)."""
    return part.rsplit("-", 1)[0] + ".parquet"


class PartWriter:
    """One task's parts: per key, one open file, row groups closed at ``rowgroup_bytes`` of buffered
    record bytes, a new file once ``rows_per_file`` records are in one. ``add`` says where each
    record will be; ``close`` writes what is buffered and must succeed for those places to exist."""

    def __init__(self, parts_uri: str, unischema, rowgroup_bytes: int, rows_per_file: int,
                 names: tuple[int, str] | None = None):
        self.parts_uri = parts_uri.rstrip("/")
        self.schema = arrow_schema(unischema)
        self.columns = list(self.schema.names)
        self.rowgroup_bytes, self.rows_per_file = max(1, rowgroup_bytes), max(1, rows_per_file)
        self.partition, self.token = names or task_names()
        self._keys: dict[str, dict] = {}

    def _state(self, key: str) -> dict:
        if key not in self._keys:
            self._keys[key] = {"seq": 0, "writer": None, "stream": None, "groups": 0, "rows": 0,
                               "buffer": [], "bytes": 0, "buffered": 0}
        return self._keys[key]

    def _name(self, st: dict) -> str:
        return f"part-{self.partition:05d}-{st['seq']:04d}-{self.token}.parquet"

    def table(self, records: pd.DataFrame) -> pa.Table:
        """``records`` (a DataFrame with the Unischema's columns) as an Arrow table of this schema."""
        return pa.Table.from_pandas(records[self.columns], schema=self.schema, preserve_index=False)

    def add(self, key: str, records: pd.DataFrame | pa.Table) -> tuple[list[str], list[int]]:
        """Buffer ``records`` for ``key``; (part name, row group) of each."""
        st = self._state(key)
        table = records if isinstance(records, pa.Table) else self.table(records)
        places_part, places_group = [], []
        start = 0
        while start < table.num_rows:
            room = self.rows_per_file - st["rows"] - st["buffered"]
            take = table.slice(start, max(1, room))
            st["buffer"].append(take)
            st["buffered"] += take.num_rows
            st["bytes"] += take.nbytes
            places_part += [self._name(st)] * take.num_rows
            places_group += [st["groups"]] * take.num_rows
            start += take.num_rows
            if st["bytes"] >= self.rowgroup_bytes or st["rows"] + st["buffered"] >= self.rows_per_file:
                self._flush(key, st)
        return places_part, places_group

    def _flush(self, key: str, st: dict) -> None:
        if not st["buffered"]:
            return
        if st["writer"] is None:
            fs, path = storage.filesystem(storage.join(self.parts_uri, key, self._name(st)))
            st["stream"] = fs.open_output_stream(path)
            st["writer"] = pq.ParquetWriter(st["stream"], self.schema)
        table = pa.concat_tables(st["buffer"])
        st["writer"].write_table(table, row_group_size=table.num_rows)
        st["groups"] += 1
        st["rows"] += table.num_rows
        st["buffer"], st["bytes"], st["buffered"] = [], 0, 0
        if st["rows"] >= self.rows_per_file:
            self._close_file(st)

    @staticmethod
    def _close_file(st: dict) -> None:
        if st["writer"] is not None:
            st["writer"].close()
            st["stream"].close()
        st.update(writer=None, stream=None, seq=st["seq"] + 1, groups=0, rows=0)

    def close(self) -> None:
        for key, st in self._keys.items():
            self._flush(key, st)
            self._close_file(st)

    def abort(self) -> None:
        """Close open files without writing what is buffered (the task failed; nothing is committed)."""
        for st in self._keys.values():
            if st["writer"] is not None:
                st["stream"].close()

    def __enter__(self) -> "PartWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        self.close() if exc_type is None else self.abort()
        return False


def writing(make: Callable[[Iterator[pd.DataFrame]], Iterator[pd.DataFrame]], parts_uri: str, unischema,
            rowgroup_mb: int, rows_per_file: int, keep: list[str], key: str = "split"):
    """A ``mapInPandas`` function: runs ``make`` (batches of records with ``key``, ``reason`` and
    ``detail`` columns); writes each record whose ``reason`` is null into its key's part; yields
    ``keep`` columns of every row plus where it went (null for a rejected row)."""
    def run(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        with PartWriter(parts_uri, unischema, rowgroup_mb << 20, rows_per_file) as writer:
            for out in make(batches):
                yield _write_batch(writer, out, keep, key)
    return run


def _write_batch(writer: PartWriter, out: pd.DataFrame, keep: list[str], key: str) -> pd.DataFrame:
    """Write the records of one batch (one Arrow conversion, then a take per key); ``keep`` columns
    of every row plus its part and row group."""
    ok = out["reason"].isna().to_numpy()
    part = np.full(len(out), None, dtype=object)
    group = np.zeros(len(out), dtype=np.int32)
    if ok.any():
        rows = np.flatnonzero(ok)
        keys = out[key].to_numpy()[rows].astype(str)
        table = writer.table(out.iloc[rows])
        for k in np.unique(keys):
            sel = np.flatnonzero(keys == k)
            names, groups = writer.add(k, table.take(sel))
            part[rows[sel]] = names
            group[rows[sel]] = groups
    small = out[keep].reset_index(drop=True)
    small["part"] = part
    small["row_group"] = pd.array(np.where(ok, group, 0), dtype="Int32")
    small.loc[~ok, "row_group"] = pd.NA
    return small


def publish(parts_uri: str, out_uri: str, unischema, row_groups: dict[str, dict[str, int]]) -> None:
    """Move the committed parts (``row_groups``: key -> {part name: row groups}) from
    ``<parts_uri>/<key>/`` to ``<out_uri>/<key>/`` and write each key's Petastorm metadata. A key
    with no records gets one empty part, so that its dataset still opens (and reads no row)."""
    schema = arrow_schema(unischema)
    pickled = pickle.dumps(unischema)
    for key, parts in row_groups.items():
        fs, out = storage.filesystem(storage.join(out_uri, key))
        _, src = storage.filesystem(storage.join(parts_uri, key))
        fs.create_dir(out, recursive=True)
        index = {}
        for part, groups in sorted(parts.items()):
            fs.move(f"{src}/{part}", f"{out}/{final_name(part)}")
            index[final_name(part)] = int(groups)
        if not index:
            with fs.open_output_stream(f"{out}/part-00000-0000.parquet") as sink:
                pq.write_table(schema.empty_table(), sink)
            index["part-00000-0000.parquet"] = 0
        meta = schema.with_metadata({UNISCHEMA_KEY: pickled, ROW_GROUPS_PER_FILE_KEY: json.dumps(index).encode()})
        with fs.open_output_stream(f"{out}/_common_metadata") as sink:
            pq.write_metadata(meta, sink)
