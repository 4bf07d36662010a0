"""The storage root (DESIGN.md: One storage root): URIs, filesystems, atomic replacement.

Imported everywhere (driver, executors, ranks): every read and write of the storage root goes through it.
"""
from __future__ import annotations

import contextlib
import json
import os
import posixpath
import tempfile
import time
import uuid
from urllib.parse import urlparse

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq


def normalize_uri(uri: str) -> str:
    """Local paths become absolute ``file://`` URIs; anything with a scheme is kept as it is."""
    parsed = urlparse(uri)
    if parsed.scheme and len(parsed.scheme) > 1:  # not a Windows drive letter
        return uri.rstrip("/") if parsed.path not in ("", "/") else uri
    return "file://" + os.path.abspath(os.path.expanduser(uri))


def join(uri: str, *parts: str) -> str:
    parsed = urlparse(uri)
    return uri.rstrip("/") + "/" + "/".join(p.strip("/") for p in parts) if parsed.scheme else posixpath.join(uri, *parts)


def filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """(pyarrow filesystem, path inside it) for any URI pyarrow reaches (file, hdfs, s3, gs...)."""
    uri = normalize_uri(uri)
    if uri.startswith("file://"):  # as written: from_uri refuses a local path with a space in it
        return pafs.LocalFileSystem(), uri[len("file://"):]
    if uri.startswith("s3a://") or uri.startswith("s3n://"):
        uri = "s3://" + uri.split("://", 1)[1]
    return pafs.FileSystem.from_uri(uri)


def exists(uri: str) -> bool:
    fs, path = filesystem(uri)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def read_bytes(uri: str) -> bytes:
    fs, path = filesystem(uri)
    with fs.open_input_stream(path) as fh:
        return fh.read()


def write_bytes(uri: str, data: bytes) -> None:
    fs, path = filesystem(uri)
    fs.create_dir(posixpath.dirname(path), recursive=True)
    with fs.open_output_stream(path) as fh:
        fh.write(data)


def write_json(uri: str, obj) -> None:
    write_bytes(uri, json.dumps(obj, indent=2, sort_keys=False, default=str).encode())


def read_json(uri: str):
    return json.loads(read_bytes(uri))


def replace_file(uri: str, data: bytes) -> None:
    """Write ``data`` to a fresh sibling (``_tmp-...``: Spark and the readers skip ``_`` names), then
    move it over ``uri``: a reader sees the old file or the new one, never a half-written one."""
    fs, path = filesystem(uri)
    parent, name = posixpath.split(path)
    tmp = f"{parent}/_tmp-{uuid.uuid4().hex[:12]}-{name}"
    fs.create_dir(parent, recursive=True)
    with fs.open_output_stream(tmp) as fh:
        fh.write(data)
    fs.move(tmp, path)


def replace_json(uri: str, obj) -> None:
    replace_file(uri, json.dumps(obj, indent=2, sort_keys=False, default=str).encode())


def parquet_bytes(table: pa.Table) -> bytes:
    """A (small) table as the bytes of one Parquet file, for ``replace_file``."""
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return sink.getvalue().to_pybytes()


def upload_file(local: str, uri: str) -> None:
    """A local file published at ``uri`` through ``replace_file``."""
    with open(local, "rb") as fh:
        replace_file(uri, fh.read())


@contextlib.contextmanager
def local_copy(uri: str, suffix: str = "", prefix: str = "lesionspark-"):
    """A private local copy of ``uri`` (mode 0600, a fresh name) for libraries that read only local
    files (Keras); deleted on exit."""
    fd, local = tempfile.mkstemp(prefix=prefix, suffix=suffix)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(read_bytes(uri))
        yield local
    finally:
        os.remove(local)


def delete(uri: str) -> None:
    fs, path = filesystem(uri)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.Directory:
        fs.delete_dir(path)
    elif info.type == pafs.FileType.File:
        fs.delete_file(path)


def new_run_id() -> str:
    return time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + "-" + uuid.uuid4().hex[:8]


class AtomicDir:
    """Build a directory under a staging name, then swap it in for the final one.

    ``with AtomicDir(uri) as staging: ...write under staging...``. On success the previous
    directory (if any) is renamed aside, the staging one renamed into place, and the old one
    deleted; on an exception the staging directory is deleted and the previous output is left
    untouched. Leftovers of a crashed run (``.staging-*``/``.old-*`` siblings) are cleaned by the
    next run. Renames are atomic on local filesystems and HDFS; on object stores (s3a) a rename
    is a copy, so readers may briefly see no directory, but never a half-written one.
    """

    def __init__(self, uri: str, run_id: str | None = None):
        self.uri = normalize_uri(uri).rstrip("/")
        self.run_id = run_id or new_run_id()
        parent, name = self.uri.rsplit("/", 1)
        self.parent, self.name = parent, name
        self.staging = f"{parent}/.{name}.staging-{self.run_id}"
        self.old = f"{parent}/.{name}.old-{self.run_id}"

    def _cleanup_leftovers(self) -> None:
        fs, parent = filesystem(self.parent)
        fs.create_dir(parent, recursive=True)
        for info in fs.get_file_info(pafs.FileSelector(parent)):
            base = posixpath.basename(info.path)
            if base.startswith(f".{self.name}.staging-") or base.startswith(f".{self.name}.old-"):
                fs.delete_dir(info.path) if info.type == pafs.FileType.Directory else fs.delete_file(info.path)

    def __enter__(self) -> str:
        self._cleanup_leftovers()
        return self.staging

    def __exit__(self, exc_type, exc, tb) -> bool:
        fs, staging = filesystem(self.staging)
        if exc_type is not None:
            if fs.get_file_info(staging).type != pafs.FileType.NotFound:
                fs.delete_dir(staging)
            return False
        _, final = filesystem(self.uri)
        _, old = filesystem(self.old)
        had_old = fs.get_file_info(final).type != pafs.FileType.NotFound
        if had_old:
            fs.move(final, old)
        fs.move(staging, final)
        if had_old:
            fs.delete_dir(old)
        return False


class Layout:
    """Paths under the storage root, as DESIGN.md lays them out."""

    def __init__(self, root: str):
        self.root = normalize_uri(root)

    def dataset(self, name: str) -> str:
        return join(self.root, "datasets", name)

    def split(self, name: str, split: str) -> str:
        return join(self.dataset(name), split)

    def rejects(self, name: str) -> str:
        return join(self.dataset(name), "rejects")

    def manifest(self, name: str) -> str:
        return join(self.dataset(name), "manifest.json")

    def balanced(self, name: str, method: str) -> str:
        return join(self.root, "balanced", name, method)
