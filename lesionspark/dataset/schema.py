"""Petastorm Unischema of lesion records (docs/contracts.md: Lesion records) and record encoding.

Imported on the driver (Petastorm writes) and in executors (records encoded in decode tasks).
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
from petastorm.codecs import CompressedImageCodec, ScalarCodec
from petastorm.unischema import Unischema, UnischemaField
from pyspark.sql.types import BinaryType, ByteType, DataType, FloatType, IntegerType, StringType, StructField, StructType

# Scalar fields in docs/contracts.md order; the image field is inserted after them by size.
SCALAR_FIELDS = (
    ("image_id", np.str_, StringType(), False),
    ("lesion_id", np.str_, StringType(), False),
    ("dx", np.str_, StringType(), False),
    ("label", np.int32, IntegerType(), False),
    ("malignant", np.int8, ByteType(), False),
    ("dx_type", np.str_, StringType(), False),
    ("age", np.float32, FloatType(), True),
    ("sex", np.str_, StringType(), False),
    ("localization", np.str_, StringType(), False),
    ("sha256", np.str_, StringType(), False),
    ("source", np.str_, StringType(), False),
)
FIELD_NAMES = tuple(f[0] for f in SCALAR_FIELDS[:5]) + ("image",) + tuple(f[0] for f in SCALAR_FIELDS[5:])


def record_struct(extra: dict[str, DataType] | None = None, all_nullable: bool = True) -> StructType:
    """The Spark schema of a lesion record as the stages pass it around before Petastorm encodes it:
    ``FIELD_NAMES`` typed as ``SCALAR_FIELDS`` says, the image as its PNG bytes, then ``extra``
    columns. ``all_nullable`` False: only the fields docs/contracts.md lets be null (and the extra ones)."""
    types = {name: spark_type for name, _, spark_type, _ in SCALAR_FIELDS}
    nullable = {name: null for name, _, _, null in SCALAR_FIELDS}
    fields = [StructField(n, BinaryType() if n == "image" else types[n], all_nullable or nullable.get(n, False))
              for n in FIELD_NAMES]
    return StructType(fields + [StructField(n, t, True) for n, t in (extra or {}).items()])


@lru_cache(maxsize=None)
def lesion_schema(size: int) -> Unischema:
    """The Unischema for ``size x size`` RGB images (PNG-compressed, lossless)."""
    fields = [UnischemaField(name, dtype, (), ScalarCodec(spark_type), nullable)
              for name, dtype, spark_type, nullable in SCALAR_FIELDS]
    image = UnischemaField("image", np.uint8, (size, size, 3), CompressedImageCodec("png"), False)
    fields.insert(5, image)
    return Unischema(f"LesionRecord{size}", fields)


def encode_image(schema: Unischema, image: np.ndarray) -> bytes:
    """PNG bytes as Petastorm stores them (its codec handles the RGB/BGR order)."""
    return bytes(schema.fields["image"].codec.encode(schema.fields["image"], image))
