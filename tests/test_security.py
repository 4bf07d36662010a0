"""The trust boundaries of docs/security.md, each with a test that fails without its guard."""
import os
import subprocess
import sys
import textwrap

import pytest

from lesionspark.store import runlog
from lesionspark.sql.query import SqlRefused, check_out, run_query

pytestmark = pytest.mark.spark

CRAFT = textwrap.dedent("""
    import os, sys
    import pyarrow as pa, pyarrow.parquet as pq
    class Evil(pa.PyExtensionType):  # CVE-2023-47248: its pickle runs when a reader meets the type
        def __init__(self):
            super().__init__(pa.int64())
        def __reduce__(self):
            return (os.system, ("touch " + sys.argv[2],))
    pq.write_table(pa.table({"x": pa.ExtensionArray.from_storage(Evil(), pa.array([1]))}), sys.argv[1])
""")


@pytest.fixture()
def planted(tmp_path):
    """A crafted Parquet file planted where runlog.read looks: (root, file, marker its code would create)."""
    root = tmp_path / "root"
    evil = root / "tables" / "score_runs" / "run_id=planted" / "part-0.parquet"
    evil.parent.mkdir(parents=True)
    marker = tmp_path / "PWNED"
    subprocess.run([sys.executable, "-c", CRAFT, str(evil), str(marker)], check=True)
    assert not marker.exists()
    return root, evil, marker


def test_the_planted_file_runs_code_in_plain_pyarrow(planted):
    """The control: the file is a working exploit on this pyarrow, so the tests below can fail."""
    _, evil, marker = planted
    subprocess.run([sys.executable, "-c", f"import pyarrow.parquet as pq\ntry: pq.read_table({str(evil)!r})\n"
                    "except Exception: pass"], check=True)
    assert marker.exists()


def test_reading_the_run_table_in_a_fresh_driver_runs_no_code(planted):
    root, _, marker = planted
    out = subprocess.run([sys.executable, "-c", "from lesionspark.store import runlog, storage\nimport sys\n"
                          f"print(runlog.read({str(root)!r}))\nprint(runlog.reap({str(root)!r}, 'me'))"],
                         capture_output=True, text=True)
    assert out.returncode == 0, (out.returncode, out.stdout[-2000:], out.stderr[-4000:])  # the cause, if it dies
    assert not marker.exists()
    assert out.stdout.split() == ["[]", "[]"]  # skipped with a warning: no crash, no row


def test_reading_it_in_a_spark_python_worker_runs_no_code(spark, planted):
    root, _, marker = planted
    rows = spark.sparkContext.parallelize([str(root)], 1).map(runlog.read).collect()
    assert rows == [[]] and not marker.exists()


def test_reading_it_in_a_horovod_rank_process_runs_no_code(planted):
    """A rank starts by importing lesionspark.train.executor; Petastorm reads with pyarrow after it. The child
    leaves by ``os._exit`` once it has said what happened: after refusing the file inside a dataset
    thread, pyarrow's thread pool can abort the interpreter's teardown (SIGABRT, about 1 run in 4,
    more under load; ``runlog.read`` avoids that reader for the same reason)."""
    _, evil, marker = planted
    out = subprocess.run([sys.executable, "-c", ""
                          "import os, sys\nimport lesionspark.train.executor\nimport pyarrow.parquet as pq\n"
                          f"try: pq.read_table({str(evil)!r})\n"
                          "except RuntimeError as e: print('refused' if 'Disallowed' in str(e) else f'other: {e}')\n"
                          "else: print('read')\nsys.stdout.flush()\nos._exit(0)"],
                         capture_output=True, text=True)
    assert out.stdout.split() == ["refused"], (out.returncode, out.stdout[-2000:], out.stderr[-2000:])
    assert not marker.exists()


@pytest.mark.parametrize("statement", [
    "INSERT OVERWRITE DIRECTORY '/tmp/ls-out' USING parquet SELECT 1",
    "ADD JAR /tmp/x.jar",
    "CREATE TABLE t USING parquet AS SELECT 1 AS a",
    "DROP TABLE IF EXISTS metrics",
    "SET spark.sql.runSQLOnFiles=true",
    "CACHE TABLE c AS SELECT 1",
    "CREATE TEMPORARY FUNCTION f AS 'x.Y'",
    "CREATE OR REPLACE TEMPORARY VIEW v AS SELECT 1",
])
def test_sql_refuses_statements_that_write_or_change_the_session(spark, tmp_path, statement):
    with pytest.raises(SqlRefused, match="--allow-writes"):
        run_query(spark, str(tmp_path), statement)


def test_sql_refuses_raw_file_reads_and_runs_queries(spark, tmp_path):
    with pytest.raises(SqlRefused, match="allow-writes"):
        run_query(spark, str(tmp_path), "SELECT * FROM text.`file:/etc/hostname`")
    assert run_query(spark, str(tmp_path), "WITH t AS (SELECT 1 AS a) SELECT a + 1 AS b FROM t")["b"].tolist() == [2]
    assert len(run_query(spark, str(tmp_path), "VALUES (1), (2)")) == 2
    assert spark.conf.get("spark.sql.runSQLOnFiles") == "true"  # the session's own setting is restored
    out = tmp_path / "elsewhere"
    run_query(spark, str(tmp_path), f"INSERT OVERWRITE DIRECTORY '{out}' USING parquet SELECT 7 AS x",
              allow_writes=True)
    assert spark.read.parquet(str(out)).collect()[0]["x"] == 7


def test_sql_out_may_not_point_into_the_storage_root(tmp_path):
    root = tmp_path / "root"
    for bad in (root, root / "tables", root / "tables" / "metrics"):
        with pytest.raises(SqlRefused, match="inside the storage root"):
            check_out(str(root), str(bad))
    assert check_out(str(root), str(tmp_path / "root-export.csv")).endswith("root-export.csv")


def test_cli_sql_refusal_is_a_clear_error(tmp_path, capsys):
    from lesionspark.cli import main
    code = main(["sql", "--root", str(tmp_path), "-q", "DROP TABLE metrics", "spark.master=local[1]",
                 "spark.conf.spark.ui.enabled=false"])
    assert code == 2


def test_reject_details_never_carry_the_path(tmp_path):
    from lesionspark.store.listing import Reader
    folder = tmp_path / "DOE_JOHN"
    folder.mkdir()
    (folder / "a.jpg").write_bytes(b"x")
    os.chmod(folder / "a.jpg", 0)
    reader = Reader([str(tmp_path)])
    paths = [f"file:{folder}/a.jpg", f"file:{folder}/gone.jpg"]
    _, shas, reasons, details = reader.fetch(paths, [1, 1], 100, "archive.max_file_bytes")
    assert reasons == ["unreadable", "unreadable"] or os.geteuid() == 0  # root reads mode-0 files
    for d in details:
        assert d is None or "DOE_JOHN" not in d
    assert "DOE_JOHN" not in details[1] and "No such file" in details[1]


@pytest.mark.slow
def test_everything_a_run_writes_is_closed_to_others(synth_small, tmp_path):
    """A scoring run as a user starts it (a fresh process, so Spark's JVM and Python workers start
    under it), with flagged overlays and DICOM results: no file or folder it writes is readable by others."""
    import shutil
    from pydicom.uid import generate_uid
    from conftest import publish_untrained_model
    from test_dicom import dicom_from_jpeg
    archive = tmp_path / "archive"
    archive.mkdir()
    for p in sorted(os.listdir(synth_small["images"][0]))[:6]:
        shutil.copy(os.path.join(synth_small["images"][0], p), archive / p)
    jpeg = (archive / sorted(os.listdir(archive))[0]).read_bytes()
    (archive / "IMG0001").write_bytes(dicom_from_jpeg(jpeg, generate_uid(), generate_uid(), generate_uid()))
    root = tmp_path / "root"
    publish_untrained_model(root, name="m", size=32)
    os.umask(0o022)  # the usual default, which would leave everything world-readable
    subprocess.run([sys.executable, "-m", "lesionspark.cli", "--log-level", "WARN", "score", "--root", str(root),
                    "--archive", str(archive), "--model", "m:v1", "score.explain_flagged=true", "score.dicom_results=true",
                    "evaluate.default_threshold=0.0", "spark.master=local[1]", "spark.conf.spark.ui.enabled=false"],
                   check=True, capture_output=True)
    written = [os.path.join(d, n) for d, dirs, files in os.walk(root / "tables") for n in dirs + files]
    for folder in ("explanations", "dicom_results"):
        written += [os.path.join(d, n) for d, dirs, files in os.walk(root / folder) for n in dirs + files]
    assert any(w.endswith(".png") for w in written) and any("predictions" in w for w in written)
    assert any(w.endswith(".dcm") for w in written)
    open_to_others = [w for w in written if os.stat(w).st_mode & 0o007]
    assert not open_to_others, open_to_others[:5]


def test_a_model_file_with_a_code_layer_is_refused(tmp_path):
    """A .keras file whose Lambda layer carries Python code: loading it refuses, nothing runs."""
    import tensorflow as tf
    from lesionspark.inference.predictor import load_model
    marker = str(tmp_path / "RAN")
    inputs = tf.keras.Input((4,))
    outputs = tf.keras.layers.Lambda(lambda x: (__import__("os").system("touch " + marker), x)[1])(inputs)
    path = tmp_path / "model.keras"
    tf.keras.Model(inputs, outputs).save(path)
    if os.path.exists(marker):
        os.remove(marker)  # saving traced the function once
    with pytest.raises(ValueError, match="[Ll]ambda|unsafe|safe_mode"):
        load_model(f"file://{path}")
    assert not os.path.exists(marker)
