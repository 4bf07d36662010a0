"""Helpers shared by the benchmarks."""
from __future__ import annotations

import threading
import time

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
