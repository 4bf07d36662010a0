"""What an inference task needs, as a frozen, typed spec: built once on the driver from the
configuration and the model card (``build``), pickled to every executor that scores, evaluates or
explains. Plain data only; the executors never see the ``Config``."""
from __future__ import annotations

from dataclasses import dataclass

from ..core.config import Config


@dataclass(frozen=True)
class InferSpec:
    model_uri: str         # the model file (``models/<name>/<version>/model.keras``)
    card: dict             # its card: classes, image_size, resize, preprocessing, calibration, metadata
    batch_size: int        # inference.batch_size: images per model.predict call
    threads: int           # inference.threads: TensorFlow threads per Python worker
    heatmap: str           # inference.heatmap: the overlay method (hirescam, gradcam, gradcampp)
    max_pixels: int        # limits.max_image_pixels
    max_decoded: int       # limits.max_decoded_bytes: an object's memory budget
    max_file_bytes: int    # archive.max_file_bytes: larger files are rejected unread

    @property
    def size(self) -> int:
        return int(self.card["image_size"])

    @property
    def resize(self) -> str:
        return self.card["resize"]

    @property
    def classes(self) -> list:
        return list(self.card["classes"])


def build(cfg: Config, card: dict, model_uri: str) -> InferSpec:
    """The spec of a run of ``card``'s model at ``model_uri`` under ``cfg`` (driver side)."""
    return InferSpec(model_uri=model_uri, card=dict(card), batch_size=int(cfg.get("inference.batch_size")),
                     threads=int(cfg.get("inference.threads")), heatmap=str(cfg.get("inference.heatmap")),
                     max_pixels=int(cfg.get("limits.max_image_pixels")),
                     max_decoded=int(cfg.get("limits.max_decoded_bytes")),
                     max_file_bytes=int(cfg.get("archive.max_file_bytes")))
