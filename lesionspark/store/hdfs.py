"""HDFS from Python, on the driver, in executors and in Horovod ranks.

Spark's JVM reaches HDFS itself; the Python side (listing and reading files in tasks, Petastorm in
the ranks, the driver's small files) needs a client of its own. Two are supported, chosen once per
process (``LESIONSPARK_HDFS_CLIENT``: ``auto`` (default), ``libhdfs`` or ``native``):

- ``libhdfs``: pyarrow's ``HadoopFileSystem``, which loads ``libhdfs.so`` through JNI. Hadoop
  distributions ship it (``$HADOOP_HOME/lib/native``, ``ARROW_LIBHDFS_DIR``) with their jars on the
  ``CLASSPATH``; it reads the cluster's own ``core-site.xml`` and ``hdfs-site.xml`` (HA
  nameservices, Kerberos). ``auto`` uses it where it loads.
- ``native``: hdfs-native (a Rust client; no JVM, no libhdfs), behind pyarrow's ``PyFileSystem``.
  ``auto`` falls back to it where libhdfs does not load (the pyspark wheel alone, as in the tests).

Both were checked against a real NameNode (Hadoop's MiniDFSCluster, ``tests/test_hdfs.py``) for
what lesionspark relies on: files written whole and read back, listings with sizes and
modification times, renames, and directories. The lease's exclusive create and the atomic replace
go through Spark's JVM on the driver (``storage.create_exclusive``), whichever client serves Python.
"""
from __future__ import annotations

import errno
import os
from functools import lru_cache
from urllib.parse import urlparse

import pyarrow.fs as pafs

CLIENTS = ("auto", "libhdfs", "native")


class _NativeHandler(pafs.FSSpecHandler):
    """pyarrow's fsspec handler, with hdfs-native's modification time (milliseconds) as ``mtime``,
    a folder's listing without the folder itself (fsspec's ``find`` includes it; pyarrow 10's
    handler passes it on, and every other pyarrow filesystem leaves it out), and ``move`` over an
    existing file."""

    def get_file_info_selector(self, selector):
        base = "/" + selector.base_dir.strip("/")
        infos = _io(lambda: super(_NativeHandler, self).get_file_info_selector(selector))
        return [i for i in infos if "/" + i.path.strip("/") != base]

    def get_file_info(self, paths):
        return _io(lambda: super(_NativeHandler, self).get_file_info(paths))

    def open_input_file(self, path):
        return _io(lambda: super(_NativeHandler, self).open_input_file(path))

    def move(self, src, dest):
        """A file moved onto an existing file replaces it in one NameNode call (``rename2`` with
        OVERWRITE), as pyarrow's ``move`` promises; fsspec's ``mv`` refuses an existing destination.
        A folder moves only onto a missing name, as before."""
        src = src.rstrip("/")
        is_file = self.fs.isfile(src)
        _io(lambda: self.fs.client.rename(src, dest.rstrip("/"), is_file))

    def open_input_stream(self, path):
        return _io(lambda: super(_NativeHandler, self).open_input_stream(path))

    @staticmethod
    def _create_file_info(path, info):
        import datetime as dt
        base = pafs.FSSpecHandler._create_file_info(path, info)
        millis = info.get("modification_time")
        if millis is None or base.type != pafs.FileType.File:
            return base
        return pafs.FileInfo(path, base.type, size=base.size,
                             mtime=dt.datetime.fromtimestamp(millis / 1000, tz=dt.timezone.utc))


def _io(call):
    """hdfs-native reports what is not a missing file or a refused permission (a DataNode gone, a
    block lost) as ``RuntimeError``; as ``OSError``, the file is an ``unreadable`` reject like any
    other I/O error (``listing.Reader``), not the end of a task."""
    try:
        return call()
    except RuntimeError as exc:
        raise OSError(errno.EIO, f"HDFS: {exc}") from exc


def client() -> str:
    """The client this process uses: ``LESIONSPARK_HDFS_CLIENT`` or, for ``auto``, libhdfs where it loads."""
    wanted = os.environ.get("LESIONSPARK_HDFS_CLIENT", "auto")
    if wanted not in CLIENTS:
        raise ValueError(f"LESIONSPARK_HDFS_CLIENT must be one of {', '.join(CLIENTS)}, got {wanted!r}")
    return ("libhdfs" if _libhdfs_loads() else "native") if wanted == "auto" else wanted


@lru_cache(maxsize=1)
def _libhdfs_loads() -> bool:
    """Whether ``libhdfs.so`` is where pyarrow looks for it (``ARROW_LIBHDFS_DIR``, else
    ``$HADOOP_HOME/lib/native``), judged without connecting to any NameNode."""
    dirs = [os.environ.get("ARROW_LIBHDFS_DIR"), os.path.join(os.environ.get("HADOOP_HOME", ""), "lib", "native")]
    return any(d and os.path.exists(os.path.join(d, "libhdfs.so")) for d in dirs)


@lru_cache(maxsize=16)
def _native(host: str, port: int | None) -> pafs.FileSystem:
    from hdfs_native.fsspec import HdfsFileSystem
    return pafs.PyFileSystem(_NativeHandler(HdfsFileSystem(host=host, port=port)))


def filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """(pyarrow filesystem, absolute path) of an ``hdfs://`` or ``viewfs://`` URI."""
    parsed = urlparse(uri)
    path = parsed.path or "/"
    if client() == "libhdfs":
        fs, inner = pafs.FileSystem.from_uri(uri)
        return fs, inner
    if parsed.scheme != "hdfs":
        raise ValueError(f"{uri}: hdfs-native serves hdfs:// URIs here; use libhdfs for {parsed.scheme}://")
    return _native(parsed.hostname or "", parsed.port), path
