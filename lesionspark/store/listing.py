"""List archives as a DataFrame and read file bytes where the rows are: nothing per file on the driver.

``list_files`` returns ``path, length, modificationTime, stem`` for every file under some folders
(any filesystem pyarrow reaches: local, HDFS, S3, GCS), 0-byte files included. The files are listed
in executors; the driver only reads folder names. It expands the top of the tree breadth-first
itself, a level at a time, until there are enough folders to keep every core busy (or the tree
ends); then one Spark job lists the files of the folders it expanded and, one task each, everything
below the rest. The driver holds folder names only (on object stores, one level's listing at a
time), so a tree of 10^6 files costs it no more memory than a tree of 10^3, and a small archive
costs one job instead of one a level.

``Reader`` reads listed files in executors: ``fetch`` reads and hashes each file once and turns
anything that is not a readable regular file into a reason. Paths are spelled as Hadoop spells them
(``file:/a/b c.jpg``, ``hdfs://nn:8020/a/b.jpg``, ``s3a://bucket/key.jpg``), as earlier lesionspark
tables recorded them.

Local folders (and NFS mounts) are walked with ``os.scandir`` on bytes, because an archive nobody
curates holds what pyarrow's listing cannot: names that are not UTF-8 (a Latin-1 ``M\xfcller.jpg``
from an old Windows share), symbolic links (loops, links out of the archive, dangling ones), FIFOs,
sockets and devices. Rules:

- Every ``%`` of a local path is listed as ``%25``, and each byte that is not valid UTF-8 as
  ``%XX`` (a Latin-1 ``M\xfcller.jpg`` lists as ``M%FCller.jpg``; a file literally named
  ``M%FCller.jpg`` as ``M%25FCller.jpg``: two names never list alike). The reader maps a listed
  path back to its bytes, so the file is read, hashed and scored like any other, and the next run
  lists it under the same spelling (the index matches it). Names without ``%`` that are valid
  UTF-8 are listed as they are.
- Links are not followed by default (``follow_links``): a link is listed as an entry and rejected
  (``symlink_not_followed``), a linked folder is not entered. With ``follow_links``, linked folders
  are entered once each (loops are cut by device and inode), and a link that leaves the listed
  folder is rejected (``link_outside_archive``); a dangling one is ``dangling_symlink``.
- FIFOs, sockets and devices are listed and rejected (``special_file``) without being opened.
"""
from __future__ import annotations

import errno
import fnmatch
import hashlib
import os
import re
import stat
from typing import Iterator

import pandas as pd

from . import storage

# A file's id is its name without the extension.
STEM_FROM_PATH = r"([^/]+?)(\.[^./]*)?$"
LISTING_SCHEMA = "path string, length long, modificationTime timestamp, is_dir boolean"
CHUNK = 8 << 20


def _prefix(uri: str, fs_path: str) -> str:
    """What goes before a filesystem path to make the Hadoop-style URI of a file under ``uri``."""
    if uri.startswith("file:"):
        return "file:"
    tail = fs_path.strip("/")
    head = uri.rstrip("/")
    return head[: len(head) - len(tail)] if tail and head.endswith(tail) else head.split("://", 1)[0] + "://"


def to_fs_path(path: str, prefix: str) -> str:
    """The filesystem path of a listed file (its URI without ``prefix``)."""
    rest = path[len(prefix):]
    return rest if prefix == "file:" or rest.startswith("/") or prefix.endswith("://") else "/" + rest


class Root:
    """One listed folder: its pyarrow filesystem (picklable, shipped to executors) and path prefix."""

    def __init__(self, uri: str, follow_links: bool = False):
        import pyarrow.fs as pafs
        self.uri = storage.normalize_uri(uri)
        self.fs, self.path = storage.filesystem(self.uri)
        self.prefix = _prefix(self.uri, self.path)
        self.local = isinstance(self.fs, pafs.LocalFileSystem)
        self.follow_links = follow_links

    def uri_of(self, fs_path: str) -> str:
        return self.prefix + (fs_path if self.prefix == "file:" else fs_path.lstrip("/"))


def _visible(name: str) -> bool:
    return not name.startswith(".")  # .DS_Store, .Trash, editors' swap files


def escape_name(raw: bytes) -> str:
    """A local path as listed: every ``%`` written ``%25`` and every byte that is not part of valid
    UTF-8 written ``%XX``, so that two different names never list alike (a Latin-1 ``M\\xfcller.jpg``
    lists as ``M%FCller.jpg``, a file literally named ``M%FCller.jpg`` as ``M%25FCller.jpg``)."""
    text = raw.decode("utf-8", "surrogateescape").replace("%", "%25")
    return "".join(f"%{ord(c) - 0xDC00:02X}" if 0xDC80 <= ord(c) <= 0xDCFF else c for c in text)


def local_bytes(path: str) -> bytes:
    """The bytes of a local path as listed (``escape_name`` undone)."""
    return re.sub(rb"%([0-9A-Fa-f]{2})", lambda m: bytes([int(m.group(1), 16)]), path.encode("utf-8", "surrogateescape"))


class EntryRejected(Exception):
    """A listed entry that is not a readable regular file: ``reason`` is its reject code."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason, self.detail = reason, detail


def scan_local(top: bytes, recursive: bool, follow_links: bool, want_dirs: bool, within: bytes | None = None):
    """(path bytes, size, mtime ns, is_dir) under ``top``, hidden names skipped. Entries that are not
    regular files or folders (links not followed, FIFOs, sockets, devices) come as files, for the
    reader to reject. With ``follow_links``, linked folders are entered once each (device, inode),
    and only where they lead inside ``within`` (the listed archive; default ``top``): a link to a
    folder elsewhere comes as a file, which the reader rejects (``link_outside_archive``)."""
    inside = os.path.realpath(within or top)
    seen: set[tuple[int, int]] = set()
    stack = [top]
    while stack:
        d = stack.pop()
        try:
            st = os.stat(d)
            if (st.st_dev, st.st_ino) in seen:
                continue  # a loop, or a folder reached twice through links
            seen.add((st.st_dev, st.st_ino))
            entries = list(os.scandir(d))
        except OSError:
            continue  # vanished or unreadable folder: nothing in it can be listed
        for e in entries:
            if e.name.startswith(b"."):
                continue
            try:
                lst = e.stat(follow_symlinks=False)
                is_link = stat.S_ISLNK(lst.st_mode)
                is_dir = stat.S_ISDIR(lst.st_mode) or (is_link and follow_links and e.is_dir(follow_symlinks=True)
                                                       and _leads_inside(e.path, inside))
            except OSError:
                continue
            if is_dir:
                if want_dirs:
                    yield e.path, 0, 0, True
                if recursive:
                    stack.append(e.path)
            elif not want_dirs:
                yield e.path, lst.st_size, lst.st_mtime_ns, False


def _leads_inside(path: bytes, inside: bytes) -> bool:
    try:
        return os.path.commonpath([os.path.realpath(path, strict=True), inside]) == inside
    except (OSError, ValueError):
        return False


def _frame(rows: list[tuple]) -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=["path", "length", "modificationTime", "is_dir"])
    # Milliseconds, UTC: what Hadoop's FileStatus gives, so indexes written before compare equal.
    df["modificationTime"] = pd.to_datetime(df["modificationTime"], unit="ms", utc=True)
    return df.astype({"length": "int64", "is_dir": "bool"})


def _list_dir(root: Root, d: str, mode: str, batch_rows: int = 20_000) -> Iterator[pd.DataFrame]:
    """Frames of what is under the folder ``d`` of ``root``: its subfolders (``dirs``), its files
    (``files``) or every file below it (``recursive``)."""
    recursive, rows = mode == "recursive", []
    if root.local:
        entries = ((root.uri_of(escape_name(raw)), size, mtime_ns // 1_000_000, is_dir)
                   for raw, size, mtime_ns, is_dir in scan_local(local_bytes(d), recursive, root.follow_links,
                                                                 mode == "dirs", os.fsencode(root.path)))
    else:
        entries = _remote_entries(root, d, mode)
    for row in entries:
        rows.append(row)
        if len(rows) >= batch_rows:
            yield _frame(rows)
            rows = []
    if rows:
        yield _frame(rows)


def _remote_entries(root: Root, d: str, mode: str):
    import pyarrow.fs as pafs
    for info in root.fs.get_file_info(pafs.FileSelector(d, recursive=mode == "recursive", allow_not_found=True)):
        rel = info.path[len(d):].lstrip("/")
        if not all(_visible(part) for part in rel.split("/")):
            continue
        if info.type == pafs.FileType.File and mode != "dirs":
            yield root.uri_of(info.path), info.size or 0, info.mtime_ns // 1_000_000, False
        elif info.type == pafs.FileType.Directory and mode == "dirs":
            yield root.uri_of(info.path), 0, 0, True


def _lister(roots: list[Root], tasks: list[tuple[int, str, str]]):
    """mapInPandas function: task numbers (``id``) in; out, for each ``(root, dir, mode)`` task,
    what ``_list_dir`` lists."""
    def run(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for batch in batches:
            for i in batch["id"]:
                r, d, mode = tasks[i]
                yield from _list_dir(roots[r], d, mode)
    return run


def _subfolders(roots: list[Root], frontier: list[tuple[int, str]]) -> list[tuple[int, str]]:
    """The next level of the tree, listed on the driver: (root index, folder path) of every subfolder."""
    out = []
    for r, d in frontier:
        for frame in _list_dir(roots[r], d, "dirs"):
            out += [(r, to_fs_path(p, roots[r].prefix)) for p in frame["path"]]
    return out


def list_files(spark, uris: list[str], glob: str | None = None, regex: str | None = None,
               min_dirs: int | None = None, max_depth: int = 4, follow_links: bool = False):
    """``path, length, modificationTime, stem`` for every file under ``uris`` (recursive, a DataFrame).

    ``glob`` matches file names (``*.jpg``), ``regex`` whole paths, case-insensitively
    (``\\.(jpe?g|png)$``). Hidden entries (names starting with ``.``) are not listed. On local
    folders, links and special files are listed too (the reader rejects them: see the module's rules)."""
    import pyarrow.fs as pafs
    from pyspark.sql import functions as F
    roots = [Root(u, follow_links) for u in uris]
    for root in roots:
        if root.fs.get_file_info(root.path).type != pafs.FileType.Directory:
            raise FileNotFoundError(f"{root.uri} is not a folder")
    min_dirs = min_dirs or 4 * spark.sparkContext.defaultParallelism
    # The top of the tree, a level at a time on the driver, until there are folders for every core.
    # local folders travel as listed (escaped), as their subfolders come back from the listing
    frontier = [(i, escape_name(os.fsencode(r.path)) if r.local else r.path) for i, r in enumerate(roots)]
    shallow: list[tuple[int, str]] = []
    for _ in range(max_depth):
        if len(frontier) >= min_dirs or not frontier:
            break
        shallow += frontier
        frontier = _subfolders(roots, frontier)
    # One job: the files directly in the expanded folders, and everything below the frontier.
    tasks = [(r, d, "files") for r, d in shallow] + [(r, d, "recursive") for r, d in frontier]
    # Task numbers from spark.range (split evenly, no Python job, no shuffle); the tasks travel in the function.
    out = spark.range(len(tasks), numPartitions=max(1, min(len(tasks), min_dirs))).mapInPandas(
        _lister(roots, tasks), LISTING_SCHEMA).drop("is_dir")
    if glob:
        out = out.filter(F.regexp_extract("path", r"([^/]*)$", 1).rlike(_glob_regex(glob)))
    if regex:
        out = out.filter(F.lower("path").rlike(regex))
    return out.withColumn("stem", F.regexp_extract("path", STEM_FROM_PATH, 1))


def _root_of(roots: list[Root], path: str) -> int:
    return max((i for i, r in enumerate(roots) if path.startswith(r.prefix)), key=lambda i: len(roots[i].prefix))


def _glob_regex(glob: str) -> str:
    return "^" + fnmatch.translate(glob).removeprefix("(?s:").removesuffix(")\\Z") + "$"


PATH_LIKE = re.compile(r"(?:[A-Za-z][A-Za-z0-9+.-]*:)?/[^\s'\"]*")


def describe_error(exc: BaseException) -> str:
    """An error as a reject detail without any path in it: OS errors carry the file name in their
    message, and a path can name a patient (``score.hash_paths``)."""
    if isinstance(exc, OSError) and exc.strerror:
        return f"{type(exc).__name__}: {exc.strerror}" + (f" (errno {exc.errno})" if exc.errno else "")
    return f"{type(exc).__name__}: {PATH_LIKE.sub('<path>', str(exc))[:300]}"


READ_TIMEOUT_S = 300.0  # archive.read_timeout_s / ingest.read_timeout_s


class Reader:
    """Reads listed files in executors through the same pyarrow filesystems (picklable).

    A file's size is judged before any byte is read (``lstat`` of a local entry, the store's size of
    a remote object): a file over the limit is rejected unread and unhashed (a sparse file of 16 TiB
    costs one ``lstat``), and tried again by every run until it is removed or the limit raised. A
    read is made in 8 MiB chunks against a deadline (``read_timeout_s``): a file that is still
    being read when it passes is ``read_timeout``, with no hash, tried again next run."""

    def __init__(self, uris: list[str], follow_links: bool = False, read_timeout_s: float = READ_TIMEOUT_S):
        self.roots = [Root(u, follow_links) for u in uris]
        self.read_timeout_s = float(read_timeout_s)

    def _locate(self, path: str):
        root = self.roots[_root_of(self.roots, path)]
        return root, to_fs_path(path, root.prefix)

    def _open_local(self, root: Root, p: str, limit: int):
        """A regular file under ``root`` of at most ``limit`` bytes opened for reading, or
        ``EntryRejected``; nothing else is opened (a FIFO would block, a device could act on open)."""
        raw = local_bytes(p)
        lst = os.lstat(raw)
        if stat.S_ISLNK(lst.st_mode) and not root.follow_links:
            raise EntryRejected("symlink_not_followed", "a symbolic link (archive.follow_links is off)")
        if stat.S_ISLNK(lst.st_mode) or root.follow_links:
            # every component is resolved, not only the last: a linked folder may lead out too
            try:
                target = os.path.realpath(raw, strict=True)
            except OSError as exc:
                if not stat.S_ISLNK(lst.st_mode) and exc.errno != errno.ELOOP:
                    raise  # a regular file that vanished since its lstat: unreadable, tried again next run
                reason = "symlink_loop" if exc.errno == errno.ELOOP else "dangling_symlink"
                raise EntryRejected(reason, f"the link cannot be resolved ({errno.errorcode.get(exc.errno, exc.errno)})") \
                    from None
            top = os.path.realpath(os.fsencode(root.path))
            if os.path.commonpath([target, top]) != top:
                raise EntryRejected("link_outside_archive", "the link points outside the listed folder")
            raw, lst = target, os.stat(target)
        if not stat.S_ISREG(lst.st_mode):
            kind = "folder" if stat.S_ISDIR(lst.st_mode) else "FIFO" if stat.S_ISFIFO(lst.st_mode) else \
                "socket" if stat.S_ISSOCK(lst.st_mode) else "device" if stat.S_ISCHR(lst.st_mode) or \
                stat.S_ISBLK(lst.st_mode) else "special file"
            raise EntryRejected("special_file", f"a {kind}, not a regular file: not opened")
        _check_size(lst.st_size, limit)
        fd = os.open(raw, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):  # swapped between the check and the open
            os.close(fd)
            raise EntryRejected("special_file", "changed into a special file while being opened")
        try:
            _check_size(st.st_size, limit)
        except EntryRejected:
            os.close(fd)
            raise
        return os.fdopen(fd, "rb")

    def _open(self, path: str, limit: int):
        fault = os.environ.get("LESIONSPARK_INJECT_READ_FAULT")  # tests: an I/O error on matching paths
        if fault and re.search(fault, path):
            raise OSError(errno.EIO, "Input/output error (injected by LESIONSPARK_INJECT_READ_FAULT)")
        root, p = self._locate(path)
        if root.local:
            return self._open_local(root, p, limit)
        fh = root.fs.open_input_file(p)
        try:
            _check_size(fh.size(), limit)
        except EntryRejected:
            fh.close()
            raise
        return fh

    def read(self, path: str, limit: int) -> bytes:
        """The file's bytes: ``EntryRejected`` when it is over ``limit`` bytes (judged before reading,
        and again as it is read) or its read passes the deadline."""
        import time
        deadline = time.monotonic() + self.read_timeout_s
        chunks, total = [], 0
        with self._open(path, limit) as fh:
            while chunk := fh.read(min(CHUNK, limit + 1 - total)):
                chunks.append(chunk)
                total += len(chunk)
                if total > limit:
                    raise EntryRejected("file_too_large", f"grew past {total - len(chunk)} bytes while being read")
                if time.monotonic() > deadline:
                    raise EntryRejected("read_timeout", f"still reading after {self.read_timeout_s:g} s "
                                        f"({total} bytes read)")
        return b"".join(chunks)

    def fetch(self, paths, lengths, max_bytes: int, limit_key: str):
        """Read and hash many listed files, each once: (contents or None, sha256 or None, reasons,
        details). A file over ``max_bytes`` (as listed, or by its size when opened) is rejected
        unread (``file_too_large``); a file that vanished or cannot be opened gets ``unreadable``, an
        entry that is no regular file its ``EntryRejected`` reason; none of these has a hash."""
        contents, shas, reasons, details = [], [], [], []
        for path, length in zip(paths, lengths):
            data = sha = reason = detail = None
            try:
                _check_size(length, max_bytes)
                data = self.read(path, max_bytes)
                sha = hashlib.sha256(data).hexdigest()
            except EntryRejected as rej:
                reason, detail = rej.reason, rej.detail
                if reason == "file_too_large":
                    detail = f"{detail} > {limit_key}={max_bytes}"
            except (OSError, ValueError) as exc:
                reason, detail = "unreadable", describe_error(exc)
            contents.append(data)
            shas.append(sha)
            reasons.append(reason)
            details.append(detail)
        return contents, shas, reasons, details


def _check_size(size, limit: int) -> None:
    if size is not None and size > limit:
        raise EntryRejected("file_too_large", f"{size} bytes")
