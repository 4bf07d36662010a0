"""An expiring, renewed, fenced lease on a storage root: one scoring run at a time.

Lease files are ``<dir>/lease-<generation>.json`` (generation zero-padded, so names sort). A run
takes the lease by *creating* the next generation's file exclusively; whoever creates it holds the
lease, and every other contender sees that the file exists. Nothing is ever deleted or overwritten
to take a lease, so taking over an expired one cannot remove a live one:

- free (no file): create generation 1;
- held (the newest generation has not expired): wait up to ``wait_s``, then give up (``LeaseHeld``);
- expired (its holder was killed, or hung past ``ttl_s``): create generation n + 1.

The holder renews its expiry every ``ttl_s / 3`` seconds from a thread (rewriting its own file).
Before it commits, a run calls :meth:`Lease.check`: if a newer generation exists or its own has
expired, it has been fenced off and must not commit (``LeaseLost``).

Atomic exclusive create, by filesystem (docs/architecture.md):
- local and NFSv3+: ``link(2)`` of a temporary file to the lease name fails if the name exists;
- HDFS: ``rename`` fails if the destination exists (a NameNode operation);
- S3 / s3a and other object stores: pyarrow exposes no conditional put, so the create is
  write-then-read-back; two runs starting within the same second can both believe they hold the
  lease. Schedule one scorer per root there, or keep the root on HDFS or a POSIX filesystem.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid

import pyarrow.fs as pafs

from . import storage

log = logging.getLogger(__name__)


class LeaseHeld(RuntimeError):
    """Another live run holds the lease (exit code 75, EX_TEMPFAIL: try again later)."""

    def __init__(self, holder: dict, waited: float):
        self.holder = holder
        expires = time.strftime("%H:%M:%SZ", time.gmtime(holder.get("expires", 0)))
        super().__init__(f"the storage root is being scored by run {holder.get('run_id')} "
                         f"(host {holder.get('host')}, pid {holder.get('pid')}, started "
                         f"{holder.get('started_at')}, lease valid until {expires}); waited {waited:.0f}s")


class LeaseLost(RuntimeError):
    """This run's lease expired or was taken over: it must not commit."""


class Lease:
    def __init__(self, directory: str, run_id: str, ttl_s: float = 60.0, wait_s: float = 0.0,
                 poll_s: float = 1.0, info: dict | None = None):
        self.dir = storage.normalize_uri(directory)
        self.fs, self.path = storage.filesystem(self.dir)
        self.run_id, self.ttl, self.wait, self.poll = run_id, float(ttl_s), float(wait_s), float(poll_s)
        self.info = {"run_id": run_id, "host": socket.gethostname(), "pid": os.getpid(),
                     "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **(info or {})}
        self.generation: int | None = None
        self.taken_over: dict | None = None  # the expired holder this run replaced, if any
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.lost: str | None = None

    # -- reading -------------------------------------------------------------------------------
    def _name(self, gen: int) -> str:
        return f"{self.path}/lease-{gen:012d}.json"

    def newest(self) -> tuple[int, dict | None]:
        """(generation, content) of the newest lease file; (0, None) if there is none."""
        infos = self.fs.get_file_info(pafs.FileSelector(self.path, allow_not_found=True))
        gens = sorted(int(i.base_name[6:18]) for i in infos
                      if i.base_name.startswith("lease-") and i.base_name.endswith(".json"))
        for gen in reversed(gens):
            try:
                with self.fs.open_input_stream(self._name(gen)) as fh:
                    return gen, json.loads(fh.read())
            except (OSError, ValueError):
                continue  # being written this instant, or removed by cleanup: look at the one before
        return 0, None

    # -- taking --------------------------------------------------------------------------------
    def _create(self, gen: int) -> bool:
        """Create generation ``gen`` exclusively; True if this call created it."""
        body = json.dumps({**self.info, "generation": gen, "expires": time.time() + self.ttl}).encode()
        target = self._name(gen)
        tmp = f"{self.path}/.tmp-{uuid.uuid4().hex}"
        with self.fs.open_output_stream(tmp) as fh:
            fh.write(body)
        try:
            if isinstance(self.fs, pafs.LocalFileSystem):
                try:
                    os.link(tmp, target)
                    return True
                except FileExistsError:
                    return False
            if type(self.fs).__name__ == "HadoopFileSystem":
                try:
                    self.fs.move(tmp, target)  # HDFS rename refuses an existing destination
                    return True
                except OSError:
                    return False
            # Object stores: no conditional create through pyarrow; write, then read back who won.
            if self.fs.get_file_info(target).type != pafs.FileType.NotFound:
                return False
            self.fs.copy_file(tmp, target)
            time.sleep(0.5)
            with self.fs.open_input_stream(target) as fh:
                return json.loads(fh.read()).get("run_id") == self.run_id
        finally:
            try:
                self.fs.delete_file(tmp)
            except OSError:
                pass

    def acquire(self) -> "Lease":
        self.fs.create_dir(self.path, recursive=True)
        start = time.monotonic()
        while True:
            gen, holder = self.newest()
            if holder is None or holder.get("expires", 0) < time.time() or holder.get("released"):
                if self._create(gen + 1):
                    self.generation = gen + 1
                    if holder is not None and not holder.get("released"):
                        self.taken_over = holder
                        log.warning("lease: run %s (host %s, pid %s) let its lease expire; taking over",
                                    holder.get("run_id"), holder.get("host"), holder.get("pid"))
                    self._cleanup(below=gen)
                    self._thread = threading.Thread(target=self._renew_loop, daemon=True)
                    self._thread.start()
                    return self
                continue  # someone else created it first: look again at once
            waited = time.monotonic() - start
            if waited >= self.wait:
                raise LeaseHeld(holder, waited)
            log.info("lease: root held by run %s until %s; waiting (%.0fs of %.0fs)", holder.get("run_id"),
                     time.strftime("%H:%M:%SZ", time.gmtime(holder["expires"])), waited, self.wait)
            time.sleep(min(self.poll, max(0.05, self.wait - waited)))

    # -- holding -------------------------------------------------------------------------------
    def _write_own(self, **extra) -> None:
        body = json.dumps({**self.info, "generation": self.generation, "expires": time.time() + self.ttl,
                           **extra}).encode()
        tmp = f"{self.path}/.tmp-{uuid.uuid4().hex}"
        with self.fs.open_output_stream(tmp) as fh:
            fh.write(body)
        self.fs.move(tmp, self._name(self.generation))  # replaces our own file only

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.ttl / 3):
            try:
                self.check()
                self._write_own()
            except LeaseLost as exc:
                self.lost = str(exc)
                log.error("lease: %s", exc)
                return
            except OSError as exc:  # a storage hiccup: try again at the next tick
                log.warning("lease: renewal failed (%s); retrying", exc)

    def check(self) -> None:
        """Raise ``LeaseLost`` unless this run still holds the newest, unexpired generation."""
        if self.lost:
            raise LeaseLost(self.lost)
        gen, holder = self.newest()
        if gen != self.generation or holder is None or holder.get("run_id") != self.run_id:
            raise LeaseLost(f"run {holder and holder.get('run_id')} took over the lease (generation {gen})")
        if holder.get("expires", 0) < time.time():
            raise LeaseLost(f"the lease of run {self.run_id} expired (renewal stalled for {self.ttl:.0f}s)")

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self.generation is not None and not self.lost:
            try:
                self._write_own(released=True, expires=0)
            except OSError as exc:
                log.warning("lease: release failed (%s); it expires on its own", exc)

    def _cleanup(self, below: int) -> None:
        """Delete generations older than ``below`` (never the one just read or anything newer)."""
        for info in self.fs.get_file_info(pafs.FileSelector(self.path, allow_not_found=True)):
            if info.base_name.startswith("lease-") and info.base_name.endswith(".json"):
                if int(info.base_name[6:18]) < below:
                    try:
                        self.fs.delete_file(info.path)
                    except OSError:
                        pass

    def __enter__(self) -> "Lease":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
