"""An S3 API server (moto) on loopback, reached through pyarrow's S3 filesystem with options made
from the ``fs.s3a.*`` settings Spark uses: one configuration for both layers. The S3 contract
holds there: files are read and replaced, directory moves (publish, commit) and the lease are
refused before any work, and an executor gets the same options from its environment."""
import json
import os
import socket
import subprocess
import sys

import pyarrow.fs as pafs
import pytest

from lesionspark import storage
from lesionspark.lease import Lease

moto_server = pytest.importorskip("moto.server")  # in requirements/lock.txt: CI installs it


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3():
    port = _free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    settings = {"spark.hadoop.fs.s3a.endpoint": f"http://127.0.0.1:{port}",
                "spark.hadoop.fs.s3a.path.style.access": "true",
                "spark.hadoop.fs.s3a.access.key": "test-key", "spark.hadoop.fs.s3a.secret.key": "test-secret",
                "spark.hadoop.fs.s3a.endpoint.region": "us-east-1"}
    options = storage.s3_options(settings)
    storage.configure_s3(options)
    pafs.S3FileSystem(**options, allow_bucket_creation=True).create_dir("derm")  # the bucket
    try:
        yield options
    finally:
        storage.configure_s3({})
        server.stop()


def test_files_are_written_read_and_replaced_through_the_s3a_settings(s3):
    storage.write_bytes("s3a://derm/root/a.json", b"{}")
    for i in range(3):
        storage.replace_file("s3a://derm/root/models/cnn/latest", f"v{i}".encode())
    assert storage.read_bytes("s3a://derm/root/models/cnn/latest") == b"v2"
    fs, path = storage.filesystem("s3a://derm/root/models/cnn")
    assert [i.base_name for i in fs.get_file_info(pafs.FileSelector(path))] == ["latest"]  # no temp names


def test_the_contract_is_what_the_store_does(s3):
    """Arrow's S3 filesystem refuses to move a directory: what publish and commit need."""
    storage.write_bytes("s3a://derm/root/dir/part-0", b"x")
    fs, path = storage.filesystem("s3a://derm/root/dir")
    with pytest.raises(OSError):
        fs.move(path, path + "-moved")
    assert not storage.contract("s3a://derm/root").dir_rename


def test_publish_commit_and_lease_are_refused_before_any_work(s3):
    with pytest.raises(storage.StorageRefused, match="cannot move a directory"):
        with storage.AtomicDir("s3a://derm/root/datasets/ham10000", "r1"):
            raise AssertionError("no work may start")
    with pytest.raises(storage.StorageRefused, match="commit"):
        storage.require("s3a://derm/root", "commit")
    with pytest.raises(storage.StorageRefused, match="single_writer"):
        Lease("s3a://derm/root/tables/_lease", "r1")
    with Lease("s3a://derm/root/tables/_lease", "r1", ttl_s=30, single_writer=True) as lease:
        lease.check()
        assert lease.generation == 1


def test_an_executor_gets_the_same_options_from_its_environment(s3):
    """What spark.get_spark hands to executors and ranks in spark.executorEnv."""
    storage.write_bytes("s3a://derm/root/shared.txt", b"seen by executors")
    code = "from lesionspark import storage; print(storage.read_bytes('s3a://derm/root/shared.txt').decode())"
    env = {**os.environ, "LESIONSPARK_S3_OPTIONS_SECRET": json.dumps(s3)}
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "seen by executors", r.stderr[-2000:]


def test_an_archive_on_the_store_is_listed_with_s3a_paths(spark, s3):
    """Inputs may live on the store: the driver expands the top folders, executors list the files."""
    from lesionspark.listing import list_files
    names = ["top.jpg", "ward A/x.jpg", "ward A/2026/y.jpg", "ward B/z.png", ".hidden/no.jpg"]
    for name in names:
        storage.write_bytes(f"s3a://derm/archive/{name}", b"x" * len(name))
    rows = list_files(spark, ["s3a://derm/archive"], min_dirs=2).toPandas()
    assert sorted(rows["path"]) == sorted(f"s3a://derm/archive/{n}" for n in names if not n.startswith("."))
    assert dict(zip(rows["path"], rows["length"]))["s3a://derm/archive/ward A/x.jpg"] == len("ward A/x.jpg")
