"""Parquet through pyarrow on any root (driver, executors and Horovod ranks): a table's bytes, a
file written whole, a dataset opened for reading, a column's value counts."""
from __future__ import annotations

import posixpath

import pyarrow as pa
import pyarrow.parquet as pq

from .storage import filesystem


def parquet_bytes(table: pa.Table) -> bytes:
    """A (small) table as the bytes of one Parquet file, for ``replace_file``."""
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return sink.getvalue().to_pybytes()


def write_parquet(uri: str, frames, schema: pa.Schema) -> None:
    """pandas frames (an iterable) as one Parquet file at ``uri``, a row group each, written as they
    come through the root's filesystem: the caller holds one frame at a time. Inside a staging or
    version folder (on object stores a multipart upload, which appears whole when closed)."""
    fs, path = filesystem(uri)
    fs.create_dir(posixpath.dirname(path), recursive=True)
    with fs.open_output_stream(path) as sink, pq.ParquetWriter(sink, schema) as writer:
        for frame in frames:
            writer.write_table(pa.Table.from_pandas(frame, schema=schema, preserve_index=False))


def parquet_dataset(uri: str):
    """The Parquet files under ``uri`` as a pyarrow dataset (names starting with ``.`` or ``_``, which
    Spark skips, skipped too)."""
    import pyarrow.dataset as pads
    fs, path = filesystem(uri)
    return pads.dataset(path, filesystem=fs, format="parquet", ignore_prefixes=[".", "_"])


def value_counts(uri: str, column: str) -> dict[str, int]:
    """{value: rows} of one column of the Parquet files under ``uri``, read with pyarrow (no Spark
    job): a few bytes a row. Nulls are not counted."""
    counts = parquet_dataset(uri).to_table(columns=[column]).column(column).value_counts()
    return {str(v["values"]): int(v["counts"]) for v in counts.to_pylist() if v["values"] is not None}
