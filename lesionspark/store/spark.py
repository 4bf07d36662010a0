"""SparkSession factory: local mode by default, a cluster's settings untouched under spark-submit.

Runs on the driver.
"""
from __future__ import annotations

import json
import logging
import os
import sys
from contextlib import contextmanager

from . import storage
from ..core.config import Config, ConfigError

log = logging.getLogger(__name__)


def flatten_conf(conf: dict, prefix: str = "") -> dict[str, str]:
    """``spark.conf`` as Spark keys. A command-line override such as
    ``spark.conf.spark.ui.showConsoleProgress=false`` arrives as nested sections; flatten them. A
    Hadoop key given as it is (``fs.s3a.endpoint``) becomes ``spark.hadoop.fs.s3a.endpoint``, the
    name under which Spark hands it to Hadoop (Spark ignores a key outside ``spark.*``)."""
    out = {}
    for key, value in (conf or {}).items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten_conf(value, name + "."))
        else:
            out[name] = str(value).lower() if isinstance(value, bool) else str(value)
    if prefix:
        return out
    return {(f"spark.hadoop.{k}" if k.startswith(("fs.", "dfs.")) else k): v for k, v in out.items()}


def under_spark_submit() -> bool:
    """True when the Python driver was launched by spark-submit (the JVM already exists)."""
    return "PYSPARK_GATEWAY_PORT" in os.environ


def submitted_conf() -> dict[str, str]:
    """The settings spark-submit was given (``--conf``, ``--properties-file``, spark-defaults.conf),
    read from its JVM before any session exists: a ``SparkConf`` made before Python has joined
    that JVM is empty. Empty when not under spark-submit."""
    if not under_spark_submit():
        return {}
    from pyspark import SparkConf, SparkContext
    SparkContext._ensure_initialized()  # joins the JVM spark-submit started; creates no context
    return dict(SparkConf().getAll())


def apply_umask(cfg: Config) -> str:
    """``storage.umask`` for this process and every process it starts (the environment carries it
    to Spark's local Python workers and, with ``spark.executorEnv``, to a cluster's): the octal string."""
    value = cfg.get("storage.umask")
    try:  # "027" (a string, octal) or 23 (YAML reads an unquoted 027 as the octal number 0o27)
        number = value if isinstance(value, int) else int(str(value), 8)
    except ValueError:
        number = -1
    if not 0 <= number <= 0o777:
        raise ConfigError(f"storage.umask must be an octal mask such as \"027\", got {value!r}")
    mask = f"{number:03o}"
    os.umask(number)
    os.environ["LESIONSPARK_UMASK"] = mask
    return mask


def check_root(cfg: Config, master: str) -> None:
    """Refuse a storage root on the driver's own disk (``file://`` or a plain path) with a master
    that runs executors elsewhere, unless ``storage.shared_filesystem`` says it is a shared mount."""
    root = storage.normalize_uri(cfg.get("storage.root"))
    if root.startswith("file://") and not master.startswith("local") and not cfg.get("storage.shared_filesystem"):
        raise ConfigError(f"storage.root {root} is a local path but the master is {master}: each executor would "
                          "write to its own disk. Use an hdfs:// root, or set storage.shared_filesystem: true "
                          "if this path is a mount every node shares (NFS)")


def configure_storage(cfg: Config, submitted: dict | None = None) -> dict:
    """Hand this run's s3a settings (``fs.s3a.*`` under ``spark.conf``, and under spark-submit the
    ``spark.hadoop.fs.s3a.*`` given to it) to pyarrow and boto3 in this process, so that one
    configuration reaches every layer. The command line calls it before its first storage call (a
    stage may look at its inputs before it starts Spark); ``get_spark`` calls it again. Returns the
    pyarrow S3 options (empty without s3a settings). ``submitted``: ``submitted_conf()``, where the
    caller has it already."""
    submitted = submitted_conf() if submitted is None else submitted
    s3 = storage.s3_options({**flatten_conf(cfg.get("spark.conf") or {}), **submitted})
    if s3:
        storage.configure_s3(s3)
    return s3


def get_spark(cfg: Config):
    """Return the active SparkSession, creating one if needed.

    Under ``spark-submit`` (or when a session already exists) master, memory and every setting the
    user gave are kept; lesionspark's ``spark.conf`` defaults (Arrow on, batch size) are applied
    only where the user left them unset. Otherwise a local session is started with
    ``spark.master`` from the configuration, and the Python workers use this interpreter.
    """
    from pyspark.sql import SparkSession

    active = SparkSession.getActiveSession()
    if active is not None:
        check_root(cfg, active.sparkContext.master)
        return active
    mask = apply_umask(cfg)
    defaults = {"spark.executorEnv.LESIONSPARK_UMASK": mask, "spark.hadoop.fs.permissions.umask-mode": mask,
                **flatten_conf(cfg.get("spark.conf") or {})}
    present = submitted_conf()
    s3 = configure_storage(cfg, present)  # the s3a settings Spark uses, for pyarrow and boto3 too
    if s3:  # executors and Horovod ranks: through their environment ("SECRET": Spark's UI redacts it)
        defaults["spark.executorEnv.LESIONSPARK_S3_OPTIONS_SECRET"] = json.dumps(s3)
    builder = SparkSession.builder.appName(cfg.get("spark.app_name"))
    if under_spark_submit():
        for key, value in defaults.items():
            if key not in present:
                builder = builder.config(key, value)
    else:
        # Python workers must run this interpreter (the venv's), not whatever is first on PATH.
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
        # Local Python workers inherit this: Petastorm's pyarrow deprecation warnings stay out of the
        # progress output (progress.quiet_library_warnings does the same in this process).
        os.environ.setdefault("PYTHONWARNINGS", "ignore::FutureWarning")
        builder = builder.master(cfg.get("spark.master"))
        if str(cfg.get("spark.master")).startswith("local"):
            # one executor: data locality means nothing, and waiting for it stalled jobs over an
            # hdfs:// root whose DataNodes name another address than the driver's (tests/test_hdfs.py)
            builder = builder.config("spark.locality.wait", "0")
        builder = builder.config("spark.driver.memory", cfg.get("spark.driver_memory"))
        for key, value in defaults.items():
            builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel(cfg.get("spark.log_level"))
    check_root(cfg, spark.sparkContext.master)
    log.info("spark %s, master %s, default parallelism %d", spark.version, spark.sparkContext.master,
             spark.sparkContext.defaultParallelism)
    return spark


def task_count(spark, n: int, per_task: int) -> int:
    """Tasks for ``n`` inputs of about ``per_task`` each, in whole waves: a multiple of the default
    parallelism, so that no last wave runs with cores idle. Each Python task costs a fixed ~0.1-0.3 s
    (worker hand-off, command deserialisation, commit; docs/benchmarks.md), so tasks are not small."""
    slots = max(1, spark.sparkContext.defaultParallelism)
    return slots * max(1, -(-n // (slots * max(1, per_task))))


def local_frames(df, rows: int = 50_000):
    """``df``'s rows on the driver as pandas frames of at most ``rows``, a partition at a time
    (``toLocalIterator`` over at most the default parallelism's partitions: one small job each), so
    the driver never holds them all."""
    import pandas as pd
    spark = df.sparkSession
    chunk: list[tuple] = []
    for row in df.coalesce(max(1, spark.sparkContext.defaultParallelism)).toLocalIterator():
        chunk.append(tuple(row))
        if len(chunk) == rows:
            yield pd.DataFrame(chunk, columns=df.columns)
            chunk = []
    if chunk:
        yield pd.DataFrame(chunk, columns=df.columns)


@contextmanager
def sql_conf(spark, **settings):
    """Set SQL confs for the duration of a block, then restore the session's own values."""
    keys = {k.replace("_", "."): str(v) for k, v in settings.items()}
    before = {k: spark.conf.get(k, None) for k in keys}
    for k, v in keys.items():
        spark.conf.set(k, v)
    try:
        yield
    finally:
        for k, v in before.items():
            spark.conf.unset(k) if v is None else spark.conf.set(k, v)
