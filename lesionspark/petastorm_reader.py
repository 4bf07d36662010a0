"""Petastorm's ``make_reader`` on any storage root (Horovod ranks, tests): the same pyarrow
filesystem, built from the same options, as every other read of the root (``storage.filesystem``).

Petastorm 0.13.1 opens ``file://`` and ``hdfs://`` datasets itself. For any other scheme (``s3a``,
``gs``...) it parses the URL with fsspec even when it is given a filesystem, and fsspec's S3 class
needs s3fs, which this stack does not carry (its aiobotocore pins another botocore than boto3's). So
there it gets the root's pyarrow filesystem wrapped for fsspec (``ArrowFSWrapper``), and the
object's path as a ``file://`` URL, which it takes apart without fsspec; the wrapper drops the
leading ``/`` that this adds, since object store paths start with the bucket.
"""
from __future__ import annotations

from urllib.parse import urlparse

from . import storage

OWN_SCHEMES = ("file", "hdfs")  # the schemes petastorm opens itself (petastorm.fs_utils.get_dataset_path)


def _wrapper(fs):
    from fsspec.implementations.arrow import ArrowFSWrapper

    class BucketPaths(ArrowFSWrapper):
        @classmethod
        def _strip_protocol(cls, path):
            return super()._strip_protocol(path).lstrip("/")

    return BucketPaths(fs)


def make_reader(url: str, **kwargs):
    """``petastorm.make_reader(url, **kwargs)``, for a dataset on any filesystem ``storage`` reaches."""
    from petastorm import make_reader as petastorm_reader
    url = storage.normalize_uri(url)
    if urlparse(url).scheme in OWN_SCHEMES:
        return petastorm_reader(url, **kwargs)
    fs, path = storage.filesystem(url)
    return petastorm_reader("file:///" + path.lstrip("/"), filesystem=_wrapper(fs), **kwargs)
