"""Spark SQL over the storage root: every table registered by name, no set-up beyond the root.

Runs on the driver.
"""
from __future__ import annotations

import logging
import os

from ..store import storage
from . import results
from ..store.layout import Layout

from ..core.config import ConfigError
from ..store.spark import sql_conf

log = logging.getLogger(__name__)

TABLES = ("predictions", "score_rejects", "score_files", "score_runs", "metrics")


def register(spark, root: str, metastore: bool = False) -> list[str]:
    """Register the tables under ``root`` as temporary views (or, with ``metastore``, as external
    tables in the session's catalog, e.g. a Hive metastore). Returns the names registered."""
    import pyarrow.fs as pafs
    root = storage.normalize_uri(root)
    names = []
    for name in TABLES:
        uri = Layout(root).table(name)
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
    fs, base = storage.filesystem(Layout(root).datasets())
    if fs.get_file_info(base).type == pafs.FileType.Directory:
        from pyspark.sql import functions as F
        frames = []
        for info in fs.get_file_info(pafs.FileSelector(base)):
            if info.type == pafs.FileType.Directory and not info.base_name.startswith("."):
                uri = Layout(root).rejects(info.base_name)
                if storage.exists(uri):
                    frames.append(spark.read.parquet(uri).withColumn("dataset", F.lit(info.base_name)))
        if frames:
            df = frames[0]
            for f in frames[1:]:
                df = df.unionByName(f)
            df.createOrReplaceTempView("ingest_rejects")
            names.append("ingest_rejects")
    for name, frame in (("explanations", results.explanations(spark, root)), ("model_cards", results.model_cards(spark, root))):
        if frame is not None:
            frame.createOrReplaceTempView(name)
            names.append(name)
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


# The read-only guard is an allow-list over Spark's own parse of the statement: every node of the
# parsed plan (subqueries and CTE definitions included) must be one of these query operators, and
# every function it calls one of Spark's built-ins less those that reach the JVM or the host.
# Anything else (commands, INSERT, CREATE, SET, ADD JAR, CACHE, script transforms, ...) is refused.
QUERY_NODES = frozenset((
    "Project", "Filter", "Aggregate", "Join", "LateralJoin", "Sort", "GlobalLimit", "LocalLimit", "Offset",
    "Tail", "SubqueryAlias", "UnresolvedRelation", "UnresolvedWith", "Union", "Intersect", "Except", "Distinct",
    "Deduplicate", "OneRowRelation", "UnresolvedInlineTable", "LocalRelation", "Generate", "Window", "Pivot",
    "Unpivot", "Sample", "RepartitionByExpression", "Repartition", "UnresolvedHint", "WithWindowDefinition",
    "UnresolvedSubqueryColumnAliases", "UnresolvedTableValuedFunction"))
# Statements that only list the catalog (see ``_listing`` for ``USE``).
LISTINGS = frozenset(("ShowTables", "ShowNamespaces", "ShowColumns", "DescribeRelation", "DescribeColumn",
                      "UnresolvedNamespace", "UnresolvedTableOrView"))
# Built-in functions refused: reflection into any Java class (System.getenv, System.load, Thread.sleep,
# Hadoop's FileUtil), and XPath, which parses XML with the JVM's resolvers.
REFUSED_FUNCTIONS = frozenset(("reflect", "java_method", "try_reflect", "xpath", "xpath_boolean", "xpath_double",
                               "xpath_float", "xpath_int", "xpath_long", "xpath_number", "xpath_short",
                               "xpath_string"))


def _seq(seq) -> list:
    return [seq.apply(i) for i in range(seq.size())]


def _walk(spark, plan):
    """(plan node, its expressions' trees, depth first) of a parsed JVM plan, subqueries and CTE
    definitions (inner children) included."""
    subquery = spark._jvm.java.lang.Class.forName("org.apache.spark.sql.catalyst.expressions.SubqueryExpression")
    plans = [plan]
    while plans:
        node = plans.pop()
        exprs, seen = _seq(node.expressions()), []
        while exprs:
            e = exprs.pop()
            seen.append(e)
            exprs += _seq(e.children())
            if subquery.isInstance(e):
                plans.append(e.plan())
        yield node, seen
        plans += _seq(node.children()) + _seq(node.innerChildren())


def jvm_class(obj) -> str:
    return obj.getClass().getSimpleName()


def builtin_functions(spark) -> frozenset:
    """The names of Spark's built-in functions (not the session's registered ones), less the refused."""
    analysis = spark._jvm.org.apache.spark.sql.catalyst.analysis
    names = set()
    for registry in (analysis.FunctionRegistry.builtin(), analysis.TableFunctionRegistry.builtin()):
        names |= {f.funcName().lower() for f in _seq(registry.listFunction().toSeq())}
    return frozenset(names - REFUSED_FUNCTIONS)


def check_read_only(spark, query: str) -> None:
    """Refuse anything but a query built from ``QUERY_NODES`` and built-in functions (``refusal``),
    judged on Spark's own parse of the statement, not on its text. Raw file reads
    (``text.`file:/etc/passwd```) are refused here and by ``spark.sql.runSQLOnFiles=false``, set by
    ``run_query``."""
    try:
        plan = spark._jsparkSession.sessionState().sqlParser().parsePlan(query)
    except Exception as exc:  # a parse error: Spark's message says where
        raise SqlRefused(f"the statement does not parse: {str(exc).splitlines()[0]}") from None
    why = refusal(spark, plan)
    if why:
        raise SqlRefused(f"{why}. lesionspark sql --allow-writes runs it")


def refusal(spark, plan) -> str | None:
    """Why a parsed plan (a JVM ``LogicalPlan``) is not a read-only query, or None. Refused:
    statements that write (INSERT, INSERT OVERWRITE DIRECTORY, CTAS), change the catalog or session
    (CREATE, DROP, SET, CACHE, USE of another namespace), add code (ADD JAR, CREATE FUNCTION), run a
    program (``SELECT TRANSFORM ... USING``), call into Java (``reflect``, ``java_method``), read
    files by path, or name a function or table in another namespace. The same check guards
    ``lesionspark serve`` (its parser, ``jvm/ReadOnlyParser.java``, calls it for every statement)."""
    allowed = builtin_functions(spark)
    for node, exprs in _walk(spark, plan):
        kind = jvm_class(node)
        if kind not in QUERY_NODES and not _listing(kind, node):
            return (f"only queries run (SELECT, WITH, VALUES, TABLE, SHOW TABLES, DESCRIBE); this statement holds a "
                    f"{node.nodeName()}")
        if kind == "UnresolvedRelation":
            parts = [str(p) for p in _seq(node.multipartIdentifier())]
            if len(parts) > 2 or any("/" in p or ":" in p for p in parts):
                return f"table {node.tableName()} is not one of the root's tables (files are not read by path)"
        names = [node.name().mkString(".")] if kind == "UnresolvedTableValuedFunction" else []
        names += [e.nameParts().mkString(".") for e in exprs if jvm_class(e) == "UnresolvedFunction"]
        for name in names:
            if name.lower() not in allowed:
                return (f"function {name} is not allowed in a read-only query (built-in functions run, except "
                        "reflection and XPath)")
    return None


def _listing(kind: str, node) -> bool:
    """The catalog listings BI tools and analysts send (``SHOW TABLES``, ``DESCRIBE t``, ``SHOW
    COLUMNS``, ``SHOW DATABASES``) and ``USE default`` (PyHive sends it on connect)."""
    if kind == "SetCatalogAndNamespace":
        child = node.child()
        return jvm_class(child) == "UnresolvedNamespace" and [str(p) for p in _seq(child.multipartIdentifier())] \
            in (["default"], ["spark_catalog", "default"])
    return kind in LISTINGS


def _place(uri: str) -> tuple[str, str]:
    """(filesystem, normalised path) of a URI: a local path with every link and ``..`` resolved; a
    remote one with ``..`` and ``.`` folded, under its scheme and authority."""
    import posixpath
    from urllib.parse import urlparse
    uri = storage.normalize_uri(uri)
    parsed = urlparse(uri)
    if parsed.scheme in ("", "file"):
        return "file", os.path.realpath(parsed.path or "/")
    return f"{parsed.scheme}://{parsed.netloc}", posixpath.normpath("/" + parsed.path.lstrip("/"))


def _within(path: str, top: str) -> bool:
    return path == top or path.startswith(top.rstrip("/") + "/")


def check_out(root: str, out: str) -> str:
    """``--out`` must not be the storage root, inside it, or a folder that holds it (an overwrite
    there deletes data), however it is spelled (``file:/...``, ``a/../b``, ``.``, a link)."""
    (root_fs, root_path), (out_fs, out_path) = _place(root), _place(out)
    if root_fs == out_fs and (_within(out_path, root_path) or _within(root_path, out_path)):
        where = "is inside the storage root" if _within(out_path, root_path) else "holds the storage root"
        raise SqlRefused(f"--out {out} {where} {root_path}: write results elsewhere")
    return storage.normalize_uri(out).rstrip("/")


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
