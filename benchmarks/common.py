"""Helpers shared by the benchmarks."""
from __future__ import annotations

import threading
import time
from pathlib import Path

import psutil


class WorkerPeak(threading.Thread):
    """Largest RSS of any PySpark Python worker process while running (polled every 0.1 s)."""

    def __init__(self):
        super().__init__(daemon=True)
        self.peak, self.stop = 0, False

    def run(self):
        while not self.stop:
            for p in psutil.process_iter(["cmdline", "memory_info"]):
                cmd = " ".join(p.info["cmdline"] or [])
                if "pyspark.daemon" in cmd or "pyspark/worker" in cmd or "pyspark.worker" in cmd:
                    self.peak = max(self.peak, p.info["memory_info"].rss)
            time.sleep(0.1)

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop = True
        self.join()


def publish(root: Path, arch: str, size: int) -> None:
    """An untrained model (weights=None: throughput does not depend on them) published as
    ``<arch>:bench`` with the card scoring and evaluation read."""
    from lesionspark import storage
    from lesionspark.classes import CLASSES
    from lesionspark.models import PREPROCESSING, build
    d = root / "models" / arch / "bench"
    d.mkdir(parents=True, exist_ok=True)
    build(arch, size, 7, {"weights": None}).save(str(d / "model.keras"))
    storage.write_json(str(d / "model_card.json"), {
        "name": arch, "version": "bench", "architecture": arch, "classes": list(CLASSES), "image_size": size,
        "resize": "squash", "preprocessing": PREPROCESSING[arch]})
    (root / "models" / arch / "latest").write_text("bench")
