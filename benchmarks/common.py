"""Helpers shared by the benchmarks."""
from __future__ import annotations

import threading
import time
from pathlib import Path

import psutil


class Poller(threading.Thread):
    """Calls ``sample()`` every ``every`` seconds while running, as a context manager."""

    every = 0.1

    def __init__(self):
        super().__init__(daemon=True)
        self.stop = False

    def sample(self):
        raise NotImplementedError

    def run(self):
        while not self.stop:
            self.sample()
            time.sleep(self.every)

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop = True
        self.join()


class WorkerPeak(Poller):
    """Largest RSS of any PySpark Python worker process while running."""

    def __init__(self):
        super().__init__()
        self.peak = 0

    def sample(self):
        for p in psutil.process_iter(["cmdline", "memory_info"]):
            cmd = " ".join(p.info["cmdline"] or [])
            if "pyspark.daemon" in cmd or "pyspark/worker" in cmd or "pyspark.worker" in cmd:
                self.peak = max(self.peak, p.info["memory_info"].rss)


class DriverPeak(Poller):
    """Peak driver JVM heap in use and driver Python RSS while running."""

    every = 0.2

    def __init__(self, spark):
        super().__init__()
        self.runtime = spark._jvm.java.lang.Runtime.getRuntime()
        self.me = psutil.Process()
        self.heap = self.rss = 0

    def sample(self):
        self.heap = max(self.heap, self.runtime.totalMemory() - self.runtime.freeMemory())
        self.rss = max(self.rss, self.me.memory_info().rss)


def publish(root: Path, arch: str, size: int) -> None:
    """An untrained model (weights=None: throughput does not depend on them) published as
    ``<arch>:bench`` with the card scoring and evaluation read."""
    from lesionspark.store import storage
    from lesionspark.core.classes import CLASSES
    from lesionspark.modeling.models import PREPROCESSING, build
    d = root / "models" / arch / "bench"
    d.mkdir(parents=True, exist_ok=True)
    build(arch, size, 7, {"weights": None}).save(str(d / "model.keras"))
    storage.write_json(str(d / "model_card.json"), {
        "name": arch, "version": "bench", "architecture": arch, "classes": list(CLASSES), "image_size": size,
        "resize": "squash", "preprocessing": PREPROCESSING[arch]})
    (root / "models" / arch / "latest").write_text("bench")
