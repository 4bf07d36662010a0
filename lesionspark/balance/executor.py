"""Balance (executor side): one Spark task per class reads that class's training rows with pyarrow,
adds its new rows (SMOTE or copies; a class at its target passes through undecoded) and writes them
into Petastorm parts itself (``class_tasks``). The driver half (``driver``) plans the targets and
publishes the parts."""
from __future__ import annotations

import logging
from functools import lru_cache
from typing import Iterator, Mapping

import numpy as np
import pandas as pd

from ..core.classes import LABEL_OF
from ..dataset.schema import FIELD_NAMES, encode_image, lesion_schema
from ..imaging.images import sha256_hex
from ..store import parquet
from ..store.parts import PartWriter

log = logging.getLogger(__name__)


BALANCED_FIELDS = list(FIELD_NAMES) + ["synthetic", "parents"]


@lru_cache(maxsize=None)
def balanced_schema(size: int):
    """The lesion Unischema plus ``synthetic`` (bool) and ``parents`` (comma-separated image ids:
    parent and neighbour for SMOTE, the copied image for oversampling, empty for originals)."""
    from petastorm.codecs import ScalarCodec
    from petastorm.unischema import Unischema, UnischemaField
    from pyspark.sql.types import BooleanType, StringType
    base = lesion_schema(size)
    return Unischema(f"BalancedLesionRecord{size}", list(base.fields.values()) + [
        UnischemaField("synthetic", np.bool_, (), ScalarCodec(BooleanType()), False),
        UnischemaField("parents", np.str_, (), ScalarCodec(StringType()), False)])


def synthesize_group(pdf: pd.DataFrame, method: str, targets: Mapping[str, int], size: int, k: int,
                     seed: int, neighbor_size: int | None, chunk_rows: int, synth_chunk_rows: int) -> pd.DataFrame:
    """New rows for one class (all of its training rows in ``pdf``). Runs in an executor, one class
    per task (``class_records``)."""
    pdf = pdf.sort_values("image_id").reset_index(drop=True)  # order-independent of the shuffle
    dx = pdf["dx"].iloc[0]
    n_new = targets[dx] - len(pdf)
    schema = lesion_schema(size)
    field = schema.fields["image"]
    class_seed = seed * 1000 + LABEL_OF[dx]
    how = method
    if method == "smote":
        from .smote import effective_k, smote_class
        k_eff = effective_k(len(pdf), k)
        if k_eff < 1:
            how = "oversample"
            log.warning("balance: class %s has %d sample(s), too few for SMOTE: oversampling it", dx, len(pdf))
        elif k_eff < k:
            log.warning("balance: class %s has %d samples: SMOTE with k=%d instead of %d", dx, len(pdf), k_eff, k)
    if how == "smote":
        images = np.stack([field.codec.decode(field, b) for b in pdf["image"]])
        new, parent, neighbour, steps = smote_class(images, n_new, k, class_seed, neighbor_size, chunk_rows,
                                                synth_chunk_rows)
        pairs = [(pdf["image_id"][p], pdf["image_id"][q]) for p, q in zip(parent, neighbour)]
        encoded = [encode_image(schema, im) for im in new]
        sources = [f"smote:{a}+{b}@{st:.6f}" for (a, b), st in zip(pairs, steps)]
        parents = [f"{a},{b}" for a, b in pairs]
        lesions = [pdf["lesion_id"][p] for p in parent]
        clinical = inherited_metadata(pdf, parent, neighbour, steps)
    else:  # oversample: copies of rows drawn with replacement
        pick = np.random.default_rng(class_seed).integers(0, len(pdf), n_new)
        encoded = [bytes(pdf["image"][i]) for i in pick]
        sources = [f"oversample:{pdf['image_id'][i]}" for i in pick]
        parents = [pdf["image_id"][i] for i in pick]
        lesions = [pdf["lesion_id"][i] for i in pick]
        clinical = inherited_metadata(pdf, pick, pick, np.zeros(len(pick)))
    return pd.DataFrame({
        "image_id": [f"{how}-{dx}-{seed}-{i:06d}" for i in range(n_new)],
        "lesion_id": lesions, "dx": dx, "label": LABEL_OF[dx], "malignant": int(pdf["malignant"].iloc[0]),
        "image": encoded, "dx_type": how, **clinical,
        "sha256": [sha256_hex(b) for b in encoded], "source": sources, "synthetic": True, "parents": parents,
    })[BALANCED_FIELDS]


def inherited_metadata(pdf: pd.DataFrame, parent, neighbour, steps) -> dict:
    """Age, sex and site of new rows, as SMOTE-NC does for mixed features: the age interpolated like
    the image (parent + step x (neighbour - parent); the parent's where either is unknown), sex and
    site the parent's. A copy (oversampling: neighbour = parent, step 0) keeps its row's values. So a
    model with metadata inputs never learns "metadata missing" as a sign of a minority class."""
    age = pdf["age"].to_numpy(dtype=np.float64)
    a, b = age[np.asarray(parent, int)], age[np.asarray(neighbour, int)]
    mixed = a + np.asarray(steps, np.float64) * (b - a)
    return {"age": np.where(np.isnan(mixed), a, mixed).astype(np.float32),
            "sex": pdf["sex"].to_numpy()[np.asarray(parent, int)],
            "localization": pdf["localization"].to_numpy()[np.asarray(parent, int)]}


def read_class(train_uri: str, dx: str, batch_rows: int) -> Iterator[pd.DataFrame]:
    """The training split's records of class ``dx``, read with pyarrow in batches (no Spark)."""
    import pyarrow.compute as pc
    for batch in parquet.parquet_dataset(train_uri).to_batches(columns=list(FIELD_NAMES), filter=pc.field("dx") == dx,
                                                               batch_size=batch_rows):
        if batch.num_rows:
            yield batch.to_pandas()


def class_records(dx: str, train_uri: str, method: str, before: Mapping[str, int], targets: Mapping[str, int],
                  size: int, args: tuple, batch_rows: int) -> Iterator[pd.DataFrame]:
    """One class's balanced records: its training rows as they are, then (below its target) the new
    ones. A class at its target is streamed batch by batch and never decoded. Runs in an executor."""
    originals = dict(synthetic=False, parents="")
    if targets[dx] <= before[dx]:
        for pdf in read_class(train_uri, dx, batch_rows):
            yield pdf.assign(**originals)
        return
    pdf = pd.concat(list(read_class(train_uri, dx, batch_rows)), ignore_index=True)
    yield pdf.assign(**originals)
    yield synthesize_group(pdf, method, targets, size, *args)


def class_tasks(train_uri: str, parts_uri: str, method: str, before: dict, targets: dict, size: int, args: tuple,
                batch_rows: int, rowgroup_bytes: int, rows_per_file: int):
    """``mapPartitions`` function over class names (one class per task): each task writes its class's
    originals and new rows into Petastorm parts itself and returns, per part it wrote, ``(dx, part,
    rows, row groups)``. A job's result holds only successful attempts' returns, so these name
    exactly the parts to publish. ``args``: (k, seed, neighbor_size, chunk_rows, synth_chunk_rows)."""
    schema = balanced_schema(size)

    def run(classes: Iterator[str]) -> Iterator[tuple]:
        rows, groups = {}, {}
        with PartWriter(parts_uri, schema, rowgroup_bytes, rows_per_file) as writer:
            for dx in classes:
                for records in class_records(dx, train_uri, method, before, targets, size, args, batch_rows):
                    for part, group in zip(*writer.add("train", records)):
                        rows[(dx, part)] = rows.get((dx, part), 0) + 1
                        groups[part] = max(groups.get(part, 0), group + 1)
        return [(dx, part, n, groups[part]) for (dx, part), n in rows.items()]
    return run
