"""An S3 API server (moto) on loopback, reached through pyarrow's S3 filesystem with options made
from the ``fs.s3a.*`` settings Spark uses: one configuration for both layers. The S3 contract
holds there: files are read and replaced, a publish writes a version folder and then names it in
one PUT (there is no directory move), Petastorm reads a published dataset, the lease is taken by
conditional PUTs (``If-None-Match: *``) and refused on a store that ignores them, and an executor
gets the same options from its environment."""
import json
import os
import socket
import subprocess
import sys
import threading

import pyarrow.fs as pafs
import pytest

import strictfs
from lesionspark.store import storage
from lesionspark.store.layout import Layout
from lesionspark.store import publishing
from lesionspark.store.lease import Lease, LeaseHeld

moto_app = pytest.importorskip("moto.moto_server.werkzeug_app")  # in requirements/lock.txt: CI installs it


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Store:
    """moto's S3 application as a store behaves. A store decides a conditional PUT atomically per
    key; moto checks, then writes, so requests are served one at a time. The bucket ``legacy``
    is a store that ignores conditional writes: its requests lose the If-None-Match header."""

    def __init__(self):
        self.app, self.lock = moto_app.DomainDispatcherApplication(moto_app.create_backend_app), threading.Lock()

    def __call__(self, environ, start_response):
        if environ.get("PATH_INFO", "").startswith("/legacy/"):
            environ.pop("HTTP_IF_NONE_MATCH", None)
        with self.lock:
            return list(self.app(environ, start_response))


@pytest.fixture(scope="module")
def s3():
    from werkzeug.serving import make_server
    port = _free_port()
    server = make_server("127.0.0.1", port, Store(), threaded=True, request_handler=moto_app.MotoRequestHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    settings = {"spark.hadoop.fs.s3a.endpoint": f"http://127.0.0.1:{port}",
                "spark.hadoop.fs.s3a.path.style.access": "true",
                "spark.hadoop.fs.s3a.access.key": "test-key", "spark.hadoop.fs.s3a.secret.key": "test-secret",
                "spark.hadoop.fs.s3a.endpoint.region": "us-east-1"}
    options = storage.s3_options(settings)
    storage.configure_s3(options)
    for bucket in ("derm", "legacy"):
        pafs.S3FileSystem(**options, allow_bucket_creation=True).create_dir(bucket)
    try:
        yield options
    finally:
        storage.configure_s3({})
        server.shutdown()
        thread.join()


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


def _publish_dataset(uri: str, run_id: str, ids: list[str]) -> None:
    """What ingest does after decoding: task-written parts moved into a staging version, Petastorm
    metadata written, the version published."""
    from lesionspark.store import parts
    from lesionspark.dataset.schema import lesion_schema
    from test_parts import SIZE, records
    with publishing.AtomicDir(uri, run_id) as staging, parts.scratch(staging, ["train", "val"]) as parts_uri:
        writer = parts.PartWriter(parts_uri, lesion_schema(SIZE), rowgroup_bytes=1, rows_per_file=4,
                                  names=(0, "a1"))
        names, groups = writer.add("train", records(ids))
        writer.close()
        committed = {}
        for name, group in zip(names, groups):
            committed[name] = max(committed.get(name, 0), group + 1)
        parts.publish(parts_uri, staging, lesion_schema(SIZE), {"train": committed, "val": {}})
        storage.write_json(f"{staging}/manifest.json", {"run_id": run_id})


def _read_split(url: str) -> list[str]:
    from lesionspark.dataset.petastorm_reader import make_reader
    with make_reader(url, num_epochs=1, reader_pool_type="dummy", shuffle_row_groups=False) as reader:
        return [row.image_id for row in reader]


def test_a_dataset_is_published_on_the_store_and_read_back_with_petastorm(s3):
    """No directory move on S3: the dataset is built in a version folder and published by one PUT
    of its record; readers resolve it (Layout) and Petastorm reads it through the same
    pyarrow filesystem and options (no s3fs)."""
    layout = Layout("s3a://derm/root")
    _publish_dataset(layout.dataset("ham"), "r1", [f"a{i}" for i in range(6)])
    assert layout.split("ham", "train") == "s3a://derm/root/datasets/ham/_v-r1/train"
    assert _read_split(layout.split("ham", "train")) == [f"a{i}" for i in range(6)]
    assert _read_split(layout.split("ham", "val")) == []
    pinned = layout.split("ham", "train")  # what a running reader resolved before the next publish
    _publish_dataset(layout.dataset("ham"), "r2", ["b0", "b1"])
    assert storage.read_json(layout.manifest("ham")) == {"run_id": "r2"}
    assert _read_split(layout.split("ham", "train")) == ["b0", "b1"]
    fs, path = storage.filesystem(layout.dataset("ham"))
    assert sorted(i.base_name for i in fs.get_file_info(pafs.FileSelector(path))) == ["_PUBLISHED", "_v-r2"]
    assert not storage.exists(pinned)  # replaced versions are deleted, as a replaced directory is


def test_the_lease_is_exclusive_on_the_store(s3):
    storage.require("s3a://derm/root", "commit")  # score moves its partitions' files one by one
    with Lease("s3a://derm/root/tables/_lease", "r1", ttl_s=30) as lease:
        lease.check()
        assert lease.generation == 1
        with pytest.raises(LeaseHeld, match="r1"):
            Lease("s3a://derm/root/tables/_lease", "r2", wait_s=0).acquire()
    with Lease("s3a://derm/root/tables/_lease", "r3", ttl_s=30) as lease:  # released: the next generation
        assert lease.generation == 2
    fs, path = storage.filesystem("s3a://derm/root/tables/_lease")
    assert not [i for i in fs.get_file_info(pafs.FileSelector(path)) if ".tmp-probe" in i.base_name]


def test_contenders_racing_on_s3_get_exactly_one_holder_every_time(s3):
    for trial in range(12):
        results = strictfs.race(f"s3a://derm/races/lease-{trial}", 6)
        assert [r for r in results if r[0] == "held"] == [("held", 1)], (trial, results)


def test_a_store_that_ignores_conditional_writes_is_refused_unless_single_writer(s3):
    with pytest.raises(storage.StorageRefused, match="ignores conditional writes.*single_writer"):
        Lease("s3a://legacy/root/tables/_lease", "r1")
    with Lease("s3a://legacy/root/tables/_lease", "r1", ttl_s=30, single_writer=True) as lease:
        assert lease.generation == 1


def test_a_conditional_put_is_ours_only_when_the_object_holds_our_bytes(s3):
    """A retried PUT whose first try succeeded gets 412: the bytes read back say it was ours."""
    target = "s3a://derm/root/excl/lease-000000000001.json"
    assert storage.create_exclusive(target, b'{"run_id": "a"}') is True
    assert storage.create_exclusive(target, b'{"run_id": "a"}') is True  # the retry of our own create
    assert storage.create_exclusive(target, b'{"run_id": "b"}') is False
    assert storage.read_bytes(target) == b'{"run_id": "a"}'


def test_an_executor_gets_the_same_options_from_its_environment(s3):
    """What spark.get_spark hands to executors and ranks in spark.executorEnv."""
    storage.write_bytes("s3a://derm/root/shared.txt", b"seen by executors")
    code = "from lesionspark.store import storage; print(storage.read_bytes('s3a://derm/root/shared.txt').decode())"
    env = {**os.environ, "LESIONSPARK_S3_OPTIONS_SECRET": json.dumps(s3)}
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "seen by executors", r.stderr[-2000:]


def test_an_archive_on_the_store_is_listed_with_s3a_paths(spark, s3):
    """Inputs may live on the store: the driver expands the top folders, executors list the files."""
    from lesionspark.store.listing import list_files
    names = ["top.jpg", "ward A/x.jpg", "ward A/2026/y.jpg", "ward B/z.png", ".hidden/no.jpg"]
    for name in names:
        storage.write_bytes(f"s3a://derm/archive/{name}", b"x" * len(name))
    rows = list_files(spark, ["s3a://derm/archive"], min_dirs=2).toPandas()
    assert sorted(rows["path"]) == sorted(f"s3a://derm/archive/{n}" for n in names if not n.startswith("."))
    assert dict(zip(rows["path"], rows["length"]))["s3a://derm/archive/ward A/x.jpg"] == len("ward A/x.jpg")


def test_score_s_commit_moves_file_by_file_on_the_store_and_stops_at_the_fence(s3):
    """On S3 (no directory moves) the commit moves each file of the run's partitions, flagged
    overlays first and predictions last; a run fenced before its k-th move has moved exactly the
    k - 1 files before it, each whole."""
    from lesionspark.store.lease import LeaseLost
    from lesionspark.score.driver import _commit
    staged = {"flagged/ab12.png": b"overlay"}
    for table in ("score_rejects", "score_files", "predictions"):
        for i in range(2):
            staged[f"{table}/scored_date=2026-12-01/run_id=r1/part-{i}.parquet"] = f"{table} {i}".encode()
    order = ["flagged/ab12.png"] + [k for t in ("score_rejects", "score_files", "predictions")
                                    for k in sorted(staged) if k.startswith(t + "/")]

    def target(key: str, root: str) -> str:
        if key.startswith("flagged/"):
            return f"{root}/explanations/cnn/v1/flagged/{key.split('/', 1)[1]}"
        return f"{root}/tables/{key}"

    for k in range(1, len(order) + 2):
        root = f"s3a://derm/commit-{k}"
        for key, data in staged.items():
            storage.write_bytes(f"{root}/tables/_staging/r1/{key}", data)
        calls = [0]

        def fence():
            calls[0] += 1
            if calls[0] == k + 1:  # check 1 comes before anything, check j + 1 before move j: stop before move k
                raise LeaseLost("taken over")
        try:
            moved = _commit(root, "r1", fence, f"{root}/explanations/cnn/v1/flagged")
            assert moved == len(order)
        except LeaseLost:
            pass
        done = [key for key in order if storage.exists(target(key, root))]
        assert done == order[:k - 1], (k, done)
        assert all(storage.read_bytes(target(key, root)) == staged[key] for key in done)


def test_a_holder_killed_on_s3_blocks_only_until_its_lease_expires(s3):
    """A scoring run killed with SIGKILL while it holds the lease of an S3 root: the next run
    watches the lease for one ttl, then takes the next generation by a conditional PUT."""
    import signal
    import time
    from test_lease import HOLDER
    env = {**os.environ, "LESIONSPARK_S3_OPTIONS_SECRET": json.dumps(s3)}
    d = "s3a://derm/killed/tables/_lease"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, d, "doomed", "2", "600"], env=env,
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().startswith("held")
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    killed_at = time.monotonic()
    with pytest.raises(LeaseHeld):
        Lease(d, "impatient", wait_s=0).acquire()  # live by its own word until it expires
    with Lease(d, "next", ttl_s=2, wait_s=30, poll_s=0.2) as lease:
        assert 1.5 < time.monotonic() - killed_at < 15  # watched for a full ttl first
        assert lease.taken_over["run_id"] == "doomed" and lease.generation == 2
