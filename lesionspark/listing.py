"""List archives as a DataFrame and read file bytes where the rows are: nothing per file on the driver.

``list_files`` returns ``path, length, modificationTime, stem`` for every file under some folders
(any filesystem pyarrow reaches: local, HDFS, S3, GCS), 0-byte files included. The listing itself
runs in executors: the driver only hands out directories. It expands the tree breadth-first, one
Spark job a level, until there are enough directories to keep every core busy (or the tree ends);
each remaining directory is then listed recursively by one task. Only directory names come back
to the driver, so a tree of 10^6 files costs it no more memory than a tree of 10^3.

``read_file`` reads one file's bytes in an executor (at most ``limit`` of them); ``hash_file``
streams a file through SHA-256 without keeping it. Paths are spelled as Hadoop spells them
(``file:/a/b c.jpg``, ``hdfs://nn:8020/a/b.jpg``, ``s3a://bucket/key.jpg``), as earlier
lesionspark tables recorded them.
"""
from __future__ import annotations

import fnmatch
import hashlib
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

    def __init__(self, uri: str):
        self.uri = storage.normalize_uri(uri)
        self.fs, self.path = storage.filesystem(self.uri)
        self.prefix = _prefix(self.uri, self.path)

    def uri_of(self, fs_path: str) -> str:
        return self.prefix + (fs_path if self.prefix == "file:" else fs_path.lstrip("/"))


def _visible(name: str) -> bool:
    return not name.startswith(".")  # .DS_Store, .Trash, editors' swap files


def _frame(rows: list[tuple]) -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=["path", "length", "modificationTime", "is_dir"])
    # Milliseconds, UTC: what Hadoop's FileStatus gives, so indexes written before compare equal.
    df["modificationTime"] = pd.to_datetime(df["modificationTime"], unit="ms", utc=True)
    return df.astype({"length": "int64", "is_dir": "bool"})


def _lister(roots: list[Root], mode: str, batch_rows: int = 20_000):
    """mapInPandas function: ``root, dir`` rows in; out, under each dir: its subdirectories
    (``dirs``), its files (``files``) or every file below it (``recursive``)."""
    recursive = mode == "recursive"
    def run(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        import pyarrow.fs as pafs
        for batch in batches:
            for r, d in zip(batch["root"], batch["dir"]):
                root = roots[r]
                rows = []
                for info in root.fs.get_file_info(pafs.FileSelector(d, recursive=recursive, allow_not_found=True)):
                    rel = info.path[len(d):].lstrip("/")
                    if not all(_visible(part) for part in rel.split("/")):
                        continue
                    if info.type == pafs.FileType.File and mode != "dirs":
                        rows.append((root.uri_of(info.path), info.size or 0, info.mtime_ns // 1_000_000, False))
                    elif info.type == pafs.FileType.Directory and mode == "dirs":
                        rows.append((root.uri_of(info.path), 0, 0, True))
                    if len(rows) >= batch_rows:
                        yield _frame(rows)
                        rows = []
                if rows:
                    yield _frame(rows)
    return run


def list_files(spark, uris: list[str], glob: str | None = None, regex: str | None = None,
               min_dirs: int | None = None, max_depth: int = 4):
    """``path, length, modificationTime, stem`` for every file under ``uris`` (recursive, a DataFrame).

    ``glob`` matches file names (``*.jpg``), ``regex`` whole paths, case-insensitively
    (``\\.(jpe?g|png)$``). Hidden entries (names starting with ``.``) are not listed."""
    from pyspark.sql import functions as F
    roots = [Root(u) for u in uris]
    for root in roots:
        import pyarrow.fs as pafs
        if root.fs.get_file_info(root.path).type != pafs.FileType.Directory:
            raise FileNotFoundError(f"{root.uri} is not a folder")
    min_dirs = min_dirs or 4 * spark.sparkContext.defaultParallelism
    def over(dirs: pd.DataFrame, mode: str):
        return spark.createDataFrame(dirs, "root int, dir string").repartition(
            max(1, min(len(dirs), min_dirs))).mapInPandas(_lister(roots, mode), LISTING_SCHEMA)

    # Expand the tree a level at a time (one small job each); only directory names come back.
    frontier = pd.DataFrame({"root": range(len(roots)), "dir": [r.path for r in roots]})
    shallow = []
    for _ in range(max_depth):
        if len(frontier) >= min_dirs or frontier.empty:
            break
        shallow.append(frontier)
        dirs = over(frontier, "dirs").select("path").toPandas()["path"]
        idx = [_root_of(roots, p) for p in dirs]
        frontier = pd.DataFrame({"root": idx, "dir": [to_fs_path(p, roots[i].prefix) for i, p in zip(idx, dirs)]})
    # The files: those directly in the expanded directories, and everything below the frontier.
    parts = [over(pd.concat(shallow, ignore_index=True), "files")] if shallow else []
    if not frontier.empty:
        parts.append(over(frontier, "recursive"))
    out = parts[0]
    for p in parts[1:]:
        out = out.unionByName(p)
    out = out.drop("is_dir")
    if glob:
        out = out.filter(F.regexp_extract("path", r"([^/]*)$", 1).rlike(_glob_regex(glob)))
    if regex:
        out = out.filter(F.lower("path").rlike(regex))
    return out.withColumn("stem", F.regexp_extract("path", STEM_FROM_PATH, 1))


def _root_of(roots: list[Root], path: str) -> int:
    return max((i for i, r in enumerate(roots) if path.startswith(r.prefix)), key=lambda i: len(roots[i].prefix))


def _glob_regex(glob: str) -> str:
    return "^" + fnmatch.translate(glob).removeprefix("(?s:").removesuffix(")\\Z") + "$"


class Reader:
    """Reads listed files in executors through the same pyarrow filesystems (picklable)."""

    def __init__(self, uris: list[str]):
        self.roots = [Root(u) for u in uris]

    def _locate(self, path: str):
        root = self.roots[_root_of(self.roots, path)]
        return root.fs, to_fs_path(path, root.prefix)

    def read(self, path: str, limit: int) -> bytes:
        """The file's bytes; raises ``ValueError`` past ``limit`` bytes (nothing more is read)."""
        fs, p = self._locate(path)
        if path.startswith("file:"):
            with open(p, "rb") as fh:
                data = fh.read(limit + 1)
        else:
            with fs.open_input_stream(p) as fh:
                data = fh.read(limit + 1)
        if len(data) > limit:
            raise ValueError(f"more than {limit} bytes")
        return data

    def sha256(self, path: str) -> str:
        """SHA-256 of a file of any size, streamed in 8 MiB chunks."""
        fs, p = self._locate(path)
        h = hashlib.sha256()
        opener = (lambda: open(p, "rb")) if path.startswith("file:") else (lambda: fs.open_input_stream(p))
        with opener() as fh:
            while chunk := fh.read(CHUNK):
                h.update(chunk)
        return h.hexdigest()


    def fetch(self, paths, lengths, max_bytes: int, limit_key: str):
        """Read and hash many listed files, each once: (contents or None, sha256 or None, reasons,
        details). Files over ``max_bytes`` are hashed as a stream and rejected unread into memory;
        a file that vanished or cannot be opened gets ``unreadable`` and no hash."""
        contents, shas, reasons, details = [], [], [], []
        for path, length in zip(paths, lengths):
            data = sha = reason = detail = None
            try:
                if length > max_bytes:
                    sha = self.sha256(path)
                    reason, detail = "file_too_large", f"{length} bytes > {limit_key}={max_bytes}"
                else:
                    data = self.read(path, max_bytes)
                    sha = hashlib.sha256(data).hexdigest()
            except (OSError, ValueError) as exc:
                reason, detail = "unreadable", f"{type(exc).__name__}: {exc}"
            contents.append(data)
            shas.append(sha)
            reasons.append(reason)
            details.append(detail)
        return contents, shas, reasons, details
