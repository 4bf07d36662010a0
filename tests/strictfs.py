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
import time

import pyarrow.fs as pafs

from lesionspark import storage

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
    _step()
    path = uri.split("://", 1)[1]
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o640)
    except FileExistsError:
        return False
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    return True


def register() -> None:
    for kind, contract in (
            ("hdfslike", storage.Contract("hdfs", dir_rename=True, file_put_atomic=False, exclusive_create="plugin",
                                          create_exclusive=_create_exclusive)),
            ("s3like", storage.Contract("object", dir_rename=False, file_put_atomic=True, exclusive_create=None))):
        handler = pafs.PyFileSystem(Strict(kind))
        storage.register(kind, lambda uri, fs=handler: (fs, uri.split("://", 1)[1]), contract)
