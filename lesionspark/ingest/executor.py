"""Ingest (executor side): each Spark task reads its files one at a time, hashes, decodes, resizes
and PNG-encodes them (``decode_partition``); rows that cannot become records keep their reason. The
driver half (``driver``) plans the tasks and writes the dataset."""
from __future__ import annotations

import time
from typing import Iterator

import pandas as pd

from ..dataset.schema import FIELD_NAMES, encode_image, lesion_schema
from ..imaging.dicom import MAX_DECODED_BYTES
from ..imaging.frames import decode_single


def decode_batch(batch: pd.DataFrame, size: int, mode: str, max_pixels: int, reader, max_bytes: int,
                 max_decoded: int = MAX_DECODED_BYTES) -> pd.DataFrame:
    """Read each file of a batch once (rows carry ``path``, ``length`` and the metadata), hash it,
    decode, resize and PNG-encode it. Runs in executors. Rows that cannot become records keep
    ``image=None`` and get ``reason``/``detail``. One file at a time: a worker holds one file's bytes
    and one decoded image, whatever the batch size (``ingest.arrow_batch_rows``)."""
    schema = lesion_schema(size)
    images, hashes, reasons, details = [], [], [], []
    for path, length in zip(batch["path"], batch["length"]):
        contents, sha, pre_reason, pre_detail = reader.fetch([path], [length], max_bytes, "ingest.max_file_bytes")
        arrays, reason, detail = decode_single(contents, size, mode, max_pixels, pre_reason, pre_detail, max_decoded)
        images.append(None if arrays[0] is None else encode_image(schema, arrays[0]))
        hashes += sha
        reasons += reason
        details += detail
    out = batch.drop(columns=["length"]).rename(columns={"path": "source"})
    out["image"] = images
    out["sha256"] = hashes
    out["reason"] = reasons
    out["detail"] = details
    return out[list(FIELD_NAMES) + ["split", "reason", "detail"]]


def decode_partition(size: int, mode: str, max_pixels: int, reader, max_bytes: int, clock=None,
                      max_decoded: int = MAX_DECODED_BYTES):
    def run(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for batch in batches:
            start = time.perf_counter()
            out = decode_batch(batch, size, mode, max_pixels, reader, max_bytes, max_decoded)
            if clock is not None:
                clock.add(files=len(batch), read_decode_encode=time.perf_counter() - start)
            yield out
    return run
