"""List files under folders with Spark, 0-byte files included; read their bytes in executors."""
from __future__ import annotations

from urllib.parse import unquote

# A file's id is its name without the extension.
STEM_FROM_PATH = r"([^/]+?)(\.[^./]*)?$"


def hadoop_path(uri: str) -> str:
    """A file-index URI (``file:///a/b%20c.jpg``) as the binaryFile ``path`` column spells it
    (Hadoop ``Path.toString``: ``file:/a/b c.jpg``)."""
    uri = unquote(uri)
    return "file:/" + uri[len("file:///"):] if uri.startswith("file:///") else uri


def _reader(spark, glob: str | None):
    reader = spark.read.format("binaryFile").option("recursiveFileLookup", "true")
    return reader.option("pathGlobFilter", glob) if glob else reader


def list_files(spark, uris: list[str], glob: str | None = None, regex: str | None = None):
    """``path, length, modificationTime, stem`` for every file under ``uris`` (recursive).

    Spark's file scan skips 0-byte files; its file index (``inputFiles``) does not, so the
    listing starts from the index and takes lengths from the scan (0 where the scan skipped).
    ``regex`` filters paths case-insensitively (e.g. ``\\.(jpe?g|png)$``)."""
    from pyspark.sql import functions as F
    df = _reader(spark, glob).load(uris)
    index = spark.createDataFrame([(hadoop_path(p),) for p in df.inputFiles()], "path string")
    out = index.join(df.select("path", "length", "modificationTime"), "path", "left").fillna(0, ["length"])
    if regex:
        out = out.filter(F.lower("path").rlike(regex))
    return out.withColumn("stem", F.regexp_extract("path", STEM_FROM_PATH, 1))


def file_contents(spark, uris: list[str], glob: str | None = None):
    """``path, length, modificationTime, content`` (non-empty files), read lazily in executors."""
    return _reader(spark, glob).load(uris)
