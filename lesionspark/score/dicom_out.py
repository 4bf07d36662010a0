"""Score's DICOM results (executor side, with the prediction): for each image of a DICOM object, its
Structured Report, and for a flagged one with a heatmap its Segmentation (``imaging.dicom_results``),
written to the run's staging; the run's commit moves them to ``dicom_results/<model>/<version>/``
(driver side: ``driver._commit``). An image that did not come as DICOM gets none; an object that
cannot be built leaves its prediction as it is, with the reason in ``dicom_note``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..core.classes import malignant_probability
from ..imaging import dicom_results
from ..store import storage


@dataclass(frozen=True)
class DicomOut:
    """What an executor needs to write a run's DICOM results (sent with the task)."""
    uid_root: str
    staging_dir: str
    final_dir: str
    model: dicom_results.ModelIdentity
    classes: tuple
    threshold: float
    resize: str

    def write(self, image, probabilities, heatmap) -> dict:
        """The ``dicom_*`` columns of one image's row: the SR (and, flagged with a heatmap, the SEG)
        staged as ``<uid>.dcm``, their final paths; or why not (``dicom_note``); or nothing (not DICOM)."""
        if image.source is None or probabilities is None:
            return {}
        mal = malignant_probability(probabilities, self.classes)
        out = {}
        try:
            uid, data = dicom_results.build_sr(image.source, image.frame, list(self.classes), list(probabilities),
                                               mal, mal >= self.threshold, self.model, self.uid_root)
            out.update(dicom_sr_uid=uid, dicom_sr_path=self._stage(uid, data))
            if heatmap is not None and mal >= self.threshold and float(heatmap.max()) > 0:
                predicted = self.classes[int(np.argmax(probabilities))]
                uid, data = dicom_results.build_seg(image.source, image.frame, heatmap, self.resize, predicted,
                                                    self.model, self.uid_root)
                out.update(dicom_seg_uid=uid, dicom_seg_path=self._stage(uid, data))
        except dicom_results.NotBuilt as exc:
            out["dicom_note"] = str(exc)
        except Exception as exc:  # noqa: BLE001 - a source header no object can be built from: its row says why
            # the type only: a message may quote a header value, and header values can identify the patient
            kind = "Segmentation" if "dicom_sr_uid" in out else "Structured Report"
            out["dicom_note"] = f"the {kind} could not be built from this object's header ({type(exc).__name__})"
        return out

    def _stage(self, uid: str, data: bytes) -> str:
        storage.write_bytes(f"{self.staging_dir}/{uid}.dcm", data)
        return f"{self.final_dir}/{uid}.dcm"
