"""``lesionspark serve``: Spark's Thrift server (HiveServer2: JDBC and ODBC) over a storage root,
read-only, for analysts' own tools (beeline, DBeaver, Tableau, Power BI, Superset, PyHive).

The server runs inside this driver's Spark session (``HiveThriftServer2.startWithContext``), with
every connection sharing that session (``singleSession``), so the tables registered here
(``query.register``: predictions, predictions_by_path, score_runs, score_files, score_rejects,
metrics, ingest_rejects, explanations, model_cards) are what every client sees, by those names.
Every statement passes the read-only check of ``lesionspark sql`` (``query.refusal``), called by the
session's parser (``jvm/ReadOnlyParser.java``) through Py4J before the statement runs. Every
``serve.refresh_s`` seconds it lists the results; when a run has committed, it registers the tables
again, so the next query sees the new rows with no repair or refresh by anyone. The metastore is
Spark's in-memory catalog (no Derby database on disk), so the server never blocks ``lesionspark
sql``, scoring or any other stage on the root.

Runs on the driver (the server is the driver).
"""
from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile
import threading
import time

from ..core.config import Config, ConfigError
from ..core.signals import Terminated
from ..store import storage
from ..store.layout import Layout
from . import query

log = logging.getLogger(__name__)

LOOPBACK = ("127.0.0.1", "localhost", "::1")
EXTENSION = "lesionspark.guard.ReadOnlyParser$Extension"


def guard_jar() -> str:
    """The compiled read-only parser: ``LESIONSPARK_GUARD_JAR``, else where the set-up command builds it."""
    jar = os.environ.get("LESIONSPARK_GUARD_JAR") or os.path.join(sys.prefix, "share", "lesionspark", "guard",
                                                                  "lesionspark-guard.jar")
    if not os.path.isfile(jar):
        raise ConfigError(f"the read-only SQL parser {jar} is missing: run scripts/setup.sh (it builds it from "
                          "lesionspark/sql/jvm/ReadOnlyParser.java) or set LESIONSPARK_GUARD_JAR")
    return jar


def check_listen(serve: dict) -> None:
    """Loopback unless told otherwise; another address only with authentication, or with
    ``allow_unauthenticated`` said explicitly."""
    auth = str(serve.get("authentication") or "NONE").upper()
    if auth not in ("NONE", "LDAP", "KERBEROS", "CUSTOM", "NOSASL"):
        raise ConfigError(f"serve.authentication must be NONE, LDAP, KERBEROS, CUSTOM or NOSASL, not {auth!r}")
    if serve["host"] not in LOOPBACK and auth in ("NONE", "NOSASL") and not serve.get("allow_unauthenticated"):
        raise ConfigError(f"serve.host {serve['host']} is not loopback and serve.authentication is {auth}: anyone "
                          "who reaches the port could query the results. Set serve.authentication (LDAP, KERBEROS; "
                          "docs/sql.md) or, on a network you trust, serve.allow_unauthenticated: true")


def server_conf(serve: dict, jar: str, scratch: str) -> dict[str, str]:
    """The Spark settings of the server's session: the read-only parser, one shared SQL session,
    the Thrift server's address and authentication (``spark.hadoop.hive.server2.*`` reach its
    HiveConf), and Hive's scratch and Derby files in a private folder."""
    java_opts = f"-Dderby.stream.error.file={scratch}/derby.log"
    conf = {"spark.sql.extensions": EXTENSION, "spark.driver.extraClassPath": jar,
            "spark.driver.extraJavaOptions": java_opts,
            "spark.sql.hive.thriftServer.singleSession": "true", "spark.sql.runSQLOnFiles": "false",
            "spark.sql.warehouse.dir": f"{scratch}/warehouse", "spark.scheduler.mode": "FAIR",
            "spark.hadoop.hive.server2.thrift.bind.host": serve["host"],
            "spark.hadoop.hive.server2.thrift.port": str(serve["port"]),
            "spark.hadoop.hive.server2.authentication": str(serve.get("authentication") or "NONE").upper(),
            "spark.hadoop.hive.exec.scratchdir": f"{scratch}/hive", "spark.hadoop.hive.exec.local.scratchdir":
            f"{scratch}/hive-local", "spark.hadoop.hive.downloaded.resources.dir": f"{scratch}/resources",
            "spark.hadoop.hive.server2.logging.operation.log.location": f"{scratch}/operation-logs"}
    for key, value in (serve.get("hive") or {}).items():
        conf[key if key.startswith("spark.") else f"spark.hadoop.{key}"] = str(value)
    return conf


class Guard:
    """``ReadOnlyParser.Guard``, implemented here: the JVM calls ``refusal`` for every parsed statement."""

    def __init__(self, spark):
        self.spark = spark

    def refusal(self, plan):
        try:
            why = query.refusal(self.spark, plan)
        except Exception as exc:  # noqa: BLE001 (a check that fails refuses: fail closed)
            why = f"the read-only check failed ({type(exc).__name__})"
        if why:
            log.warning("serve: refused a statement: %s", why)
        return why

    class Java:
        implements = ["lesionspark.guard.ReadOnlyParser$Guard"]


def fingerprint(root: str) -> tuple:
    """What the registered tables depend on: every file under ``tables/`` (but the staging and the
    lease), the datasets, explanations and model cards, by path, size and modification time."""
    import pyarrow.fs as pafs
    layout = Layout(root)
    seen = []
    for top in (layout.tables(), layout.datasets(), layout.all_explanations(), layout.all_models()):
        fs, path = storage.filesystem(top)
        for info in fs.get_file_info(pafs.FileSelector(path, recursive=True, allow_not_found=True)):
            if "/_staging/" not in info.path and "/_lease" not in info.path and info.type == pafs.FileType.File:
                seen.append((info.path, info.size, info.mtime_ns))
    return tuple(sorted(seen))


def _start(spark, root: str):
    """The guard installed (before any client can connect), the tables registered, the server started."""
    from pyspark.java_gateway import ensure_callback_server_started
    gateway = spark.sparkContext._gateway
    ensure_callback_server_started(gateway)
    guard = Guard(spark)
    spark._jvm.lesionspark.guard.ReadOnlyParser.install(guard)
    names = query.register(spark, root)
    server = spark._jvm.org.apache.spark.sql.hive.thriftserver.HiveThriftServer2.startWithContext(
        spark._jsparkSession.sqlContext())
    return server, guard, names


def serve(cfg: Config, stop: threading.Event | None = None) -> dict:
    """Serve ``storage.root`` until ``stop`` is set (or SIGTERM/SIGINT); registers the tables again
    whenever results change. Returns what it served."""
    from ..store.spark import get_spark
    settings = cfg.get("serve")
    check_listen(settings)
    root = storage.normalize_uri(cfg.get("storage.root"))
    scratch = tempfile.mkdtemp(prefix="lesionspark-serve-")  # mode 0700: Hive's scratch files are private
    for sub in ("hive", "hive-local", "resources", "operation-logs"):
        os.mkdir(os.path.join(scratch, sub), 0o700)
    conf = {**(cfg.get("spark.conf") or {}), **server_conf(settings, guard_jar(), scratch)}
    spark = get_spark(cfg.with_overrides({"spark.conf": conf}))
    server, _guard, names = _start(spark, root)
    url = f"jdbc:hive2://{settings['host']}:{settings['port']}/default"
    log.info("serve: %s answers at %s (read-only); tables: %s", root, url, ", ".join(names) or "(none yet)")
    print(f"SERVING {url}", flush=True)
    stop = stop or threading.Event()
    refreshes, seen = 0, fingerprint(root)
    try:
        while not stop.wait(float(settings["refresh_s"])):
            now = fingerprint(root)
            if now != seen:
                names, seen, refreshes = query.register(spark, root), now, refreshes + 1
                log.info("serve: new results under %s; tables registered again: %s", root, ", ".join(names))
    except (Terminated, KeyboardInterrupt) as exc:  # how a scheduler or an operator stops a server
        log.info("serve: stopping (%s)", type(exc).__name__)
    finally:
        server.stop()
        shutil.rmtree(scratch, ignore_errors=True)
    return {"url": url, "tables": names, "refreshes": refreshes, "stopped_at": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                                             time.gmtime())}
