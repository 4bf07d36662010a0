"""The results that are not tables under ``tables/``, as tables: explain's tables of every model
version and source (``explanations``) and the model cards (``model_cards``). ``query.register``
registers them with the rest.

Runs on the driver.
"""
from __future__ import annotations

import json
import logging

import pandas as pd

from ..store import publishing, storage
from ..store.layout import Layout
from ..store.registry import MAX_CARD_BYTES
from ..store.storage import StorageRefused

log = logging.getLogger(__name__)

CARD_COLUMNS = ("name", "version", "architecture", "mode", "image_size", "balance", "dataset",
                "dataset_fingerprint", "epochs_run", "workers", "train_seconds", "created_at")


def _folders(uri: str) -> list[str]:
    """The names of the folders directly inside ``uri`` (none where it is missing), skipping the
    names Spark and pyarrow hide (``_``, ``.``)."""
    import pyarrow.fs as pafs
    fs, path = storage.filesystem(uri)
    infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    return sorted(i.base_name for i in infos if i.type == pafs.FileType.Directory and i.base_name[0] not in "_.")


def explanations(spark, root: str):
    """Every explain table under the root, with ``model``, ``model_version`` and ``source``; None
    where there is none."""
    from pyspark.sql import functions as F

    def frames():
        top = Layout(root).all_explanations()
        for model in _folders(top):
            for version in _folders(f"{top}/{model}"):
                for source in _folders(f"{top}/{model}/{version}"):
                    table = f"{publishing.resolve(f'{top}/{model}/{version}/{source}')}/table"
                    if storage.has_files(table):
                        yield spark.read.parquet(table).select(
                            F.lit(model).alias("model"), F.lit(version).alias("model_version"),
                            F.lit(source).alias("source"), "*")
    found = list(frames())
    if not found:
        return None
    df = found[0]
    for f in found[1:]:
        df = df.unionByName(f, allowMissingColumns=True)
    return df


def model_cards(spark, root: str):
    """One row per published model version: the card's main fields, its classes, and the whole
    card as JSON (``card``); None where no model is published."""
    layout = Layout(root)
    rows = []
    for name in _folders(layout.all_models()):
        for version in _folders(layout.models(name)):
            uri = f"{publishing.resolve(layout.model(name, version))}/model_card.json"
            if not storage.exists(uri):
                continue
            try:  # a regular file of bounded size, as the registry reads it: never a FIFO, a link or a bomb
                card = json.loads(storage.read_regular(uri, MAX_CARD_BYTES))
                if not isinstance(card, dict):
                    raise ValueError("not a JSON object")
            except (OSError, ValueError, StorageRefused) as exc:
                log.warning("sql: model card of %s:%s not readable (%s); left out of model_cards",
                            name, version, type(exc).__name__)
                continue
            row = {k: card.get(k) for k in CARD_COLUMNS}
            row.update(name=name, version=version, classes=",".join(card.get("classes") or []),
                       card=json.dumps(card, sort_keys=True, default=str))
            rows.append(row)
    if not rows:
        return None
    frame = pd.DataFrame(rows, columns=[*CARD_COLUMNS, "classes", "card"])
    for col in ("image_size", "epochs_run", "workers"):
        frame[col] = pd.to_numeric(frame[col], errors="coerce").astype("Int64")
    frame["train_seconds"] = pd.to_numeric(frame["train_seconds"], errors="coerce")
    return spark.createDataFrame(frame.astype(object).where(frame.notna(), None),
                                 "name string, version string, architecture string, mode string, image_size long, "
                                 "balance string, dataset string, dataset_fingerprint string, epochs_run long, "
                                 "workers long, train_seconds double, created_at string, classes string, card string")

