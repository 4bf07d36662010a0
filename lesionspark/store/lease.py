"""An expiring, renewed, fenced lease on a storage root: one scoring run at a time.

Lease files are ``<dir>/lease-<generation>.json`` (generation zero-padded, so names sort). A run
takes the lease by *creating* the next generation's file exclusively; whoever creates it holds the
lease, and every other contender sees that the file exists. A generation file is written once and
never replaced: the holder's renewals go to ``beat-<generation>.json`` beside it, so a filesystem
whose file move deletes the destination first (Arrow on HDFS) can hide a heartbeat for an instant
but never the ownership. Nothing is ever deleted or overwritten to take a lease, so taking over an
expired one cannot remove a live one:

- free (no file): create generation 1;
- held (the newest generation is live): wait up to ``wait_s``, then give up (``LeaseHeld``);
- expired (its holder was killed, or hung past ``ttl_s``): create generation n + 1.

It fails closed: any doubt counts as held. A name in the folder that is not a lease file (a stray
``lease-backup.json``), or a newest generation that cannot be read or parsed, is a holder that never
expires, named in ``LeaseHeld`` so that an operator can look; nothing falls back to an older
generation.

Expiry never compares clocks of different hosts. The holder rewrites its heartbeat every ``ttl_s / 3``
seconds; a taker judges a lease expired only when it has stood unchanged for a full ``ttl_s``
on the taker's own monotonic clock (or the holder released it). So a run that finds a killed run's
lease takes over after watching it for ``ttl_s``. The holder's wall-clock ``expires`` is used only in
the safe direction: a lease that says it is live is treated as live, so a run with ``wait_s`` 0
gives up at once instead of watching.

The holder fences itself: :meth:`Lease.check` (before every commit step) raises ``LeaseLost`` if a
newer generation exists, or if its last successful renewal is more than ``2/3 ttl_s`` ago on its own
monotonic clock (paused by SIGSTOP, a VM freeze or a long GC): a taker cannot have judged it expired
before ``ttl_s`` after that renewal, so what the holder does within the remaining third is still its
own. A pause between a passed check and the step itself is not covered; each step is one rename.

Atomic exclusive create, by filesystem (``storage.create_exclusive``, docs/cluster.md):
- local and NFSv3+: ``link(2)`` of a temporary file to the lease name fails if the name exists
  (on NFS a retransmitted link that succeeded is told apart by the link count);
- HDFS: the file written whole under a temporary name, then Hadoop's ``FileSystem.rename`` through
  the driver's JVM, one NameNode operation that fails if the name exists (Arrow's move would
  clobber a file destination, so it is not used);
- S3: a PUT with ``If-None-Match: *`` (``lesionspark.store.s3``; pyarrow 10 has none), which the store
  refuses when the key exists. The store is asked first whether it honours the header (a probe).
- a store without it (an S3 endpoint that ignores the header, other object stores): the lease is
  refused (``storage.StorageRefused``) unless ``storage.single_writer: true`` says one scheduler alone
  scores the root; then the create is write-if-absent and read back, which two racing runs could both pass.

Runs on the driver of a scoring run (a renewal thread beside the job).
"""
from __future__ import annotations

import json
import logging
import os
import posixpath
import re
import socket
import threading
import time

import pyarrow.fs as pafs

from . import s3
from . import storage

log = logging.getLogger(__name__)

LEASE_FILE = re.compile(r"^lease-(\d{12})\.json$")
BEAT_FILE = re.compile(r"^beat-(\d{12})\.json$")


class LeaseHeld(RuntimeError):
    """Another live run holds the lease (exit code 75, EX_TEMPFAIL: try again later)."""

    def __init__(self, holder: dict, waited: float):
        self.holder = holder
        if holder.get("doubt"):
            super().__init__(f"the lease of the storage root is in doubt, so it counts as held: {holder['doubt']}; "
                             f"waited {waited:.0f}s")
            return
        expires = time.strftime("%H:%M:%SZ", time.gmtime(holder.get("expires", 0)))
        super().__init__(f"the storage root is being scored by run {holder.get('run_id')} "
                         f"(host {holder.get('host')}, pid {holder.get('pid')}, started "
                         f"{holder.get('started_at')}, lease valid until {expires} by its clock); "
                         f"waited {waited:.0f}s")


class LeaseLost(RuntimeError):
    """This run's lease expired or was taken over: it must not commit."""


class Lease:
    def __init__(self, directory: str, run_id: str, ttl_s: float = 60.0, wait_s: float = 0.0,
                 poll_s: float = 1.0, info: dict | None = None, single_writer: bool = False):
        self.dir = storage.normalize_uri(directory)
        # refused before any work where it cannot hold; else whether an exclusive create exists here
        self.exclusive = storage.require(self.dir, "lease", single_writer) is None
        self.fs, self.path = storage.filesystem(self.dir)
        self.run_id, self.ttl, self.wait, self.poll = run_id, float(ttl_s), float(wait_s), float(poll_s)
        self.info = {"run_id": run_id, "host": socket.gethostname(), "pid": os.getpid(),
                     "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **(info or {})}
        self.generation: int | None = None
        self.taken_over: dict | None = None  # the expired holder this run replaced, if any
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.lost: str | None = None
        self._renewed_at = 0.0  # monotonic time of this run's last successful write of its generation
        self._seen: tuple[int, str, float] | None = None  # (generation, content, monotonic first seen)
        self._seen_change = False  # the holder rewrote its file while this run watched: it is alive

    # -- reading -------------------------------------------------------------------------------
    def _name(self, gen: int) -> str:
        return f"{self.path}/lease-{gen:012d}.json"

    def _beat(self, gen: int) -> str:
        return f"{self.path}/beat-{gen:012d}.json"

    def _uri(self, path: str) -> str:
        """A lease file's URI (its scheme picks the storage primitive; a bare path would read as local)."""
        return storage.join(self.dir, posixpath.basename(path))

    def _read(self, path: str) -> dict:
        with self.fs.open_input_stream(path) as fh:
            content = json.loads(fh.read())
        if not isinstance(content, dict) or not content.get("run_id"):
            raise ValueError("no run_id")
        return content

    def newest(self) -> tuple[int, dict | None]:
        """(generation, content) of the newest lease file; (0, None) if there is none. Fails closed:
        a stray name, or a newest generation that cannot be read or parsed, comes back as a holder
        ``{"doubt": why}``."""
        gens = []
        for info in self.fs.get_file_info(pafs.FileSelector(self.path, allow_not_found=True)):
            if info.base_name.startswith(storage.TEMP_PREFIXES):
                continue  # a create or a renewal in flight
            m = LEASE_FILE.match(info.base_name)
            if (m is None and not BEAT_FILE.match(info.base_name)) or info.type != pafs.FileType.File:
                # a stray name, or a lease name that is a FIFO, a link or a folder (reading a FIFO would hang)
                return 0, {"doubt": f"unexpected entry {info.base_name!r} in the lease folder {self.dir} "
                                    "(remove it when no scoring run is active)"}
            if m is not None:
                gens.append(int(m.group(1)))
        if not gens:
            return 0, None
        gen = max(gens)
        try:
            content = self._read(self._name(gen))
        except (OSError, ValueError) as exc:  # lease files are created whole: this is not a write in flight
            return gen, {"doubt": f"generation {gen} in {self.dir} cannot be read ({type(exc).__name__}: {exc})"}
        try:  # the heartbeat: absent before the first renewal, or for an instant while it is replaced
            beat = self._read(self._beat(gen))
        except (OSError, ValueError):
            return gen, content
        return gen, ({**content, **beat} if beat.get("run_id") == content["run_id"] else content)

    def _unchanged_for(self, gen: int, holder: dict) -> float:
        """How long (monotonic seconds, as this process saw it) the newest generation has stood unchanged."""
        key = json.dumps(holder, sort_keys=True)
        now = time.monotonic()
        if self._seen is None or self._seen[0] != gen:  # a new generation: a new holder to judge
            self._seen, self._seen_change = (gen, key, now), False
        elif self._seen[1] != key:  # the same generation rewritten: its holder renews, it is alive
            self._seen, self._seen_change = (gen, key, now), True
        return now - self._seen[2]

    def _state(self, gen: int, holder: dict | None) -> str:
        """``free`` (take it), ``live`` (held) or ``watch`` (may be dead: watch it for a full ttl)."""
        if holder is None or holder.get("released"):
            return "free"
        if holder.get("doubt"):
            return "live"
        unchanged = self._unchanged_for(gen, holder)
        if unchanged >= float(holder.get("ttl_s") or self.ttl):  # the holder's own ttl: it renews every third
            return "free"
        if holder.get("expires", 0) > time.time() or self._seen_change:
            return "live"  # it says so (trusted only in this, the safe direction), or it was renewed
        return "watch"

    # -- taking --------------------------------------------------------------------------------
    def _create(self, gen: int) -> bool:
        """Create generation ``gen`` exclusively; True if this call created it."""
        body = json.dumps({**self.info, "generation": gen, "expires": time.time() + self.ttl,
                           "ttl_s": self.ttl}).encode()
        if self.exclusive:
            return storage.create_exclusive(self._uri(self._name(gen)), body)
        # storage.single_writer on an object store: write if absent, then read back who won
        if self.fs.get_file_info(self._name(gen)).type != pafs.FileType.NotFound:
            return False
        with self.fs.open_output_stream(self._name(gen)) as fh:
            fh.write(body)
        time.sleep(0.5)
        return self._read(self._name(gen)).get("run_id") == self.run_id

    def acquire(self) -> "Lease":
        self.fs.create_dir(self.path, recursive=True)
        start = time.monotonic()
        self._seen, self._seen_change = None, False
        while True:
            gen, holder = self.newest()
            state = self._state(gen, holder)
            if state == "free":
                if self._create(gen + 1):
                    self._took(gen, holder)
                    return self
                time.sleep(0.05)  # someone else created it first: judge the new generation (a cached
                continue          # listing, as on NFS, may show it a moment later)
            waited = time.monotonic() - start
            if state == "live" and waited >= self.wait:
                raise LeaseHeld(holder, waited)
            if state == "watch" and waited < 0.05:
                log.info("lease: run %s's lease says it expired; watching it for %.0fs before taking over "
                         "(host clocks are not compared)", holder.get("run_id"), self.ttl)
            elif state == "live":
                log.info("lease: root held (%s); waiting (%.0fs of %.0fs)",
                         holder.get("doubt") or f"run {holder.get('run_id')}", waited, self.wait)
            time.sleep(self.poll if state == "watch" else min(self.poll, max(0.05, self.wait - waited)))

    def _took(self, gen: int, holder: dict | None) -> None:
        self.generation = gen + 1
        self._renewed_at = time.monotonic()
        if holder is not None and not holder.get("released"):
            self.taken_over = holder
            log.warning("lease: run %s (host %s, pid %s) let its lease expire; taking over",
                        holder.get("run_id"), holder.get("host"), holder.get("pid"))
        self._cleanup(below=gen)
        self._thread = threading.Thread(target=self._renew_loop, daemon=True)
        self._thread.start()

    # -- holding -------------------------------------------------------------------------------
    def _write_own(self, **extra) -> None:
        """The heartbeat of this run's generation (never the generation file itself)."""
        written = time.monotonic()
        body = json.dumps({"run_id": self.run_id, "generation": self.generation, "expires": time.time() + self.ttl,
                           "ttl_s": self.ttl, "renewed": written, **extra}).encode()
        storage.replace_file(self._uri(self._beat(self.generation)), body)
        self._renewed_at = written

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.ttl / 3):
            try:
                self.check()
                self._write_own()
            except LeaseLost as exc:
                self.lost = str(exc)
                log.error("lease: %s", exc)
                return
            except Exception as exc:  # noqa: BLE001 - a storage hiccup, or a JVM error on a NameNode blip
                stalled = time.monotonic() - self._renewed_at
                if stalled > self.ttl * 2 / 3:  # failing for too long: stop before another run may take over
                    self.lost = f"renewal failing for {stalled:.1f}s ({type(exc).__name__}: {str(exc)[:200]})"
                    log.error("lease: %s", self.lost)
                    return
                log.warning("lease: renewal failed (%s: %s); retrying", type(exc).__name__, str(exc)[:200])

    def check(self) -> None:
        """Raise ``LeaseLost`` unless this run still holds the newest, unexpired generation."""
        if self.lost:
            raise LeaseLost(self.lost)
        gen, holder = self.newest()
        if holder is not None and holder.get("doubt"):
            raise LeaseLost(f"the lease is in doubt: {holder['doubt']}")
        if gen != self.generation or holder is None or holder.get("run_id") != self.run_id:
            raise LeaseLost(f"run {holder and holder.get('run_id')} took over the lease (generation {gen})")
        stalled = time.monotonic() - self._renewed_at
        if stalled > self.ttl * 2 / 3:
            raise LeaseLost(f"the lease of run {self.run_id} was last renewed {stalled:.1f}s ago (ttl {self.ttl:.0f}s): "
                            "another run may take it over at any moment")

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
        """Delete generations older than ``below`` (never the one just read or anything newer), and
        S3 probe objects (``storage.exclusive_create_missing``) a killed run left over an hour ago."""
        for info in self.fs.get_file_info(pafs.FileSelector(self.path, allow_not_found=True)):
            m = LEASE_FILE.match(info.base_name) or BEAT_FILE.match(info.base_name)
            stale_probe = info.base_name.startswith(s3.PROBE_PREFIX) and info.mtime is not None \
                and info.mtime.timestamp() < time.time() - 3600
            if stale_probe or (m is not None and int(m.group(1)) < below):
                try:
                    self.fs.delete_file(info.path)
                except OSError:
                    pass

    def __enter__(self) -> "Lease":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
