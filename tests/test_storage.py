"""The storage contract (``storage.Contract``) held on three filesystems: the local one, and the
strict wrappers of ``strictfs`` that move and refuse the way Arrow's HDFS and S3 filesystems do.
Publish and lease are killed between storage operations (``LESIONSPARK_CRASH_AT``); contenders
race for the lease over many trials."""
import subprocess
import sys
from pathlib import Path

import pytest

import strictfs
from lesionspark.store import storage
from lesionspark.store import publishing
from lesionspark.core.config import Config
from lesionspark.store.lease import Lease, LeaseHeld
from lesionspark.store.spark import check_root

strictfs.register()
HERE = Path(__file__).parent


def uri(tmp_path: Path, scheme: str, name: str) -> str:
    path = tmp_path / scheme / name
    return str(path) if scheme == "local" else f"{scheme}://{path}"


def files(u: str) -> dict[str, str]:
    fs, path = storage.filesystem(u)
    import pyarrow.fs as pafs
    if fs.get_file_info(path).type == pafs.FileType.NotFound:
        return {}
    return {i.base_name: storage.read_bytes(f"{u}/{i.base_name}").decode()
            for i in fs.get_file_info(pafs.FileSelector(path))}


def names(u: str) -> list[str]:
    import pyarrow.fs as pafs
    fs, path = storage.filesystem(u)
    return sorted(i.base_name for i in fs.get_file_info(pafs.FileSelector(path, allow_not_found=True)))


def test_s3_options_come_from_the_s3a_settings_spark_uses():
    opts = storage.s3_options({"spark.hadoop.fs.s3a.endpoint": "http://minio.local:9000",
                               "spark.hadoop.fs.s3a.path.style.access": "true",
                               "spark.hadoop.fs.s3a.access.key": "AK", "spark.hadoop.fs.s3a.secret.key": "SK",
                               "spark.hadoop.fs.s3a.endpoint.region": "eu-1"})
    assert opts == {"endpoint_override": "minio.local:9000", "scheme": "http", "access_key": "AK",
                    "secret_key": "SK", "region": "eu-1"}
    assert storage.s3_options({"fs.s3a.endpoint": "s3.example.org", "fs.s3a.path.style.access": "true",
                               "fs.s3a.connection.ssl.enabled": "false"})["scheme"] == "http"
    assert storage.s3_options({}) == {}
    with pytest.raises(storage.StorageRefused, match="path.style"):
        storage.s3_options({"fs.s3a.endpoint": "https://ecs.example.org"})


def test_each_filesystem_has_its_contract():
    assert storage.contract("/x").kind == "local" and storage.contract("hdfs://nn/x").exclusive_create == "hadoop"
    for u in ("s3a://b/x", "s3://b/x", "gs://b/x", "weird://b/x"):
        assert not storage.contract(u).dir_rename
    assert storage.contract("s3a://b/x").exclusive_create == "conditional-put"  # asked of the store: test_s3
    assert storage.contract("gs://b/x").exclusive_create is None and storage.contract("weird://b/x").exclusive_create is None


def test_a_local_root_with_a_cluster_master_is_refused_unless_shared():
    cfg = Config.load(overrides=["storage.root=/data/root"])
    check_root(cfg, "local[4]")
    check_root(cfg.with_overrides({"storage.root": "hdfs://nn/root"}), "yarn")
    with pytest.raises(Exception, match="each executor would write to its own disk"):
        check_root(cfg, "spark://master:7077")
    check_root(cfg.with_overrides({"storage.shared_filesystem": True}), "spark://master:7077")


@pytest.mark.parametrize("scheme", ["local", "hdfslike", "s3like"])
def test_replacing_a_file_leaves_the_new_content_and_nothing_else(tmp_path, scheme):
    d = uri(tmp_path, scheme, "d")
    for i in range(3):
        storage.replace_file(f"{d}/latest", f"v{i}".encode())
    assert files(d) == {"latest": "v2"}


@pytest.mark.parametrize("scheme", ["local", "hdfslike", "s3like"])
def test_publish_replaces_a_directory_whole(tmp_path, scheme):
    out = uri(tmp_path, scheme, "out")
    for version in ("v1", "v2"):
        publish = publishing.AtomicDir(out, f"2026-{version}")
        with publish as staging:
            for i in range(3):
                storage.write_bytes(f"{staging}/part-{i}", version.encode())
        assert publishing.resolve(out) == publish.published
    assert files(publishing.resolve(out)) == {f"part-{i}": "v2" for i in range(3)}
    assert names(out.rsplit("/", 1)[0]) == ["out"]  # no leftovers
    if scheme == "s3like":  # no directory move: the record names the version readers use
        assert names(out) == [publishing.PUBLISHED, "_v-2026-v2"]
        assert publishing.resolve(out) == f"{out}/_v-2026-v2"
    else:
        assert publishing.resolve(out) == storage.normalize_uri(out)  # no record to read: no I/O


def test_on_an_object_store_readers_see_the_old_version_until_the_record_names_the_new(tmp_path):
    out = uri(tmp_path, "s3like", "out")
    with publishing.AtomicDir(out, "r1") as staging:
        storage.write_bytes(f"{staging}/part-0", b"r1")
    with pytest.raises(RuntimeError):
        with publishing.AtomicDir(out, "r2") as staging:
            storage.write_bytes(f"{staging}/part-0", b"r2")
            assert files(publishing.resolve(out)) == {"part-0": "r1"}  # written, not yet published
            raise RuntimeError("the stage failed")
    assert files(publishing.resolve(out)) == {"part-0": "r1"} and names(out) == [publishing.PUBLISHED, "_v-r1"]
    with pytest.raises(ValueError, match="cannot name a version folder"):
        publishing.AtomicDir(out, "../r3")


@pytest.mark.parametrize("record", ['{"version": "../../elsewhere"}', '{"version": "_v-r1/../../x"}',
                                    '{"version": 7}', "not json", '{"other": 1}'])
def test_a_hostile_publish_record_is_refused_not_followed(tmp_path, record):
    """The record is read from a shared store: a path in it must never lead a reader elsewhere."""
    out = uri(tmp_path, "s3like", "out")
    with publishing.AtomicDir(out, "r1") as staging:
        storage.write_bytes(f"{staging}/part-0", b"r1")
    storage.replace_file(f"{out}/{publishing.PUBLISHED}", record.encode())
    with pytest.raises(storage.StorageRefused, match="refusing"):
        publishing.resolve(out)
    with pytest.raises(storage.StorageRefused):  # nor does a publish guess what to keep
        with publishing.AtomicDir(out, "r2"):
            raise AssertionError("no work may start")


def test_a_folder_copied_by_hand_onto_an_object_store_is_read_until_a_publish_replaces_it(tmp_path):
    out = uri(tmp_path, "s3like", "out")
    storage.write_bytes(f"{out}/part-0", b"by hand")
    assert files(publishing.resolve(out)) == {"part-0": "by hand"}
    with publishing.AtomicDir(out, "r1") as staging:
        storage.write_bytes(f"{staging}/part-0", b"r1")
    assert files(publishing.resolve(out)) == {"part-0": "r1"} and names(out) == [publishing.PUBLISHED, "_v-r1"]


PUBLISH = """
import sys
sys.path.insert(0, {here!r})
import strictfs
strictfs.register()
from lesionspark.store import publishing, storage
with publishing.AtomicDir(sys.argv[1], sys.argv[2]) as staging:
    for i in range(4):
        storage.write_bytes(f"{{staging}}/part-{{i}}", sys.argv[2].encode())
"""


def _publish(out: str, version: str, crash_at: int | None = None) -> int:
    env = {"LESIONSPARK_CRASH_AT": str(crash_at)} if crash_at else {}
    import os
    return subprocess.run([sys.executable, "-c", PUBLISH.format(here=str(HERE)), out, version],
                          env={**os.environ, **env}, timeout=120).returncode


@pytest.mark.parametrize("scheme", ["hdfslike", "s3like"])
def test_a_publish_killed_between_any_two_storage_operations_leaves_the_old_or_the_new(tmp_path, scheme):
    """Killed at every step of a publish over a good output, then recovered by the next run's start:
    readers find the old output whole or the new one whole, never a mix and never nothing."""
    out = uri(tmp_path, scheme, "out")
    assert _publish(out, "2026-a") == 0
    old = files(publishing.resolve(out))
    outcomes = set()
    for k in range(1, 60):
        code = _publish(out, "2026-b", crash_at=k)
        publishing.AtomicDir(out, "2026-recover")._cleanup_leftovers()  # what the next run does first
        now = files(publishing.resolve(out))
        assert now in (old, {f"part-{i}": "2026-b" for i in range(4)}), (k, now)
        outcomes.add("new" if now != old else "old")
        if code == 0:
            break
        assert code == 77
        assert _publish(out, "2026-a") == 0  # back to the old output for the next crash point
        old = files(publishing.resolve(out))
    else:
        raise AssertionError("the publish never completed")
    # every step was a crash point, and the run then finished: 4 writes, then 2 renames and a delete
    # (hdfslike) or the record's PUT and a delete of the old version (s3like)
    assert outcomes == {"old", "new"} and k == {"hdfslike": 8, "s3like": 7}[scheme]
    assert names(out.rsplit("/", 1)[0]) == ["out"]


@pytest.mark.parametrize("scheme", ["local", "hdfslike"])
def test_contenders_racing_for_a_lease_get_exactly_one_holder_every_time(tmp_path, scheme):
    for trial in range(25):
        results = strictfs.race(uri(tmp_path, scheme, f"lease-{trial}"), 6)
        assert [r for r in results if r[0] == "held"] == [("held", 1)], (trial, results)


def test_renewals_never_hide_the_holders_generation_on_a_clobbering_filesystem(tmp_path):
    """hdfslike moves delete the destination first: a renewal that rewrote the generation file
    would leave it missing for a moment, and a taker could create the same generation."""
    d = uri(tmp_path, "hdfslike", "lease")
    with Lease(d, "holder", ttl_s=0.3) as lease:  # renews every 0.1 s
        watcher = Lease(d, "watcher", wait_s=0)
        seen = set()
        for _ in range(200):
            gen, holder = watcher.newest()
            seen.add((gen, holder and holder.get("run_id")))
            with pytest.raises(LeaseHeld):
                watcher.acquire()
        assert seen == {(lease.generation, "holder")}
        lease.check()


def test_a_lease_on_an_object_store_is_refused_unless_single_writer(tmp_path):
    d = uri(tmp_path, "s3like", "lease")
    with pytest.raises(storage.StorageRefused, match="single_writer"):
        Lease(d, "r1")
    with Lease(d, "r1", single_writer=True) as lease:
        assert lease.generation == 1


def test_the_hdfs_exclusive_create_goes_through_spark_s_jvm(spark, tmp_path):
    """The py4j path used for hdfs:// roots, exercised on the JVM's local filesystem (whose rename,
    unlike HDFS's, may replace: only HDFS's "false when the destination exists" makes it exclusive)."""
    target = f"file://{tmp_path}/lease-000000000001.json"
    assert storage._hadoop_create_exclusive(target, b'{"run_id": "r1"}') is True
    assert (tmp_path / "lease-000000000001.json").read_bytes() == b'{"run_id": "r1"}'
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".") or "tmp" in p.name) == \
        ["lease-000000000001.json"]  # the temporary name is gone


def test_has_files_finds_data_files_and_skips_what_spark_skips(tmp_path):
    t = tmp_path / "predictions"
    (t / "scored_date=2026-11-30").mkdir(parents=True)
    (t / "_staging").mkdir()
    (t / "_staging" / "part-0.parquet").write_bytes(b"x")
    (t / "_SUCCESS").write_bytes(b"")
    assert not storage.has_files(str(t))  # a killed commit's empty partition folder
    (t / "scored_date=2026-11-30" / "run_id=r1").mkdir()
    (t / "scored_date=2026-11-30" / "run_id=r1" / "part-0.parquet").write_bytes(b"x")
    assert storage.has_files(str(t)) and not storage.has_files(str(tmp_path / "missing"))


def test_the_hdfs_file_replace_goes_through_spark_s_jvm(spark, tmp_path):
    """The py4j path of ``replace_file`` on hdfs:// roots (``FileContext.rename`` with OVERWRITE),
    exercised on the JVM's local filesystem: the file is replaced whole and no temporary name stays."""
    target = f"file://{tmp_path}/latest"
    for version in ("v1", "v2"):
        assert storage._hadoop_replace(target, version.encode()) is True
        assert (tmp_path / "latest").read_bytes() == version.encode()
    assert [p.name for p in tmp_path.iterdir() if not p.name.startswith(".")] == ["latest"]


def test_the_hdfs_client_is_chosen_without_connecting_and_its_errors_are_io_errors(tmp_path, monkeypatch):
    """libhdfs is chosen where ``libhdfs.so`` is where pyarrow looks (no NameNode is asked); an
    hdfs-native error that is not a missing file (a DataNode gone) reaches callers as ``OSError``,
    which the Reader turns into an ``unreadable`` reject."""
    import errno
    from lesionspark.store import hdfs
    hdfs._libhdfs_loads.cache_clear()
    monkeypatch.delenv("HADOOP_HOME", raising=False)
    monkeypatch.setenv("ARROW_LIBHDFS_DIR", str(tmp_path))
    assert hdfs.client() == "native"
    hdfs._libhdfs_loads.cache_clear()
    (tmp_path / "libhdfs.so").write_bytes(b"")
    assert hdfs.client() == "libhdfs"
    hdfs._libhdfs_loads.cache_clear()

    class Gone:
        def info(self, path):
            raise RuntimeError("all DataNodes are bad")

        def open(self, path, mode="rb"):
            raise RuntimeError("all DataNodes are bad")
        isfile = info
    handler = hdfs._NativeHandler(Gone())
    for call in (lambda: handler.get_file_info(["/a"]), lambda: handler.open_input_file("/a"),
                 lambda: handler.open_input_stream("/a")):
        with pytest.raises(OSError) as err:
            call()
        assert err.value.errno == errno.EIO and "DataNodes" in str(err.value)
