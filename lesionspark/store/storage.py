"""The storage root (docs/contracts.md: One storage root): URIs, filesystems, atomic replacement, and
what each filesystem promises (``Contract``): every publish, commit and lease uses only that.

- local POSIX (and NFS): replace a file and move a directory by rename(2); exclusive create by
  link(2) (NFS: link count checked); listing consistent (NFS: cached).
- HDFS: replace a file by ``rename2(OVERWRITE)`` via the driver's JVM (delete + rename through
  pyarrow elsewhere); move a directory by rename (NameNode); exclusive create: written whole, then
  ``FileSystem.rename`` via the JVM; listing consistent.
- S3-compatible: replace a file by one PUT (atomic per object); no directory move (publish by a
  record; score's commit file by file); exclusive create by a PUT with ``If-None-Match: *``
  (boto3), probed; listing consistent (AWS since 2020).

Imported everywhere (driver, executors, ranks): every read and write of the storage root goes
through it.
"""
from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import posixpath
import tempfile
import time
import uuid
from dataclasses import dataclass
from typing import Callable
from urllib.parse import urlparse

import pyarrow.fs as pafs

from . import hdfs, s3


def normalize_uri(uri: str) -> str:
    """Local paths become absolute ``file://`` URIs; anything with a scheme is kept as it is."""
    parsed = urlparse(uri)
    if parsed.scheme and len(parsed.scheme) > 1:  # not a Windows drive letter
        return uri.rstrip("/") if parsed.path not in ("", "/") else uri
    return "file://" + os.path.abspath(os.path.expanduser(uri))


def join(uri: str, *parts: str) -> str:
    parsed = urlparse(uri)
    return uri.rstrip("/") + "/" + "/".join(p.strip("/") for p in parts) if parsed.scheme else posixpath.join(uri, *parts)


# Names of the temporary files this module writes beside a target (exclusive creates, replaced
# files); readers of a folder skip them.
TEMP_PREFIXES = (".tmp-", "_tmp-")


class StorageRefused(RuntimeError):
    """The storage root's filesystem cannot give what this step needs to be safe (exit code 2)."""
    exit_code = 2


@dataclass(frozen=True)
class Contract:
    """What a filesystem promises, and so which primitive each step uses there."""
    kind: str  # local | hdfs | object
    dir_rename: bool  # a directory moves to a free name in one step (publish, score's commit)
    file_put_atomic: bool  # a file written in one call appears whole (no temporary name needed)
    exclusive_create: str | None  # link | hadoop | conditional-put | plugin | None (the lease needs one)
    create_exclusive: Callable[[str, bytes], bool] | None = None  # plugin filesystems: their own primitive


LOCAL = Contract("local", dir_rename=True, file_put_atomic=False, exclusive_create="link")
HDFS = Contract("hdfs", dir_rename=True, file_put_atomic=False, exclusive_create="hadoop")
OBJECT = Contract("object", dir_rename=False, file_put_atomic=True, exclusive_create=None)
S3 = Contract("object", dir_rename=False, file_put_atomic=True, exclusive_create="conditional-put")
_SCHEMES = {"file": LOCAL, "hdfs": HDFS, "viewfs": HDFS, "s3": S3, "s3a": S3, "s3n": S3,
            "gs": OBJECT, "gcs": OBJECT, "abfs": OBJECT, "abfss": OBJECT, "wasb": OBJECT, "wasbs": OBJECT}
_PLUGINS: dict[str, tuple[Callable[[str], tuple[pafs.FileSystem, str]], Contract]] = {}
_S3_OPTIONS: dict = {}


def register(scheme: str, factory: Callable[[str], tuple[pafs.FileSystem, str]], contract_: Contract) -> None:
    """A filesystem for ``scheme://`` URIs (``factory(uri) -> (filesystem, path)``) with its contract."""
    _PLUGINS[scheme] = (factory, contract_)


def contract(uri: str) -> Contract:
    scheme = urlparse(normalize_uri(uri)).scheme
    if scheme in _PLUGINS:
        return _PLUGINS[scheme][1]
    return _SCHEMES.get(scheme, OBJECT)  # unknown: promise the least


def require(uri: str, what: str, single_writer: bool = False) -> str | None:
    """Refuse, before any work, a step the root's filesystem cannot make safe. ``what``:
    ``lease`` needs an exclusive create (or ``storage.single_writer: true``: the user promises one
    writer per root), and returns why there is none (None: there is one). ``publish`` needs a
    directory move or, on object stores, a file that one PUT replaces whole (``AtomicDir``); score's
    ``commit`` works everywhere: on object stores it moves its partitions' files one by one."""
    c = contract(uri)
    if what == "publish" and not (c.dir_rename or c.file_put_atomic):
        raise StorageRefused(f"{uri}: this filesystem ({c.kind}) can neither move a directory nor replace a file "
                             "in one step, which publishing needs so that readers never see a half-written "
                             "output (docs/cluster.md: storage contract)")
    why = exclusive_create_missing(uri) if what == "lease" else None
    if why and not single_writer:
        raise StorageRefused(f"{uri}: {why}, so two scoring runs could both take the lease; set "
                             "storage.single_writer: true if one scheduler alone ever scores this root, or use "
                             "an S3 endpoint with conditional writes, an HDFS or a POSIX root")
    return why


def exclusive_create_missing(uri: str) -> str | None:
    """Why ``create_exclusive`` cannot be used under the folder ``uri``; None when it can. On S3
    the store is asked (``s3.supports_conditional_put``, once per bucket and process)."""
    c = contract(uri)
    if c.exclusive_create is None:
        return f"this filesystem ({c.kind}) has no exclusive create through pyarrow"
    if c.exclusive_create == "conditional-put":
        if importlib.util.find_spec("boto3") is None:  # in install_requires; a cluster's environment may lack it
            return "an exclusive create on S3 is a conditional PUT, sent with boto3, which is not installed"
        client, bucket, key, endpoint = _s3_target(uri)
        if not s3.supports_conditional_put(client, bucket, key, endpoint):
            return "this S3 endpoint ignores conditional writes (If-None-Match: *: it overwrote the probe object)"
    return None


def _s3_target(uri: str):
    """(boto3 client, bucket, key, endpoint) for an S3 URI, with this process's S3 options."""
    fs, path = filesystem(uri)
    bucket, _, key = path.partition("/")
    opts = _S3_OPTIONS or json.loads(os.environ.get("LESIONSPARK_S3_OPTIONS_SECRET", "{}"))
    return s3.client(opts, getattr(fs, "region", None)), bucket, key, opts.get("endpoint_override", "")


def s3_options(settings: dict) -> dict:
    """pyarrow ``S3FileSystem`` keyword arguments from the Hadoop s3a settings Spark uses
    (``spark.hadoop.fs.s3a.*`` or ``fs.s3a.*``): endpoint and scheme, keys, session token, region,
    anonymous access. Path-style addressing is what pyarrow uses with an endpoint (MinIO, ECS,
    StorageGRID); virtual-host style with a custom endpoint is refused (pyarrow 10 cannot do it)."""
    def get(key: str):
        value = settings.get(f"spark.hadoop.fs.s3a.{key}", settings.get(f"fs.s3a.{key}"))
        return None if value in (None, "") else str(value)
    opts: dict = {}
    endpoint = get("endpoint")
    if endpoint:
        parsed = urlparse(endpoint if "://" in endpoint else f"//{endpoint}")
        ssl = (get("connection.ssl.enabled") or "true").lower() == "true"
        opts["endpoint_override"] = parsed.netloc + parsed.path.rstrip("/")
        opts["scheme"] = parsed.scheme or ("https" if ssl else "http")
        if (get("path.style.access") or "false").lower() != "true":
            raise StorageRefused("fs.s3a.endpoint is set without fs.s3a.path.style.access=true: with a custom "
                                 "endpoint pyarrow addresses buckets by path, so set path style for Spark too "
                                 "(one configuration for both)")
    for key, arg in (("access.key", "access_key"), ("secret.key", "secret_key"), ("session.token", "session_token")):
        if get(key):
            opts[arg] = get(key)
    region = get("endpoint.region") or get("region")
    if region:
        opts["region"] = region
    if "Anonymous" in (get("aws.credentials.provider") or ""):
        opts["anonymous"] = True
    return opts


def configure_s3(options: dict) -> None:
    """pyarrow ``S3FileSystem`` options for this process (``spark.s3_options`` derives them from the
    ``fs.s3a.*`` settings Spark uses, so one configuration serves both)."""
    _S3_OPTIONS.clear()
    _S3_OPTIONS.update(options)


def filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """(pyarrow filesystem, path inside it) for any URI pyarrow reaches (file, hdfs, s3, gs...)."""
    uri = normalize_uri(uri)
    scheme = urlparse(uri).scheme
    if scheme in _PLUGINS:
        return _PLUGINS[scheme][0](uri)
    if uri.startswith("file://"):  # as written: from_uri refuses a local path with a space in it
        return pafs.LocalFileSystem(), uri[len("file://"):]
    if scheme in ("hdfs", "viewfs"):  # libhdfs where it loads, else hdfs-native (store/hdfs.py)
        return hdfs.filesystem(uri)
    if scheme in ("s3", "s3a", "s3n"):
        rest = uri.split("://", 1)[1]
        opts = _S3_OPTIONS or json.loads(os.environ.get("LESIONSPARK_S3_OPTIONS_SECRET", "{}"))
        if opts:
            return pafs.S3FileSystem(**opts), rest.rstrip("/") or rest
        uri = "s3://" + rest
    return pafs.FileSystem.from_uri(uri)


def create_exclusive(uri: str, data: bytes) -> bool:
    """Create ``uri`` with ``data`` only if no file has that name; True if this call created it.
    Uses the filesystem's own atomic primitive (``Contract.exclusive_create``); StorageRefused
    where it has none (see ``require``)."""
    c = contract(uri)
    if c.exclusive_create == "plugin":
        return c.create_exclusive(uri, data)
    fs, path = filesystem(uri)
    if c.exclusive_create == "link":
        return _link_exclusive(path, data)
    if c.exclusive_create == "hadoop":
        return _hadoop_create_exclusive(uri, data)
    if c.exclusive_create == "conditional-put":
        client, bucket, key, _ = _s3_target(uri)
        return s3.conditional_put(client, bucket, key, data)
    raise StorageRefused(f"{uri}: no exclusive create on this filesystem ({c.kind})")


def _link_exclusive(path: str, data: bytes) -> bool:
    """link(2) of a private temporary file: fails if the name exists, on local disks and NFSv3+.
    NFS can answer EEXIST to a retransmitted link that did succeed; the temporary file's link
    count (2 when the link is ours) tells the two apart."""
    tmp = f"{posixpath.dirname(path)}/{TEMP_PREFIXES[0]}{uuid.uuid4().hex}"
    with open(tmp, "wb") as fh:
        fh.write(data)
    try:
        os.link(tmp, path)
        return True
    except FileExistsError:
        return os.stat(tmp).st_nlink == 2
    finally:
        os.remove(tmp)


@contextlib.contextmanager
def _jvm_staged(uri: str, data: bytes, prefix: str):
    """``(spark context, Hadoop FileSystem, temporary Path, target Path)``, with ``data`` written
    whole under the temporary name through this process's Spark JVM; the temporary file is deleted
    on the way out if it is still there. Yields None where no JVM runs here (executors, ranks)."""
    from pyspark import SparkContext
    sc = SparkContext._active_spark_context
    if sc is None:
        yield None
        return
    hfs = sc._jvm.org.apache.hadoop.fs
    target = hfs.Path(uri)
    tmp = hfs.Path(f"{uri.rsplit('/', 1)[0]}/{prefix}{uuid.uuid4().hex[:12]}-{uri.rsplit('/', 1)[1]}")
    fs = target.getFileSystem(sc._jsc.hadoopConfiguration())
    out = fs.create(tmp, False)
    try:
        out.write(bytearray(data))
    finally:
        out.close()
    try:
        yield sc, fs, tmp, target
    finally:
        fs.delete(tmp, False)


def _hadoop_replace(uri: str, data: bytes) -> bool:
    """Through this process's Spark JVM, where one runs (the driver): the data written whole under a
    temporary name, then ``FileContext.rename(..., OVERWRITE)``, which on HDFS is one NameNode
    operation (``rename2``): a reader sees the old file or the new one, never none. False where no
    JVM runs here (executors, Horovod ranks): the caller falls back to the Python client's move
    (hdfs-native: one ``rename2`` too; libhdfs: a delete, then a rename)."""
    with _jvm_staged(uri, data, TEMP_PREFIXES[1]) as staged:
        if staged is None:
            return False
        sc, _, tmp, target = staged
        hfs = sc._jvm.org.apache.hadoop.fs
        rename = getattr(hfs, "Options$Rename")
        options = sc._gateway.new_array(rename, 1)
        options[0] = rename.OVERWRITE
        hfs.FileContext.getFileContext(target.toUri(), sc._jsc.hadoopConfiguration()).rename(tmp, target, options)
        return True


def _hadoop_create_exclusive(uri: str, data: bytes) -> bool:
    """Through this driver's JVM: the data written whole under a temporary name, then Hadoop's
    ``FileSystem.rename``, which on HDFS is one NameNode operation that returns false when the
    destination exists (Arrow's move deletes it first, so it is not used for this)."""
    with _jvm_staged(uri, data, TEMP_PREFIXES[0]) as staged:
        if staged is None:
            raise StorageRefused(f"{uri}: an exclusive create on HDFS goes through Spark's JVM; none is running here")
        _, fs, tmp, target = staged
        return bool(fs.rename(tmp, target))


def file_type(uri: str) -> str:
    """What ``uri`` is: ``file``, ``directory``, ``notfound`` or ``unknown`` (a FIFO, socket or device)."""
    fs, path = filesystem(uri)
    return fs.get_file_info(path).type.name.lower()


def exists(uri: str) -> bool:
    return file_type(uri) != "notfound"


def has_files(uri: str) -> bool:
    """Whether a folder holds a data file anywhere below it (names starting with ``_`` or ``.``,
    which Spark skips, do not count). Depth-first, stopping at the first one found."""
    fs, top = filesystem(uri)
    stack = [top]
    while stack:
        infos = fs.get_file_info(pafs.FileSelector(stack.pop(), allow_not_found=True))
        if any(i.type == pafs.FileType.File and not i.base_name.startswith(("_", ".")) for i in infos):
            return True
        stack += [i.path for i in infos if i.type == pafs.FileType.Directory and not i.base_name.startswith(("_", "."))]
    return False


def read_bytes(uri: str) -> bytes:
    fs, path = filesystem(uri)
    with fs.open_input_stream(path) as fh:
        return fh.read()


def read_regular(uri: str, max_bytes: int) -> bytes:
    """The bytes of ``uri`` when it is a regular file of at most ``max_bytes``; a ValueError naming
    what it is otherwise. A FIFO, socket or device (pyarrow: ``Unknown``) is never opened, so a
    hostile entry cannot block the reader."""
    fs, path = filesystem(uri)
    info = fs.get_file_info(path)
    if info.type != pafs.FileType.File:
        raise ValueError(f"{uri} is not a regular file ({info.type.name.lower()})")
    if info.size > max_bytes:
        raise ValueError(f"{uri} is {info.size} bytes, more than {max_bytes}")
    return read_bytes(uri)


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
    fs.create_dir(parent, recursive=True)
    if contract(uri).file_put_atomic:  # an object store: one PUT replaces the object whole
        with fs.open_output_stream(path) as fh:
            fh.write(data)
        return
    if contract(uri) is HDFS and _hadoop_replace(normalize_uri(uri), data):  # not plugins: their own schemes
        return  # one NameNode rename over the old file
    tmp = f"{parent}/{TEMP_PREFIXES[1]}{uuid.uuid4().hex[:12]}-{name}"
    with fs.open_output_stream(tmp) as fh:
        fh.write(data)
    # rename(2) on POSIX. On HDFS without a JVM here (executors, ranks): hdfs-native renames over the
    # old file in one NameNode call; libhdfs's pyarrow deletes, then renames, and a reader may miss the
    # file for that moment
    fs.move(tmp, path)


def replace_json(uri: str, obj) -> None:
    replace_file(uri, json.dumps(obj, indent=2, sort_keys=False, default=str).encode())



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
