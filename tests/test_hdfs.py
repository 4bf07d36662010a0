"""A real HDFS (the ``namenode`` fixture of conftest.py: Hadoop's MiniDFSCluster). The storage
contract the stand-in ``hdfslike`` imitates (tests/test_storage.py) is held here on the real
NameNode: files replaced and listed, a directory published whole, a publish killed between any two
operations, contenders racing for the lease, a lease holder killed, score's commit stopped before
each move. Every stage on an ``hdfs://`` root: tests/test_hdfs_stages.py."""
import subprocess
import sys
import time
from pathlib import Path

import pytest

import strictfs
from conftest import make_cfg, publish_untrained_model
from lesionspark.store import hdfs, publishing, storage
from test_storage import files, names

pytestmark = pytest.mark.slow  # a NameNode's JVM for the module


def test_the_python_side_uses_hdfs_native_where_libhdfs_does_not_load(namenode):
    assert hdfs.client() == "native"
    fs, path = storage.filesystem(f"{namenode}/probe/a.bin")
    assert path == "/probe/a.bin" and fs.type_name == "py::fsspec+hdfs"


def test_files_are_replaced_listed_and_published_whole_on_the_namenode(spark, namenode):
    d = f"{namenode}/contract"
    for i in range(3):
        storage.replace_file(f"{d}/latest", f"v{i}".encode())  # the driver: Hadoop's rename2 through the JVM
    assert files(d) == {"latest": "v2"}
    fs, path = storage.filesystem(d)
    info = fs.get_file_info(f"{path}/latest")
    assert info.size == 2 and abs(info.mtime.timestamp() - time.time()) < 300  # the listing's mtime, as score needs it
    fs.create_dir(f"{path}/py")
    for name in ("a", "b"):
        with fs.open_output_stream(f"{path}/py/{name}") as fh:
            fh.write(name.encode())
    fs.move(f"{path}/py/a", f"{path}/py/b")  # an executor's or a rank's replace: over the old file
    assert files(f"{d}/py") == {"b": "a"}
    out = f"{d}/out"
    for version in ("v1", "v2"):
        publish = publishing.AtomicDir(out, f"2026-{version}")
        with publish as staging:
            for i in range(3):
                storage.write_bytes(f"{staging}/part-{i}", version.encode())
        assert publishing.resolve(out) == publish.published == out  # directories move: no record
    assert files(out) == {f"part-{i}": "v2" for i in range(3)}
    assert names(d) == ["latest", "out", "py"]  # no staging or old folder left


PUBLISH = """
import sys
sys.path.insert(0, {here!r})
import strictfs
strictfs.register_crashing({namenode!r})
from lesionspark.store import publishing, storage
with publishing.AtomicDir(sys.argv[1], sys.argv[2]) as staging:
    for i in range(4):
        storage.write_bytes(f"{{staging}}/part-{{i}}", sys.argv[2].encode())
"""


def _publish_real(namenode: str, out: str, version: str, crash_at: int | None = None) -> int:
    import os
    env = {**os.environ, **({"LESIONSPARK_CRASH_AT": str(crash_at)} if crash_at else {})}
    script = PUBLISH.format(here=str(Path(__file__).parent), namenode=namenode)
    return subprocess.run([sys.executable, "-c", script, out, version], env=env, timeout=120).returncode


def test_a_publish_killed_between_any_two_operations_leaves_the_old_or_the_new(namenode):
    """Every operation of a publish on the NameNode is a crash point (``strictfs.Crashing`` counts
    them on the real filesystem); after each, the next run's start recovers the old output or the
    new one, whole."""
    strictfs.register_crashing(namenode)
    out, real = "hdfscrash:///killed/out", f"{namenode}/killed/out"
    assert _publish_real(namenode, out, "2026-a") == 0
    old = files(real)
    for k in range(1, 30):
        code = _publish_real(namenode, out, "2026-b", crash_at=k)
        publishing.AtomicDir(out, "2026-recover")._cleanup_leftovers()  # what the next run does first
        now = files(real)
        assert now in (old, {f"part-{i}": "2026-b" for i in range(4)}), (k, now)
        if code == 0:
            break
        assert code == 77
        assert _publish_real(namenode, out, "2026-a") == 0
    assert k == 8 and names(f"{namenode}/killed") == ["out"]  # the same 8 steps as the stand-in


def test_contenders_racing_for_a_lease_on_the_namenode_get_exactly_one_holder(spark, namenode):
    for trial in range(10):
        results = strictfs.race(f"{namenode}/leases/lease-{trial}", 6)
        assert [r for r in results if r[0] == "held"] == [("held", 1)], (trial, results)
        assert sorted(r[0] for r in results) == ["held"] + ["refused"] * 5, results


def test_a_commit_stopped_before_each_move_on_the_namenode_is_finished_by_the_next_run(spark, namenode, genuine_dir,
                                                                                     tmp_path, monkeypatch):
    """``commitcrash.replay`` on the NameNode: partitions moved as directories, each crash point's
    root a copy made by Hadoop's ``FileUtil.copy``."""
    import commitcrash
    a = tmp_path / "archive"
    (a / "day2").mkdir(parents=True)
    genuine = sorted((genuine_dir / "images").glob("*.jpg"))[:3]
    for p in genuine:
        (a / p.name).write_bytes(p.read_bytes())
    (a / "day2" / "again.jpg").write_bytes(genuine[0].read_bytes())  # a second path of one content
    (a / "day2" / "broken.jpg").write_bytes(b"not a jpeg")
    publish_untrained_model(tmp_path / "registry")
    model = (tmp_path / "registry" / "models" / "cnn" / "v1").as_uri()

    def cfg(root):
        return make_cfg(root, score__archive=str(a), score__model=model, archive__max_file_bytes=1_000_000)
    hfs = spark._jvm.org.apache.hadoop.fs
    conf = spark._jsc.hadoopConfiguration()
    jfs = hfs.Path(namenode).getFileSystem(conf)

    def copy(point):
        hfs.FileUtil.copy(jfs, hfs.Path(f"{namenode}/staged"), jfs, hfs.Path(f"{namenode}/crash-{point}"), False, conf)
        return f"{namenode}/crash-{point}"
    commitcrash.stop_at_commit(spark, cfg(f"{namenode}/staged"), monkeypatch)
    assert "stopped" in names(f"{namenode}/staged/tables/_staging")
    point, results = commitcrash.replay(spark, copy, cfg, per_file=False)
    assert point >= 4 and len(set(results)) == 1, (point, results)  # every stopped commit ends as the whole one
    assert sum(results[0]) == 4  # 5 files, one content twice


HOLDER = """
import sys, time
from pyspark.sql import SparkSession
SparkSession.builder.master("local[1]").config("spark.ui.enabled", "false").getOrCreate()
from lesionspark.store.lease import Lease
lease = Lease(sys.argv[1], "doomed", ttl_s=3).acquire()
print("held", lease.generation, flush=True)
time.sleep(600)
"""


def test_a_holder_killed_on_the_namenode_blocks_only_until_its_lease_expires(spark, namenode):
    """A driver holding the lease (its own JVM), killed with SIGKILL: the next run waits about one
    TTL, then takes over with the next generation."""
    import os
    import signal
    from lesionspark.store.lease import Lease
    directory = f"{namenode}/leases/killed"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, directory], stdout=subprocess.PIPE, text=True,
                              stderr=subprocess.DEVNULL, env={**os.environ, "PYSPARK_PYTHON": sys.executable})
    try:
        assert holder.stdout.readline().startswith("held")
        time.sleep(2.5)  # the holder renewed at least once (every ttl/3 = 1 s)
        gen, content = Lease(directory, "x").newest()
        assert content["run_id"] == "doomed" and content["expires"] > time.time()
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
    killed_at = time.monotonic()
    with Lease(directory, "next", ttl_s=3, wait_s=30, poll_s=0.2) as lease:
        waited = time.monotonic() - killed_at
        assert 0.0 < waited < 8 and lease.taken_over["run_id"] == "doomed"
        assert lease.generation == gen + 1
