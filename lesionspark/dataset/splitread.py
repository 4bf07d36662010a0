"""A published Parquet folder (a Petastorm split) as a Spark DataFrame whose tasks read its files
with pyarrow through the root's filesystem (``storage.filesystem``): one reader on every root, so
evaluate and explain read a split on an object store with the same ``fs.s3a.*`` options as
everything else, and without Spark's s3a connector. The driver lists the files; each task reads
whole files, a row group at a time (``mapInArrow``: no pandas in between, nulls stay nulls).
"""
from __future__ import annotations

from typing import Iterator

from ..store import storage

from ..store import parquet


def read_split(spark, url: str, columns: list[str]):
    """The ``columns`` of the Parquet files under ``url`` (names starting with ``_`` or ``.``
    skipped, as Spark skips them), one task per file up to the default parallelism."""
    import pyarrow as pa
    from pyspark.sql.pandas.types import from_arrow_schema
    dataset = parquet.parquet_dataset(url)
    files = sorted(dataset.files)
    schema = pa.schema([dataset.schema.field(c) for c in columns])
    tasks = max(1, min(len(files), spark.sparkContext.defaultParallelism))
    return spark.range(len(files), numPartitions=tasks).mapInArrow(_reader(url, files, columns),
                                                                   from_arrow_schema(schema))


def _reader(url: str, files: list[str], columns: list[str]):
    def read(ids: Iterator) -> Iterator:
        import pyarrow.parquet as pq
        fs, _ = storage.filesystem(url)
        for batch in ids:
            for i in batch.column("id").to_pylist():
                with fs.open_input_file(files[i]) as fh:
                    parquet = pq.ParquetFile(fh)
                    for group in range(parquet.num_row_groups):
                        yield from parquet.read_row_group(group, columns=columns).to_batches()
    return read
