"""Publishing a directory in one step, on every filesystem (driver side, and ranks for a model's
run folder): ``AtomicDir`` builds under a staging name and moves it in by rename where directories
move (POSIX, HDFS); on object stores it writes a version folder and the ``_PUBLISHED`` record that
names it, and ``resolve`` tells readers where the published version is."""
from __future__ import annotations

import json
import re
import time

import pyarrow.fs as pafs

from .storage import (StorageRefused, contract, file_type, filesystem, new_run_id, normalize_uri, read_regular,
                      replace_json, require)


# Object stores (no directory move): a published directory ``<uri>/`` holds version folders
# ``_v-<run id>/`` and the record ``_PUBLISHED`` that names the one readers use (``resolve``).
PUBLISHED = "_PUBLISHED"


VERSION_PREFIX = "_v-"


_VERSION = re.compile(r"_v-[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


MAX_RECORD_BYTES = 64 << 10


def _published_version(uri: str) -> str | None:
    """The version folder the ``_PUBLISHED`` record under ``uri`` names; None where there is no
    record. The record is read from a shared store: anything but a plain version name among
    ``uri``'s children (a path, ``..``, a huge or broken file) is refused, never followed."""
    record = f"{uri}/{PUBLISHED}"
    if file_type(record) == "notfound":
        return None
    try:
        version = json.loads(read_regular(record, MAX_RECORD_BYTES))["version"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise StorageRefused(f"{record} is not a publish record ({exc}); refusing to guess what was published") from None
    if not isinstance(version, str) or not _VERSION.fullmatch(version) or ".." in version:
        raise StorageRefused(f"{record} names {str(version)[:80]!r}, not a version folder of {uri}; refusing to "
                             "follow it")
    return version


def resolve(uri: str) -> str:
    """Where readers find what was published at ``uri``: ``uri`` itself where directories move
    (POSIX, HDFS: no I/O); on object stores the version folder its ``_PUBLISHED`` record names, or
    ``uri`` where there is no record (nothing published there yet, or a folder copied by hand).
    Resolve once per run and pass the result on: a run then reads one version throughout."""
    uri = normalize_uri(uri).rstrip("/")
    if contract(uri).dir_rename:
        return uri
    version = _published_version(uri)
    return f"{uri}/{version}" if version else uri


class AtomicDir:
    """Build a directory under a staging name, then make it the published one in one step.

    ``with AtomicDir(uri) as staging: ...write under staging...``; afterwards readers find it at
    ``resolve(uri)`` (``published`` says where). On an exception the staging directory is deleted and
    the previous output is left untouched. Leftovers of a crashed run are cleaned by the next run.

    - Where directories move in one step (POSIX, HDFS): the staging folder is the sibling
      ``.<name>.staging-<run>``; on success the previous directory is renamed aside, the staging one
      renamed into place, and the old one deleted. Between the two renames a reader finds no
      directory, never a half-written one; the next run puts a previous output left aside back.
    - Object stores (no directory move; one PUT replaces an object whole): the staging folder is the
      version ``<uri>/_v-<run>/``; on success one PUT of ``<uri>/_PUBLISHED`` names it, then the
      other versions and anything else under ``<uri>`` are deleted. Readers that resolve find the old
      version or the new one, whole.
    """

    def __init__(self, uri: str, run_id: str | None = None):
        self.uri = normalize_uri(uri).rstrip("/")
        self.run_id = run_id or new_run_id()
        parent, name = self.uri.rsplit("/", 1)
        self.parent, self.name = parent, name
        self.versioned = not contract(self.uri).dir_rename
        if self.versioned:
            if not _VERSION.fullmatch(VERSION_PREFIX + self.run_id):
                raise ValueError(f"run id {self.run_id!r} cannot name a version folder")
            self.staging = self.published = f"{self.uri}/{VERSION_PREFIX}{self.run_id}"
        else:
            self.staging, self.published = f"{parent}/.{name}.staging-{self.run_id}", self.uri
        self.old = f"{parent}/.{name}.old-{self.run_id}"

    def _cleanup_leftovers(self) -> None:
        """Finish what a crashed run left half done. Directories that move: with no final directory,
        the newest ``.old-*`` (a run killed between its two renames) goes back into place; then every
        staging and old sibling is deleted. Object stores: every version folder (and its parts
        scratch) but the published one is deleted."""
        if self.versioned:
            fs, top = filesystem(self.uri)
            current = _published_version(self.uri)
            for info in fs.get_file_info(pafs.FileSelector(top, allow_not_found=True)):
                if info.base_name.startswith(VERSION_PREFIX) and info.base_name != current:
                    _delete_info(fs, info)
            return
        fs, parent = filesystem(self.parent)
        fs.create_dir(parent, recursive=True)
        leftovers = [info for info in fs.get_file_info(pafs.FileSelector(parent))
                     if info.base_name.startswith((f".{self.name}.staging-", f".{self.name}.old-"))]
        final = f"{parent}/{self.name}"
        olds = sorted(i.path for i in leftovers if i.base_name.startswith(f".{self.name}.old-")
                      and i.type == pafs.FileType.Directory)
        if olds and fs.get_file_info(final).type == pafs.FileType.NotFound:
            fs.move(olds[-1], final)  # the previous good output, as it was
            leftovers = [i for i in leftovers if i.path != olds[-1]]
        for info in leftovers:
            _delete_info(fs, info)

    def __enter__(self) -> str:
        require(self.uri, "publish")  # before any work, not after it
        self._cleanup_leftovers()
        return self.staging

    def __exit__(self, exc_type, exc, tb) -> bool:
        fs, staging = filesystem(self.staging)
        if exc_type is not None:
            if fs.get_file_info(staging).type != pafs.FileType.NotFound:
                fs.delete_dir(staging)
            return False
        if self.versioned:
            self._point()
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

    def _point(self) -> None:
        """Object stores: one PUT of the record makes the new version the published one; then what
        it replaced (older versions, a folder's earlier content) is deleted."""
        version = self.staging.rsplit("/", 1)[1]
        replace_json(f"{self.uri}/{PUBLISHED}", {"version": version, "run_id": self.run_id,
                                                  "published_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
        fs, top = filesystem(self.uri)
        for info in fs.get_file_info(pafs.FileSelector(top)):
            if info.base_name not in (PUBLISHED, version):
                _delete_info(fs, info)


def _delete_info(fs: pafs.FileSystem, info: pafs.FileInfo) -> None:
    fs.delete_dir(info.path) if info.type == pafs.FileType.Directory else fs.delete_file(info.path)
