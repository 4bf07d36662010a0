"""Petastorm's ``make_reader`` on any storage root (Horovod ranks, tests): the same pyarrow
filesystem, built from the same options, as every other read of the root (``storage.filesystem``).

Petastorm 0.13.1 opens ``file://`` and ``hdfs://`` datasets itself. For any other scheme (``s3a``,
``gs``...) it parses the URL with fsspec even when it is given a filesystem, and fsspec's S3 class
needs s3fs, which this stack does not carry (its aiobotocore pins another botocore than boto3's). So
there it gets the root's pyarrow filesystem wrapped for fsspec (``ArrowFSWrapper``), and the
object's path as a ``file://`` URL, which it takes apart without fsspec; the wrapper drops the
leading ``/`` that this adds, since object store paths start with the bucket.

Petastorm reads a dataset's Unischema by unpickling ``_common_metadata``, a file under the storage
root that anyone who can write there can plant. Its own unpickler allows every name of whole
packages (``builtins``, ``numpy``, ``pyspark``), so a planted pickle calling ``exec`` ran in every
Horovod rank. Importing this module narrows that unpickler (process-wide: every Petastorm read in
the process goes through it) to exactly the globals the project's schemas pickle
(``ALLOWED_GLOBALS``; ``tests/test_hostile_code.py`` checks every schema the project writes
against it); anything else is an ``UnpicklingError``, and the read fails with nothing run.
"""
from __future__ import annotations

from urllib.parse import urlparse

from ..store import hdfs, storage

OWN_SCHEMES = ("file", "hdfs")
# (module, name) of every global in a pickled lesion or balanced schema (``schema.lesion_schema``,
# ``balance.balanced_schema``), at any pickle protocol
ALLOWED_GLOBALS = frozenset({
    ("collections", "OrderedDict"), ("copyreg", "_reconstructor"), ("copy_reg", "_reconstructor"),
    ("builtins", "object"), ("__builtin__", "object"),
    ("numpy", "dtype"), ("numpy", "float32"), ("numpy", "float64"), ("numpy", "int8"), ("numpy", "int32"),
    ("numpy", "int64"), ("numpy", "uint8"), ("numpy", "str_"), ("numpy", "bool_"),
    ("petastorm.codecs", "CompressedImageCodec"), ("petastorm.codecs", "ScalarCodec"),
    ("petastorm.unischema", "Unischema"), ("petastorm.unischema", "UnischemaField"),
    ("pyspark.sql.types", "ByteType"), ("pyspark.sql.types", "FloatType"), ("pyspark.sql.types", "DoubleType"),
    ("pyspark.sql.types", "IntegerType"), ("pyspark.sql.types", "LongType"), ("pyspark.sql.types", "StringType"),
    ("pyspark.sql.types", "BooleanType"), ("pyspark.sql.types", "ShortType"),
})


def _find_class(self, module: str, name: str):
    import pickle
    if (module, name) in ALLOWED_GLOBALS:
        return pickle.Unpickler.find_class(self, module, name)
    raise pickle.UnpicklingError(f"global '{module}.{name}' is not one a lesionspark dataset schema uses")


def restrict_unpickling() -> None:
    """Narrow Petastorm's metadata unpickler to ``ALLOWED_GLOBALS`` (idempotent)."""
    from petastorm.etl import legacy
    legacy.RestrictedUnpickler.find_class = _find_class


restrict_unpickling()  # the schemes petastorm opens itself (petastorm.fs_utils.get_dataset_path)


def _wrapper(fs, absolute: bool = False):
    from fsspec.implementations.arrow import ArrowFSWrapper

    class BucketPaths(ArrowFSWrapper):
        @classmethod
        def _strip_protocol(cls, path):
            stripped = super()._strip_protocol(path)
            return "/" + stripped.lstrip("/") if absolute else stripped.lstrip("/")

    return BucketPaths(fs)


def make_reader(url: str, **kwargs):
    """``petastorm.make_reader(url, **kwargs)``, for a dataset on any filesystem ``storage`` reaches.
    On HDFS without libhdfs (``store.hdfs``: hdfs-native) Petastorm gets the root's filesystem too,
    with absolute paths."""
    from petastorm import make_reader as petastorm_reader
    url = storage.normalize_uri(url)
    scheme = urlparse(url).scheme
    if scheme == "file" or (scheme in OWN_SCHEMES and hdfs.client() == "libhdfs"):
        return petastorm_reader(url, **kwargs)
    fs, path = storage.filesystem(url)
    if scheme in OWN_SCHEMES:
        return petastorm_reader("file://" + path, filesystem=_wrapper(fs, absolute=True), **kwargs)
    return petastorm_reader("file:///" + path.lstrip("/"), filesystem=_wrapper(fs), **kwargs)
