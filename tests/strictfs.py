"""Local filesystems that behave the way Arrow's HDFS and S3 filesystems do where they differ from
POSIX, registered as ``hdfslike://`` and ``s3like://`` URIs (``storage.register``):

- ``hdfslike``: moving a file onto an existing file deletes the destination, waits, then renames
  (Arrow's ``HadoopFileSystem::Move``: "allow file -> file clobber"), so a reader can find it
  missing; exclusive create is atomic (Hadoop's ``create(overwrite=false)`` on the NameNode).
- ``s3like``: moving a directory is refused ("We don't implement moving directories", Arrow's
  ``S3FileSystem::Move``); a file move is a copy then a delete; no exclusive create.

``LESIONSPARK_CRASH_AT=N`` makes the N-th mutating operation of the process exit it on the spot
(``os._exit``: no cleanup runs), for crash-point tests.
"""
import os
import threading
import time

import pyarrow.fs as pafs

from lesionspark.store import storage
from lesionspark.store.lease import Lease, LeaseHeld

_OPS = [0]


def _step() -> None:
    _OPS[0] += 1
    if str(_OPS[0]) == os.environ.get("LESIONSPARK_CRASH_AT"):
        os._exit(77)


class Strict(pafs.FileSystemHandler):
    def __init__(self, kind: str):
        self.kind, self.fs = kind, pafs.LocalFileSystem()

    def get_type_name(self):
        return f"strict-{self.kind}"

    def normalize_path(self, path):
        return path

    def equals(self, other):
        return isinstance(other, Strict) and other.kind == self.kind

    def get_file_info(self, paths):
        return self.fs.get_file_info(paths)

    def get_file_info_selector(self, selector):
        return self.fs.get_file_info(selector)

    def create_dir(self, path, recursive):
        self.fs.create_dir(path, recursive=recursive)

    def delete_dir(self, path):
        _step()
        self.fs.delete_dir(path)

    def delete_dir_contents(self, path, missing_dir_ok=False):
        _step()
        self.fs.delete_dir_contents(path, missing_dir_ok=missing_dir_ok)

    def delete_root_dir_contents(self):
        raise OSError("refused")

    def delete_file(self, path):
        _step()
        self.fs.delete_file(path)

    def move(self, src, dest):
        _step()
        src_type = self.fs.get_file_info(src).type
        if self.kind == "s3like":
            if src_type == pafs.FileType.Directory:
                raise OSError("We don't implement moving directories")
            self.fs.copy_file(src, dest)
            self.fs.delete_file(src)
            return
        if src_type == pafs.FileType.File and self.fs.get_file_info(dest).type == pafs.FileType.File:
            self.fs.delete_file(dest)  # clobber: the destination is gone for a while
            time.sleep(0.02)
        self.fs.move(src, dest)

    def copy_file(self, src, dest):
        _step()
        self.fs.copy_file(src, dest)

    def open_input_stream(self, path):
        return self.fs.open_input_stream(path)

    def open_input_file(self, path):
        return self.fs.open_input_file(path)

    def open_output_stream(self, path, metadata):
        _step()
        return self.fs.open_output_stream(path)

    def open_append_stream(self, path, metadata):
        _step()
        return self.fs.open_append_stream(path)


def _create_exclusive(uri: str, data: bytes) -> bool:
    """What lesionspark does on HDFS: the file written whole under a temporary name, then renamed
    by a rename that fails when the name exists (HDFS's ``FileSystem.rename``; here ``link(2)``,
    then the temporary name removed). A file created in place would be seen empty while written."""
    path = uri.split("://", 1)[1]
    tmp = f"{os.path.dirname(path)}/.tmp-{os.getpid()}-{threading.get_ident()}-{time.monotonic_ns()}"
    _step()
    with open(tmp, "wb") as fh:
        fh.write(data)
    _step()
    try:
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    finally:
        os.remove(tmp)


def register() -> None:
    for kind, contract in (
            ("hdfslike", storage.Contract("hdfs", dir_rename=True, file_put_atomic=False, exclusive_create="plugin",
                                          create_exclusive=_create_exclusive)),
            ("s3like", storage.Contract("object", dir_rename=False, file_put_atomic=True, exclusive_create=None))):
        handler = pafs.PyFileSystem(Strict(kind))
        storage.register(kind, lambda uri, fs=handler: (fs, uri.split("://", 1)[1]), contract)


def race(directory: str, n: int) -> list:
    """``n`` threads take the lease of ``directory`` at once (each with wait 0); what each got:
    ("held", generation) or ("refused", the holder's run id)."""
    results, barrier, done = [], threading.Barrier(n), threading.Event()

    def contend(i):
        barrier.wait()
        try:
            with Lease(directory, f"run{i}", ttl_s=30, wait_s=0) as lease:
                results.append(("held", lease.generation))
                done.wait(10)
        except LeaseHeld as exc:
            results.append(("refused", exc.holder.get("run_id") or exc.holder.get("doubt")))
        except Exception as exc:  # noqa: BLE001 (an answer all the same: the race must end)
            results.append(("error", repr(exc)))
    threads = [threading.Thread(target=contend, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    while len(results) < n:  # the holder answers, then holds until every other contender has
        threading.Event().wait(0.01)
    done.set()
    for t in threads:
        t.join()
    return results


class Crashing(Strict):
    """A real filesystem (the MiniDFSCluster's, tests/test_hdfs.py) whose mutating operations count
    toward ``LESIONSPARK_CRASH_AT`` like the stand-ins', and otherwise do what the real one does."""

    def __init__(self, real: pafs.FileSystem):
        self.kind, self.fs = "crashing", real

    def equals(self, other):
        return isinstance(other, Crashing) and other.fs is self.fs

    def move(self, src, dest):
        _step()
        self.fs.move(src, dest)


def register_crashing(real_uri: str) -> None:
    """``hdfscrash:///path`` as ``<real_uri>/path``, through ``Crashing``, with the HDFS contract."""
    real, _ = storage.filesystem(real_uri)
    fs = pafs.PyFileSystem(Crashing(real))
    storage.register("hdfscrash", lambda uri: (fs, "/" + uri.split("://", 1)[1].lstrip("/")), storage.HDFS)
