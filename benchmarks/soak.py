"""Soak: many scheduled scoring runs on one root, overlapping, some killed, on a growing archive.

``--runs`` ``lesionspark score`` processes (real JVMs, real Python workers) are started every
``--every`` seconds on the same storage root and archive, each with ``--wait`` seconds of patience
for the root's lease (so some wait, some give up with exit 75). Before each start the archive grows
by ``--grow`` new images (GENERATED JPEGs, with a few duplicate contents and a few bad files).
A random ``--kill`` share of the runs is killed with SIGKILL at a random moment. A final run then
scores whatever is left. Checks, at the end:

- exactly one prediction per (image_sha256, model, model_version);
- no lost image: every file in the archive has a prediction or a reject for its content;
- a ``score_runs`` row for every run started, with its status (killed runs marked by later runs).

    .venv/bin/python benchmarks/soak.py --runs 20 [--data DIR]
"""
from __future__ import annotations

import argparse
import collections
import hashlib
import io
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from common import publish  # noqa: E402
from PIL import Image  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--every", type=float, default=6.0, help="seconds between run starts")
    ap.add_argument("--grow", type=int, default=40, help="new images before each run")
    ap.add_argument("--wait", type=float, default=45.0, help="each run's lease patience (score.lease_wait_s)")
    ap.add_argument("--ttl", type=float, default=10.0, help="lease time to live (score.lease_ttl_s)")
    ap.add_argument("--kill", type=float, default=0.3, help="share of runs killed with SIGKILL")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data", default=None, help="a `lesionspark synth` output folder to reuse")
    ap.add_argument("--poison", action="store_true", help="each step also adds a non-UTF-8 name and a file "
                    "literally named as its escaped spelling, a zeroed EXIF, a link, a loop link, a dangling link, a "
                    "link to a folder outside, a FIFO, a sparse 1 TiB file and the hostile DICOM objects of "
                    "tests/hostile.py (10,000 frames, deflate bombs that hide their syntax, 16-bit RLE)")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    work = Path(tempfile.mkdtemp(prefix="lesionspark-soak-"))
    if args.data:
        pool = sorted(Path(args.data).glob("images_generated/*.jpg"))
    else:
        from lesionspark.imaging.synth import synth
        made = synth(str(work / "raw"), n_images=args.runs * args.grow + 100, seed=4, with_genuine=False,
                     progress=False)
        pool = sorted(Path(made["images"][0]).glob("*.jpg"))
    root, archive = work / "root", work / "archive"
    publish(root, "cnn", 64)
    exe = str(Path(sys.executable).parent / "lesionspark")
    common = ["--log-level", "WARNING", "score", "--root", str(root), "--archive", str(archive), "--model", "cnn",
              f"score.lease_ttl_s={args.ttl}", "spark.master=local[1]", "spark.conf.spark.ui.enabled=false",
              "spark.conf.spark.ui.showConsoleProgress=false"]
    (work / "logs").mkdir()

    hostile_objects = {}
    if args.poison:
        import hostile
        hostile_objects = {"frames.dcm": hostile.many_frames(10_000), "zero-length.dcm": hostile.deflate_zero_group_length(),
                           "far-uid.dcm": hostile.deflate_uid_past_4k(), "rle16.dcm": hostile.sixteen_bit_rle(1000, 1000)}

    def grow(k: int) -> None:
        d = archive / f"day{k:02d}"
        d.mkdir(parents=True)
        for p in pool[k * args.grow:(k + 1) * args.grow]:
            os.link(p, d / p.name)
        shutil.copy(pool[k * args.grow], d / f"copy-of-{pool[k * args.grow].name}")  # duplicate content
        (d / f"broken{k}.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
        (d / f"empty{k}.jpg").write_bytes(b"")
        if args.poison:  # entries nobody curates
            src = pool[k * args.grow + 1]
            shutil.copy(src, os.fsencode(str(d)) + f"/M\xfcller{k}.jpg".encode("latin-1"))  # not UTF-8
            jfif = io.BytesIO()
            Image.open(src).save(jfif, "JPEG", dpi=(72, 72))
            data, at = jfif.getvalue(), 4 + int.from_bytes(jfif.getvalue()[4:6], "big")
            zeroed = b"Exif\x00\x00" + b"\x00" * 64  # an anonymiser's zeroed EXIF
            (d / f"anonymised{k}.jpg").write_bytes(data[:at] + b"\xff\xe1" + (len(zeroed) + 2).to_bytes(2, "big")
                                                   + zeroed + data[at:])
            os.symlink(d / src.name, d / f"link{k}.jpg")
            os.symlink("..", d / f"loop{k}.jpg")
            os.symlink(work / "nowhere.jpg", d / f"dangling{k}.jpg")
            os.mkfifo(d / f"pipe{k}.jpg")
            shutil.copy(src, d / f"M%FCller{k}.jpg")  # the Latin-1 name's escaped spelling, literally
            (work / "outside").mkdir(exist_ok=True)
            os.symlink(work / "outside", d / f"outside{k}.dcm")  # a link to a folder outside the archive
            with open(d / f"sparse{k}.jpg", "wb") as fh:
                fh.truncate(1 << 40)
            for name, data in hostile_objects.items():
                (d / f"{k}-{name}").write_bytes(data)

    procs = []

    def kill_due() -> None:
        for r in procs:
            if r["kill_at"] and not r["killed"] and r["proc"].poll() is None and time.monotonic() >= r["kill_at"]:
                os.killpg(r["proc"].pid, signal.SIGKILL)
                r["killed"] = True

    t0 = time.monotonic()
    for k in range(args.runs):
        grow(k)
        log = open(work / "logs" / f"run{k:02d}.log", "w")
        p = subprocess.Popen([exe, *common, "--wait", str(args.wait)], stdout=log, stderr=subprocess.STDOUT,
                             start_new_session=True)
        kill_at = time.monotonic() + rng.uniform(3, 40) if rng.random() < args.kill else None
        procs.append({"k": k, "proc": p, "kill_at": kill_at, "killed": False})
        end = time.monotonic() + args.every
        while time.monotonic() < end:
            kill_due()
            time.sleep(0.2)
    while any(r["proc"].poll() is None for r in procs):
        kill_due()
        time.sleep(0.2)
    kills = sum(r["killed"] for r in procs)
    for r in procs:  # a killed run's Spark JVM and Python workers went with its process group
        r["rc"] = r["proc"].wait()
    final = subprocess.run([exe, *common, "--wait", str(10 * args.ttl)], capture_output=True, text=True)
    assert final.returncode == 0, final.stderr[-3000:]
    wall = time.monotonic() - t0

    import pyarrow.parquet as pq
    from lesionspark.store import runlog
    preds = pq.read_table(str(root / "tables" / "predictions")).to_pandas()
    rejects = pq.read_table(str(root / "tables" / "score_rejects")).to_pandas()
    keys = preds.groupby(["image_sha256", "model", "model_version"]).size()
    done = set(preds["image_sha256"]) | set(rejects["image_sha256"].dropna())
    from lesionspark.store.listing import local_bytes
    rejected_paths = {os.fsdecode(local_bytes(p.split(":", 1)[-1]))
                      for p in rejects[rejects["image_sha256"].isna()]["image_path"]}
    entries = [os.path.join(os.fsdecode(dp), os.fsdecode(n))
               for dp, dirs, names in os.walk(os.fsencode(str(archive)))
               for n in names + dirs if n.lower().endswith((b".jpg", b".dcm"))]
    files = [p for p in entries if os.path.isfile(p) and not os.path.islink(p)]
    # a file over archive.max_file_bytes is rejected unread and unhashed: a reject row names it
    big = [p for p in files if os.path.getsize(p) > 50 << 20]
    lost = [p for p in big if p not in rejected_paths]
    lost += [p for p in files if p not in big and hashlib.sha256(Path(p).read_bytes()).hexdigest() not in done]
    # entries with no content (links, FIFOs): a reject row names them (non-UTF-8 names are not among them)
    lost += [p for p in entries if p not in files and p not in rejected_paths]
    runs = runlog.read(str(root))
    status = collections.Counter(r["status"] for r in runs)
    exit_codes = collections.Counter("killed" if r["killed"] else r["rc"] for r in procs)
    report = {"runs_started": args.runs + 1, "runs_killed": kills, "exit_codes": dict(exit_codes),
              "score_runs_rows": len(runs), "status": dict(status), "files_in_archive": len(files),
              "predictions": len(preds), "duplicate_keys": int((keys > 1).sum()), "lost_images": len(lost),
              "entries_without_content": len(entries) - len(files),
              "rejects": len(rejects), "rejects_by_reason": rejects["reason"].value_counts().to_dict(),
              "wall_s": round(wall, 1)}
    print(json.dumps(report, indent=2))
    assert report["duplicate_keys"] == 0, "duplicate predictions"
    assert not lost, lost[:5]
    assert len(runs) == args.runs + 1, "a run without a score_runs row"
    assert not status.get("running") and not status.get("waiting"), status
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
