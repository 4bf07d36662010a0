"""The storage root's lease, with real processes racing for it and a holder killed with SIGKILL."""
import json
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import time

import pytest

from lesionspark.store.lease import Lease, LeaseHeld, LeaseLost

HOLDER = """
import sys, time
from lesionspark.store.lease import Lease
lease = Lease(sys.argv[1], sys.argv[2], ttl_s=float(sys.argv[3])).acquire()
print("held", lease.generation, flush=True)
time.sleep(float(sys.argv[4]))
lease.release()
print("released", flush=True)
"""


def _contend(directory, run_id, ready, done, out):
    ready.wait()  # every process imported and released at the same instant, however slow its start
    try:
        with Lease(directory, run_id, ttl_s=30, wait_s=0) as lease:
            out.put((run_id, "held", lease.generation))
            done.wait(60)  # hold it until every other contender has been answered
    except LeaseHeld as exc:
        out.put((run_id, "refused", exc.holder["run_id"]))


def test_racing_processes_get_exactly_one_holder(tmp_path):
    ctx = mp.get_context("spawn")
    out, ready, done = ctx.Queue(), ctx.Barrier(8), ctx.Event()
    procs = [ctx.Process(target=_contend, args=(str(tmp_path), f"run{i}", ready, done, out)) for i in range(8)]
    for p in procs:
        p.start()
    try:
        results = [out.get(timeout=120) for _ in procs]
    finally:
        done.set()
        for p in procs:
            p.join(timeout=30)
    held = [r for r in results if r[1] == "held"]
    assert len(held) == 1, results
    winner = held[0][0]
    assert all(r[2] == winner for r in results if r[1] == "refused")  # each refusal names the holder


def test_a_waiting_run_gets_the_lease_when_the_holder_releases(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path), "first", "30", "2"],
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().startswith("held")
    start = time.monotonic()
    with pytest.raises(LeaseHeld, match="run first"):
        Lease(str(tmp_path), "impatient", wait_s=0).acquire()
    with Lease(str(tmp_path), "patient", wait_s=20, poll_s=0.2) as lease:
        assert time.monotonic() - start < 15 and lease.taken_over is None  # released, not expired
        lease.check()
    holder.wait(timeout=30)


def test_a_killed_holder_blocks_only_until_its_lease_expires(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path), "doomed", "3", "600"],
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().startswith("held")
    time.sleep(2.5)  # the holder renewed at least once (every ttl/3 = 1 s)
    gen, content = Lease(str(tmp_path), "x").newest()
    assert content["run_id"] == "doomed" and content["expires"] > time.time()
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    killed_at = time.monotonic()
    with Lease(str(tmp_path), "next", ttl_s=3, wait_s=30, poll_s=0.2) as lease:
        waited = time.monotonic() - killed_at
        assert 0.0 < waited < 8 and lease.taken_over["run_id"] == "doomed"
        assert lease.generation == gen + 1


def test_a_fenced_off_holder_cannot_pass_its_commit_check(tmp_path):
    stale = Lease(str(tmp_path), "slow", ttl_s=0.6).acquire()
    stale._stop.set()  # renewal stalls, as in a process paused past its lease (GC, SIGSTOP, VM freeze)
    stale._thread.join()
    time.sleep(0.8)
    with Lease(str(tmp_path), "new", ttl_s=30, wait_s=5) as fresh:
        with pytest.raises(LeaseLost, match="took over"):
            stale.check()
        fresh.check()
    names = sorted(os.listdir(tmp_path))  # the newest generation, written once, and its released heartbeat
    assert names == ["beat-000000000002.json", "lease-000000000001.json", "lease-000000000002.json"], names
    assert json.loads((tmp_path / names[0]).read_text())["released"]
    assert json.loads((tmp_path / names[2]).read_text())["run_id"] == "new"


# -- failing closed ------------------------------------------------------------------------------

SKEWED_HOLDER = """
import sys, time
skew = float(sys.argv[4])
real = time.time
time.time = lambda: real() + skew  # this host's wall clock is off by `skew` seconds
from lesionspark.store.lease import Lease
lease = Lease(sys.argv[1], sys.argv[2], ttl_s=float(sys.argv[3])).acquire()
print("held", lease.generation, flush=True)
time.sleep(float(sys.argv[5]))
try:
    lease.check()
    print("checked ok", flush=True)
except Exception as exc:
    print("fenced", type(exc).__name__, flush=True)
lease.release()
"""


def _holder(tmp_path, run_id, ttl, skew, hold):
    p = subprocess.Popen([sys.executable, "-c", SKEWED_HOLDER, str(tmp_path), run_id, str(ttl), str(skew), str(hold)],
                         stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().startswith("held")
    return p


def test_a_stray_file_in_the_lease_folder_counts_as_held(tmp_path):
    (tmp_path / "lease-backup.json").write_text("{}")
    start = time.monotonic()
    with pytest.raises(LeaseHeld, match="in doubt.*lease-backup.json"):
        Lease(str(tmp_path), "r", wait_s=0).acquire()
    assert time.monotonic() - start < 2


def test_probe_objects_a_killed_run_left_are_cleaned_after_an_hour_and_never_block(tmp_path):
    """An S3 probe (``s3.supports_conditional_put``) whose run was killed before deleting it: a
    temporary name, skipped by lease readers, deleted by a taker once it is an hour old (a younger
    one may be another run's probe in flight)."""
    import os
    old, new = tmp_path / ".tmp-probe-old", tmp_path / ".tmp-probe-new"
    old.write_text("probe")
    new.write_text("probe")
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    with Lease(str(tmp_path), "r", ttl_s=30, wait_s=0) as lease:
        assert lease.generation == 1
    assert not old.exists() and new.exists()


def test_an_unreadable_newest_generation_counts_as_held_and_nothing_falls_back(tmp_path):
    with Lease(str(tmp_path), "first", ttl_s=30):
        pass  # generation 1, released: free to take
    (tmp_path / "lease-000000000002.json").write_text("{not json")  # newer, unparseable
    calls = []
    lease = Lease(str(tmp_path), "r", wait_s=0)
    real_newest = lease.newest
    lease.newest = lambda: calls.append(1) or real_newest()
    with pytest.raises(LeaseHeld, match="generation 2 .* cannot be read"):
        lease.acquire()
    assert len(calls) < 5  # no busy loop


def test_a_live_holder_whose_clock_is_behind_is_not_taken_over(tmp_path):
    """Its lease 'expired' an hour ago by its own clock, but it renews: a taker watching it sees that."""
    holder = _holder(tmp_path, "behind", ttl=1.5, skew=-3600, hold=4)
    with pytest.raises(LeaseHeld, match="run behind"):
        Lease(str(tmp_path), "taker", ttl_s=1.5, wait_s=2.5, poll_s=0.1).acquire()
    assert holder.stdout.read().split()[:2] == ["checked", "ok"]
    holder.wait(timeout=30)


def test_a_dead_holder_whose_clock_was_ahead_expires_after_one_ttl_of_silence(tmp_path):
    holder = _holder(tmp_path, "ahead", ttl=1.5, skew=3600, hold=600)
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    start = time.monotonic()
    with Lease(str(tmp_path), "taker", ttl_s=1.5, wait_s=20, poll_s=0.1) as lease:
        assert 1.4 < time.monotonic() - start < 8 and lease.taken_over["run_id"] == "ahead"


def test_a_holder_paused_past_its_ttl_is_fenced_when_it_resumes(tmp_path):
    holder = _holder(tmp_path, "paused", ttl=1.5, skew=0, hold=0.5)
    os.kill(holder.pid, signal.SIGSTOP)  # paused before its check, like a VM freeze
    try:
        with Lease(str(tmp_path), "taker", ttl_s=30, wait_s=20, poll_s=0.1) as lease:
            assert lease.taken_over["run_id"] == "paused"
            os.kill(holder.pid, signal.SIGCONT)
            assert holder.stdout.readline().split() == ["fenced", "LeaseLost"]
            lease.check()
    finally:
        os.kill(holder.pid, signal.SIGCONT)
        holder.wait(timeout=30)


def test_a_holder_paused_with_no_taker_still_fences_itself(tmp_path):
    lease = Lease(str(tmp_path), "alone", ttl_s=0.9).acquire()
    lease._stop.set()  # renewal stalls, as in a pause
    lease._thread.join()
    time.sleep(0.7)
    with pytest.raises(LeaseLost, match="last renewed"):
        lease.check()


def test_a_fifo_under_a_lease_name_is_doubt_not_a_hang(tmp_path):
    """A planted FIFO named like a heartbeat: opening it would block until a writer came."""
    import threading
    Lease(str(tmp_path), "first", ttl_s=30).acquire()._stop.set()
    os.mkfifo(tmp_path / "beat-000000000001.json")
    out = []
    t = threading.Thread(target=lambda: out.append(Lease(str(tmp_path), "second").newest()), daemon=True)
    t.start()
    t.join(10)
    assert not t.is_alive(), "reading the lease folder hung on a FIFO"
    assert "beat-000000000001.json" in out[0][1]["doubt"]
    with pytest.raises(LeaseHeld, match="in doubt"):
        Lease(str(tmp_path), "third", wait_s=0).acquire()


def test_a_renewal_error_of_any_kind_is_retried_then_ends_the_lease_not_the_thread(tmp_path, monkeypatch):
    """A Py4J error on a NameNode blip is no OSError: it is retried while the lease is fresh, and once
    renewal has failed for 2/3 of the ttl the run is told it lost the lease (never a silent thread end)."""
    from lesionspark.store import lease as lease_module
    from lesionspark.store.lease import LeaseLost
    with Lease(str(tmp_path), "r", ttl_s=1.5, wait_s=0) as held:
        def blip(*a, **k):
            raise RuntimeError("py4j.protocol.Py4JJavaError: NameNode is in safe mode")
        monkeypatch.setattr(lease_module.storage, "replace_file", blip)
        deadline = time.time() + 10
        while held.lost is None and time.time() < deadline:
            assert held._thread.is_alive() or held.lost is not None  # never ends without saying so
            time.sleep(0.05)
        assert held.lost  # the stall, or the failing renewal, named
        with pytest.raises(LeaseLost):
            held.check()
        monkeypatch.undo()
