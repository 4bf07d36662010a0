"""The one S3 primitive pyarrow 10 lacks: create an object only if its key is free.

A ``PUT`` with ``If-None-Match: *`` (AWS S3 since 2024-08, MinIO, and other stores that follow it)
is refused with 412 when the key exists, decided by the store itself, so two contenders can never
both create the same key. Sent with boto3, configured from the same pyarrow S3 options that
``storage`` builds from Spark's ``fs.s3a.*`` settings (one configuration for both).

A store that ignores the header would let every contender "create" the key. That cannot be known
from its name, so ``supports_conditional_put`` asks the store once per bucket: it writes a probe
object, then puts it again conditionally, which only a store that honours the header refuses.

Runs on the driver of a scoring run (the lease); boto3 is imported only when used.
"""
from __future__ import annotations

import uuid

PROBE_PREFIX = ".tmp-probe-"  # a temporary name: readers of the folder skip it (storage.TEMP_PREFIXES)
_SUPPORT: dict[tuple, bool] = {}  # (endpoint, bucket) -> the probe's answer, once per process


def client(options: dict, region: str | None = None):
    """A boto3 S3 client from pyarrow ``S3FileSystem`` options (``storage.s3_options``). Without
    keys it uses boto3's standard credential chain, as pyarrow does. Botocore's retries stay on:
    a conditional PUT retried after a success whose answer was lost gets 412, which
    ``conditional_put`` tells apart by reading the object back."""
    import boto3
    from botocore import UNSIGNED
    from botocore.config import Config
    kwargs: dict = {"region_name": options.get("region") or region}
    if options.get("endpoint_override"):
        kwargs["endpoint_url"] = f"{options.get('scheme', 'https')}://{options['endpoint_override']}"
    for key, arg in (("access_key", "aws_access_key_id"), ("secret_key", "aws_secret_access_key"),
                     ("session_token", "aws_session_token")):
        if options.get(key):
            kwargs[arg] = options[key]
    config = Config(signature_version=UNSIGNED if options.get("anonymous") else None,
                    s3={"addressing_style": "path"} if options.get("endpoint_override") else {},
                    retries={"mode": "standard", "max_attempts": 3})
    return boto3.client("s3", config=config, **kwargs)


def _code(exc) -> str:
    return str(exc.response.get("Error", {}).get("Code", "")) if hasattr(exc, "response") else ""


def conditional_put(s3, bucket: str, key: str, data: bytes) -> bool:
    """PUT ``data`` at ``key`` only if no object has that key; True if this call created it.

    412 (PreconditionFailed): the key exists. It is ours only if it holds exactly ``data`` (a retry
    of our own successful PUT; callers put a run id in ``data``). 409 (ConditionalRequestConflict:
    another conditional write to the key was in flight): not created; the caller looks again."""
    from botocore.exceptions import ClientError
    try:
        s3.put_object(Bucket=bucket, Key=key, Body=data, IfNoneMatch="*")
        return True
    except ClientError as exc:
        code = _code(exc)
        if code in ("PreconditionFailed", "412"):
            return s3.get_object(Bucket=bucket, Key=key)["Body"].read() == data
        if code in ("ConditionalRequestConflict", "409"):
            return False
        raise


def supports_conditional_put(s3, bucket: str, prefix: str, endpoint: str = "") -> bool:
    """Whether the store refuses a conditional PUT over an existing key (asked once per bucket):
    a probe object under ``prefix`` is written, put again with ``If-None-Match: *``, and deleted."""
    from botocore.exceptions import ClientError
    cache_key = (endpoint, bucket)
    if cache_key not in _SUPPORT:
        key = f"{prefix.rstrip('/')}/{PROBE_PREFIX}{uuid.uuid4().hex}"
        s3.put_object(Bucket=bucket, Key=key, Body=b"probe")
        try:
            s3.put_object(Bucket=bucket, Key=key, Body=b"probe again", IfNoneMatch="*")
            _SUPPORT[cache_key] = False  # the header was ignored: it overwrote
        except ClientError as exc:
            if _code(exc) not in ("PreconditionFailed", "412", "NotImplemented", "501"):
                raise
            _SUPPORT[cache_key] = _code(exc) in ("PreconditionFailed", "412")
        finally:
            s3.delete_object(Bucket=bucket, Key=key)
    return _SUPPORT[cache_key]
