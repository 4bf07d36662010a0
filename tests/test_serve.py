"""``lesionspark serve``: Spark's Thrift server over a storage root, started as a user starts it, and
queried with real clients: PyHive (DB-API, pinned in requirements/lock.txt) and the ``beeline`` that
pyspark ships. The morning queries, the read-only refusals, queries while a scoring run commits,
and a restart."""
import datetime
import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pyspark
import pytest
import yaml

from conftest import make_cfg, publish_untrained_model
from doctext import morning_queries
from lesionspark.score.driver import score
from lesionspark.store import runlog
from lesionspark.sql.query import run_query
from lesionspark.sql.serve import check_listen, fingerprint, guard_jar

SPARK_HOME = Path(pyspark.__file__).parent
REPO = Path(__file__).resolve().parents[1]
REFUSED = {
    "INSERT INTO predictions SELECT * FROM predictions": "InsertIntoStatement",
    "CREATE TABLE copied AS SELECT * FROM predictions": "CreateTableAsSelect",
    "DROP VIEW predictions": "DropView",
    "CREATE OR REPLACE TEMPORARY VIEW predictions AS SELECT 1 AS x": "CreateViewCommand",
    "CACHE TABLE predictions": "CacheTable",
    "SET spark.sql.runSQLOnFiles=true": "SetCommand",
    "SET": "SetCommand",
    "ADD JAR /tmp/evil.jar": "AddJarsCommand",
    "CREATE FUNCTION evil AS 'com.evil.Udf'": "CreateFunction",
    "INSERT OVERWRITE DIRECTORY '/tmp/out' SELECT * FROM predictions": "InsertIntoDir",
    "SELECT TRANSFORM(image_path) USING 'cat' AS (x) FROM predictions": "ScriptTransformation",
    "SELECT reflect('java.lang.System', 'getenv', 'HOME')": "function reflect",
    "SELECT java_method('java.lang.Thread', 'sleep', 100000L)": "function java_method",
    "SELECT * FROM parquet.`/etc`": "is not one of the root's tables",
    "SELECT * FROM text.`file:/etc/passwd`": "is not one of the root's tables",
    "USE other_db": "SetCatalogAndNamespace",
}
pytestmark = pytest.mark.slow  # a Thrift server's JVM for the module


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(root: Path, port: int, tmp: Path, submit: bool = False):
    """``lesionspark serve --conf FILE``, or with ``submit`` its spark-submit form (docs/sql.md)."""
    conf = tmp / f"serve-{port}.yaml"
    conf.write_text(yaml.safe_dump({"storage": {"root": str(root)}, "serve": {"port": port, "refresh_s": 1},
                                    "spark": {"master": "local[2]",
                                              "conf": {"spark.ui.enabled": "false",
                                                       "spark.ui.showConsoleProgress": "false"}}}))
    command = [sys.executable, "-m", "lesionspark.cli", "serve", "--conf", str(conf)]
    if submit:
        command = [str(Path(sys.executable).parent / "spark-submit"), "--master", "local[2]",
                   "--driver-class-path", guard_jar(), "--conf", f"spark.pyspark.python={sys.executable}",
                   str(REPO / "jobs" / "serve.py"), "--conf", str(conf)]
    proc = subprocess.Popen(command,
                            stdout=subprocess.PIPE, stderr=open(tmp / f"serve-{port}.log", "w"), text=True,
                            env={**os.environ, "PYSPARK_PYTHON": sys.executable, "SPARK_HOME": str(SPARK_HOME)},
                            cwd=tmp)
    ready: list = []

    def wait_for_url():  # spark-submit passes the driver's log lines to stdout too
        for line in proc.stdout:
            if line.startswith("SERVING "):
                ready.append(line)
                break
    reader = threading.Thread(target=wait_for_url, daemon=True)
    reader.start()
    reader.join(180)
    if not ready:
        proc.kill()  # a server that did not come up is not left behind
    assert ready == [f"SERVING jdbc:hive2://127.0.0.1:{port}/default\n"], (tmp / f"serve-{port}.log").read_text()[-3000:]
    threading.Thread(target=proc.stdout.read, daemon=True).start()  # drained, so the server never blocks on it
    return proc


def _stop(proc) -> int:
    proc.send_signal(signal.SIGTERM)
    return proc.wait(60)


def _archive(genuine_dir: Path, folder: Path, start: int, n: int) -> Path:
    folder.mkdir(parents=True)
    for p in sorted((genuine_dir / "images").glob("*.jpg"))[start:start + n]:
        (folder / p.name).write_bytes(p.read_bytes())
    return folder


@pytest.fixture(scope="module")
def served(spark, genuine_dir, tmp_path_factory):
    """A root with a night's results (6 images scored, one file rejected), served on a free port."""
    tmp = tmp_path_factory.mktemp("serve")
    root = tmp / "root"
    publish_untrained_model(root)
    night = _archive(genuine_dir, tmp / "night1", 0, 6)
    (night / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    runlog.write(str(root), "night0", {"status": "failed", "error": "stopped by SIGTERM",
                                       "started_at": datetime.datetime.now(datetime.timezone.utc)})
    score(spark, make_cfg(root, score__archive=str(night), score__model="cnn:v1"), run_id="night1")
    port = _free_port()
    served = {"root": root, "port": port, "tmp": tmp, "proc": _start(root, port, tmp)}
    yield served
    assert _stop(served["proc"]) in (0, 143)  # SIGTERM stops it (143: spark-submit's JVM took the signal)


def _connect(port: int, **kw):
    from pyhive import hive
    return hive.connect(host="127.0.0.1", port=port, auth="NONE", username="analyst", **kw)


def _rows(port: int, sql: str, **kw) -> list:
    conn = _connect(port, **kw)
    try:
        cur = conn.cursor()
        cur.execute(sql)
        return cur.fetchall()
    finally:
        conn.close()


def _same(jdbc, local) -> bool:
    """A value over JDBC (dates and timestamps as text, NULL as None) against pandas' (NaN, Timestamp)."""
    if local is None or (isinstance(local, float) and math.isnan(local)) or local is pd.NaT:
        return jdbc is None
    if isinstance(local, (datetime.date, pd.Timestamp)):
        return pd.Timestamp(jdbc) == pd.Timestamp(local)
    if isinstance(local, float):
        return abs(float(jdbc) - local) < 1e-9
    return jdbc == local


def test_the_morning_queries_answer_as_in_lesionspark_sql(spark, served):
    port, root = served["port"], str(served["root"])
    queries = morning_queries()
    assert len(queries) == 4
    answered = 0
    for sql in queries:
        over_jdbc = _rows(port, sql)
        local = run_query(spark, root, sql, limit=1000)
        assert len(over_jdbc) == len(local), sql
        answered += len(local)
        for got, want in zip(over_jdbc, local.itertuples(index=False)):
            assert all(_same(g, w) for g, w in zip(got, want)) and len(got) == len(want), (sql, got, want)
    assert answered >= 3  # both runs, the failed one, the day's drift row (and any flagged image)
    tables = {r[1] for r in _rows(port, "SHOW TABLES")}
    assert {"predictions", "predictions_by_path", "score_runs", "score_files", "score_rejects",
            "model_cards"} <= tables
    assert _rows(port, "SELECT name, version FROM model_cards") == [("cnn", "v1")]
    assert _rows(port, "SELECT count(*) FROM score_rejects") == [(1,)]


def test_beeline_connects_and_is_refused_a_write(served):
    beeline = [str(SPARK_HOME / "bin" / "beeline"), "-u", f"jdbc:hive2://127.0.0.1:{served['port']}/default",
               "-n", "analyst", "--silent=true", "--outputformat=csv2", "--showWarnings=false"]
    env = {**os.environ, "SPARK_HOME": str(SPARK_HOME)}
    ok = subprocess.run([*beeline, "-e", "SELECT count(*) AS n FROM predictions;"], capture_output=True, text=True,
                        env=env, timeout=120)
    assert ok.returncode == 0 and ok.stdout.split() == ["n", "6"], ok.stdout + ok.stderr[-2000:]
    refused = subprocess.run([*beeline, "-e", "DROP VIEW predictions;"], capture_output=True, text=True, env=env,
                             timeout=120)
    assert refused.returncode != 0 and "lesionspark serve is read-only" in refused.stdout + refused.stderr


def test_writes_code_and_file_reads_are_refused_and_nothing_changes(served):
    from pyhive.exc import OperationalError
    port, root = served["port"], str(served["root"])
    before = fingerprint(root)
    conn = _connect(port)
    cur = conn.cursor()
    for sql, why in REFUSED.items():
        with pytest.raises(OperationalError) as refused:
            cur.execute(sql)
        assert "lesionspark serve is read-only" in str(refused.value) and why in str(refused.value), sql
    conn.close()
    # A connection's own settings (the JDBC URL's) cannot open file reads either.
    with pytest.raises(OperationalError, match="is not one of the root's tables"):
        _rows(port, "SELECT * FROM text.`file:/etc/passwd`", configuration={"spark.sql.runSQLOnFiles": "true"})
    assert _rows(port, "SELECT count(*) FROM predictions") == [(6,)]
    assert fingerprint(root) == before
    assert not list(served["tmp"].glob("**/metastore_db"))  # no Derby database on disk: nothing to lock


def test_queries_during_a_commit_see_whole_runs_and_the_new_rows_without_a_repair(spark, served, genuine_dir):
    """A second night's run commits while a client queries without pause: no query fails, each sees
    the first night or both, whole; within a refresh the new rows are there. ``lesionspark sql`` on
    the same root runs meanwhile (nothing locks it)."""
    port, root = served["port"], served["root"]
    seen, errors, done = [], [], threading.Event()

    def poll():
        conn = _connect(port)
        cur = conn.cursor()
        while not done.is_set():
            try:
                cur.execute("SELECT count(*), count(DISTINCT run_id) FROM predictions")
                seen.append(cur.fetchall()[0])
            except Exception as exc:  # noqa: BLE001 (counted: none may fail)
                errors.append(repr(exc))
        conn.close()
    thread = threading.Thread(target=poll)
    thread.start()
    try:
        night = _archive(genuine_dir, served["tmp"] / "night2", 6, 5)
        second = score(spark, make_cfg(root, score__archive=str(night), score__model="cnn:v1"), run_id="night2")
        assert second["scored"] == 5
        assert run_query(spark, str(root), "SELECT count(*) AS n FROM predictions")["n"].tolist() == [11]
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and (not seen or seen[-1] != (11, 2)):
            time.sleep(0.2)
    finally:
        done.set()
        thread.join(60)
    assert not errors, errors[:3]
    assert set(seen) <= {(6, 1), (11, 2)} and seen[-1] == (11, 2), sorted(set(seen))
    assert len(seen) > 5


def test_a_restarted_server_serves_the_same_tables(served):
    """The server stopped with SIGTERM (exit 0, its port closed), then started again on the same port
    in its spark-submit form: the same rows under the same names."""
    port, query = served["port"], "SELECT run_id, count(*) FROM predictions GROUP BY run_id ORDER BY run_id"
    before = _rows(port, query)
    assert _stop(served["proc"]) == 0
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    served["proc"] = _start(served["root"], port, served["tmp"], submit=True)
    assert _rows(port, query) == before and before


@pytest.mark.parametrize("host, auth, allowed, ok", [
    ("127.0.0.1", "NONE", False, True), ("0.0.0.0", "NONE", False, False), ("10.1.2.3", "NOSASL", False, False),
    ("0.0.0.0", "LDAP", False, True), ("0.0.0.0", "KERBEROS", False, True), ("0.0.0.0", "NONE", True, True)])
def test_listening_beyond_loopback_needs_authentication_or_an_explicit_yes(host, auth, allowed, ok):
    from lesionspark.core.config import ConfigError
    settings = {"host": host, "authentication": auth, "allow_unauthenticated": allowed}
    if ok:
        check_listen(settings)
    else:
        with pytest.raises(ConfigError, match="not loopback"):
            check_listen(settings)
