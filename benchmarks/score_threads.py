"""How many Python workers, and how many TensorFlow threads each, for scoring.

``lesionspark score`` end to end, one process per configuration, on the same archive of new files
(GENERATED 600x450 JPEGs: ``--data`` is a ``lesionspark synth`` output; each file copied ``--copies``
times with distinct trailing bytes, so every copy is a new content), CNN at ``--size`` px with
weights=None (speed does not depend on them). Configurations are ``local[W]`` Spark masters
(W Python workers) times ``inference.threads`` T. The figure is the run's own ``seconds`` in
``score_runs`` (listing to commit; JVM start-up excluded) and images per second from it.

    .venv/bin/python benchmarks/score_threads.py --data /tmp/lsq/raw --n-images 200 --copies 4 --configs 2x1 2x2 1x2 1x1
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import publish  # noqa: E402
from lesionspark.store import runlog  # noqa: E402


def archive_of(src: list[Path], copies: int, out: Path) -> int:
    for k in range(copies):
        for i, p in enumerate(src):
            d = out / f"copy{k}" / f"2026-11-{i % 28 + 1:02d}"
            d.mkdir(parents=True, exist_ok=True)
            (d / p.name).write_bytes(p.read_bytes() + b"\0" * k)
    return copies * len(src)


def run(work: Path, archive: Path, workers: int, threads: int, size: int, attempt: int) -> dict:
    root = work / f"root-{attempt}-{workers}x{threads}"
    shutil.copytree(work / "models-src", root / "models")
    cmd = [str(Path(sys.executable).parent / "lesionspark"), "--log-level", "WARN", "score", "--root", str(root),
           "--archive", str(archive), "--model", "cnn", f"spark.master=local[{workers}]", f"inference.threads={threads}",
           "spark.conf.spark.ui.showConsoleProgress=false"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (row,) = runlog.read(str(root))
    return {"config": f"{workers} workers x {threads} threads", "seconds": row["seconds"], "scored": row["scored"],
            "img_per_s": row["scored"] / row["seconds"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="a `lesionspark synth` output folder")
    ap.add_argument("--n-images", type=int, default=200, help="originals taken from --data")
    ap.add_argument("--copies", type=int, default=4)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--configs", nargs="+", default=["2x1", "2x2", "1x2", "1x1"])
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="lesionspark-bench-threads-"))
    src = sorted(Path(args.data).glob("images_generated/*.jpg"))[: args.n_images]
    n = archive_of(src, args.copies, work / "archive")
    publish(work / "pub", "cnn", args.size)
    shutil.copytree(work / "pub" / "models", work / "models-src")
    print(f"{n} GENERATED files; {os.cpu_count()} CPUs; CNN at {args.size} px", flush=True)
    rows = []
    for attempt, spec in enumerate(args.configs):  # a configuration may be repeated, to see the noise
        w, t = map(int, spec.split("x"))
        rows.append(run(work, work / "archive", w, t, args.size, attempt))
        print(rows[-1], flush=True)
    base = rows[0]["img_per_s"]
    print(f"\n| configuration | run seconds | img/s | x {rows[0]['config']} |")
    print("| --- | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r['config']} | {r['seconds']:.1f} | {r['img_per_s']:.1f} | {r['img_per_s'] / base:.2f} |")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
