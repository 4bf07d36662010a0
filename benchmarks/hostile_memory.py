"""Each hostile object scored alone, in a real ``lesionspark score`` run: its outcome (reject reason,
predictions, exit code) and the peak RSS of the run's PySpark Python workers (``common.WorkerPeak``),
against a plain archive of three genuine JPEGs as the baseline in the same run.

``--code DIR`` runs the same cases on another checkout (for example the code before a change:
``git worktree add /tmp/before <commit>``), through ``PYTHONPATH``, so both columns come from one
invocation on one machine. Objects are built here (``tests/hostile.py``): generated, not patient data.

    .venv/bin/python benchmarks/hostile_memory.py [--code /tmp/before] [--timeout 240]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve()
sys.path.insert(0, str(HERE.parents[1]))
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parents[1] / "tests"))
import hostile  # noqa: E402
from common import WorkerPeak, publish  # noqa: E402

GENUINE = HERE.parents[1] / "lesionspark" / "data" / "ham10000" / "images"


def cases(work: Path) -> dict[str, Path]:
    """{case: an archive folder holding it}."""
    out = {}

    def folder(name, files):
        d = work / "archives" / name
        d.mkdir(parents=True)
        for fname, data in files.items():
            if data is None:
                hostile.sparse_file(d / fname, 1 << 40)
            else:
                (d / fname).write_bytes(data)
        out[name] = d

    genuine = sorted(GENUINE.glob("*.jpg"))[:3]
    folder("baseline: 3 genuine JPEGs", {p.name: p.read_bytes() for p in genuine})
    folder("10,000 1x1 frames (30 KB)", {"frames.dcm": hostile.many_frames(10_000)})
    folder("deflated, group length 0 (300 KB -> 300 MiB)", {"zero.dcm": hostile.deflate_zero_group_length()})
    folder("deflated, UID past 4 KB (300 KB -> 300 MiB)", {"far.dcm": hostile.deflate_uid_past_4k()})
    folder("16-bit RLE 2000x2000", {"rle16.dcm": hostile.sixteen_bit_rle(2000, 2000)})
    folder("sparse file, 1 TiB apparent", {"sparse.jpg": None})
    big = os.urandom(40 << 20)
    folder("16 files of 40 MiB in one batch", {f"big{i:02d}.jpg": big[i:] + bytes(i) for i in range(16)})
    return out


def python_for(code: Path, work: Path) -> str:
    """An interpreter that imports lesionspark from ``code``: this one, or a wrapper putting ``code``
    first on ``PYTHONPATH`` (PySpark starts its Python workers with ``PYSPARK_PYTHON``, so they run
    the same code as the driver)."""
    if code == HERE.parents[1]:
        return sys.executable
    wrapper = work / f"python-{abs(hash(str(code)))}"
    wrapper.write_text(f'#!/bin/sh\nPYTHONPATH="{code}" exec "{sys.executable}" "$@"\n')
    wrapper.chmod(0o755)
    return str(wrapper)


def run_case(python: str, root: Path, archive: Path, timeout: float) -> dict:
    env = {**os.environ, "PYSPARK_PYTHON": python, "PYSPARK_DRIVER_PYTHON": python, "TF_CPP_MIN_LOG_LEVEL": "3"}
    cmd = [python, "-m", "lesionspark.cli", "--log-level", "WARNING", "score", "--root", str(root),
           "--archive", str(archive), "--model", "cnn:bench", "spark.master=local[1]",
           "spark.conf.spark.ui.enabled=false", "spark.conf.spark.ui.showConsoleProgress=false",
           "score.lease_ttl_s=600"]
    start = time.monotonic()
    with WorkerPeak() as peak:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, start_new_session=True,
                                cwd=root)  # not the repository: its lesionspark/ would come first on sys.path
        try:
            out, err = proc.communicate(timeout=timeout)
            rc = proc.returncode
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            out, err = proc.communicate()
            rc = f"killed after {timeout:g} s"
    summary = {}
    try:
        summary = json.loads(out[out.index(b"{"):]) if rc == 0 else {}
    except ValueError:
        pass
    return {"exit": rc, "seconds": round(time.monotonic() - start, 1), "worker_peak_mb": round(peak.peak / 2**20),
            "scored": summary.get("images"), "rejected": summary.get("rejected_by_reason"),
            "error": None if rc == 0 else err.decode(errors="replace").strip().splitlines()[-1:]}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--code", action="append", default=[], help="another checkout to run the cases on")
    ap.add_argument("--timeout", type=float, default=240)
    ap.add_argument("--only-others", action="store_true", help="run the --code checkouts only")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="lesionspark-hostile-"))
    archives = cases(work)
    results = {}
    codes = ([] if args.only_others else [HERE.parents[1]]) + [Path(c) for c in args.code]
    for code in codes:
        python = python_for(code, work)
        for name, archive in archives.items():
            root = work / "roots" / f"{code.name}-{abs(hash(name))}"
            publish(root, "cnn", 128)
            results.setdefault(name, {})[str(code)] = r = run_case(python, root, archive, args.timeout)
            print(json.dumps({"case": name, "code": str(code), **r}), flush=True)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
