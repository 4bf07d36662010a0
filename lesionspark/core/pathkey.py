"""How archive paths are stored: as they are, or (``score.hash_paths``) as SHA-256(salt + path).

The salt is a secret: whoever has it can hash candidate paths and patient IDs and match them. It
reaches executors as a broadcast variable, whose value travels in Spark's block manager and never
enters a query plan, so it is not in the Spark UI, the event log or ``EXPLAIN``; a ``lit(salt)``
would be in all three. The hash is the one Spark's ``sha2(concat(salt, path), 256)`` gives, so
indexes written before remain valid. Runs on the driver (the broadcast) and in executors (the hash).
"""
from __future__ import annotations

import hashlib

from .config import Config


def salt(cfg: Config) -> str | None:
    """The salt when paths are hashed, else None."""
    return cfg.get("score.path_salt") if cfg.get("score.hash_paths") else None


def share(spark, secret: str | None):
    """A broadcast of ``secret`` (None stays None): what executor code reads it from."""
    return None if secret is None else spark.sparkContext.broadcast(secret)


def digest(secret: str, path: str) -> str:
    return hashlib.sha256((secret + path).encode("utf-8")).hexdigest()


def column(spark, secret: str | None, name: str = "path"):
    """The stored form of the path column ``name``: itself, or its salted hash computed in executors."""
    from pyspark.sql import functions as F
    if secret is None:
        return F.col(name)
    shared = share(spark, secret)

    @F.pandas_udf("string")
    def path_key(paths):
        value = shared.value
        return paths.map(lambda p: None if p is None else digest(value, p))

    return path_key(F.col(name))
