"""Spark SQL over the storage root: every table registered by name, no set-up beyond the root.

Runs on the driver.
"""
from __future__ import annotations

import logging

from . import storage
from .config import ConfigError
from .spark import sql_conf

log = logging.getLogger(__name__)

TABLES = ("predictions", "score_rejects", "score_files", "score_runs", "metrics")


def register(spark, root: str, metastore: bool = False) -> list[str]:
    """Register the tables under ``root`` as temporary views (or, with ``metastore``, as external
    tables in the session's catalog, e.g. a Hive metastore). Returns the names registered."""
    import pyarrow.fs as pafs
    root = storage.normalize_uri(root)
    names = []
    for name in TABLES:
        uri = storage.join(root, "tables", name)
        if not storage.exists(uri):
            continue
        if metastore:
            spark.sql(f"CREATE TABLE IF NOT EXISTS {name} USING parquet LOCATION '{uri}'")
            if name in ("predictions", "score_rejects", "score_files", "score_runs"):
                spark.sql(f"MSCK REPAIR TABLE {name}")  # pick up partitions committed since
        elif not storage.has_files(uri):
            # a first commit killed after creating the table's folder: nothing to read yet
            log.warning("sql: %s has no data file yet; not registered", name)
            continue
        else:
            # Columns added over versions (predictions.review_flag) are read from every file.
            spark.read.option("mergeSchema", "true").parquet(uri).createOrReplaceTempView(name)
        names.append(name)
    # Ingest rejects of every dataset, with the dataset's name.
    fs, base = storage.filesystem(storage.join(root, "datasets"))
    if fs.get_file_info(base).type == pafs.FileType.Directory:
        from pyspark.sql import functions as F
        frames = []
        for info in fs.get_file_info(pafs.FileSelector(base)):
            if info.type == pafs.FileType.Directory and not info.base_name.startswith("."):
                uri = storage.join(storage.resolve(storage.join(root, "datasets", info.base_name)), "rejects")
                if storage.exists(uri):
                    frames.append(spark.read.parquet(uri).withColumn("dataset", F.lit(info.base_name)))
        if frames:
            df = frames[0]
            for f in frames[1:]:
                df = df.unionByName(f)
            df.createOrReplaceTempView("ingest_rejects")
            names.append("ingest_rejects")
    if "predictions" in names and "score_files" in names:
        # Every path of a content (the same image under two paths is scored once).
        paths = spark.table("score_files").select(spark.table("score_files")["path_key"].alias("image_path"),
                                                  "image_sha256").distinct()
        spark.table("predictions").drop("image_path").join(paths, "image_sha256") \
            .createOrReplaceTempView("predictions_by_path")
        names.append("predictions_by_path")
    return names


class SqlRefused(ConfigError):
    """A statement the read-only SQL command does not run (exit code 2)."""


# Parsed-plan nodes that write, change the session or the catalog, or run code: refused by default.
WRITES = ("org.apache.spark.sql.catalyst.plans.logical.Command",
          "org.apache.spark.sql.catalyst.plans.logical.InsertIntoStatement",
          "org.apache.spark.sql.catalyst.plans.logical.InsertIntoDir",
          "org.apache.spark.sql.catalyst.plans.logical.ParsedStatement")


def _nodes(plan):
    """Every node of a parsed (unresolved) JVM plan, depth first."""
    stack = [plan]
    while stack:
        node = stack.pop()
        yield node
        children = node.children()
        stack.extend(children.apply(i) for i in range(children.size()))


def check_read_only(spark, query: str) -> None:
    """Refuse anything but a query: statements that write (INSERT, INSERT OVERWRITE DIRECTORY, CTAS),
    change the catalog or session (CREATE, DROP, SET, CACHE), add code (ADD JAR, CREATE FUNCTION) or
    read raw files (``text.`file:/etc/passwd```: refused by ``spark.sql.runSQLOnFiles=false``, set by
    ``run_query``). Judged on Spark's own parse of the statement, not on its text."""
    jvm = spark._jvm
    try:
        plan = spark._jsparkSession.sessionState().sqlParser().parsePlan(query)
    except Exception as exc:  # a parse error: Spark's message says where
        raise SqlRefused(f"the statement does not parse: {str(exc).splitlines()[0]}") from None
    kinds = [jvm.java.lang.Class.forName(k) for k in WRITES]
    for node in _nodes(plan):
        if any(k.isInstance(node) for k in kinds):
            raise SqlRefused(f"only queries run by default (SELECT, WITH, VALUES, TABLE); this statement is a "
                             f"{node.nodeName()}. lesionspark sql --allow-writes runs it")


def check_out(root: str, out: str) -> str:
    """``--out`` must not be the storage root or inside it (an overwrite there deletes data)."""
    root_uri, out_uri = storage.normalize_uri(root).rstrip("/"), storage.normalize_uri(out).rstrip("/")
    if out_uri == root_uri or out_uri.startswith(root_uri + "/"):
        raise SqlRefused(f"--out {out} is inside the storage root {root_uri}: write results elsewhere")
    return out_uri


def run_query(spark, root: str, query: str, out: str | None = None, metastore: bool = False, limit: int = 50,
              allow_writes: bool = False):
    """Run ``query`` over the tables under ``root``: its first ``limit`` rows as pandas, or, with
    ``out``, written there (.csv or Parquet). Read-only unless ``allow_writes``."""
    if out:
        out = check_out(root, out)
    names = register(spark, root, metastore)
    log.info("sql: tables %s", ", ".join(names) or "(none yet)")
    if not allow_writes:
        check_read_only(spark, query)
    from pyspark.errors import AnalysisException
    with sql_conf(spark, spark_sql_runSQLOnFiles=str(allow_writes).lower()):
        try:
            df = spark.sql(query)  # analysed here: a raw-file relation is refused now, not when rows are read
        except AnalysisException as exc:
            raise SqlRefused(f"the query cannot run: {str(exc).splitlines()[0]}"
                             + ("" if allow_writes else " (reading raw files, e.g. text.`path`, needs --allow-writes)"))
    if out:
        if out.endswith(".csv"):
            df.coalesce(1).write.mode("overwrite").option("header", True).csv(out)
        else:
            df.write.mode("overwrite").parquet(out)
        return {"written": out, "rows": spark.read.parquet(out).count() if not out.endswith(".csv")
                else spark.read.option("header", True).csv(out).count()}
    rows = df.limit(limit).toPandas()
    return rows
