"""Ingest throughput against a bare loop, a process pool and the Spark floor, in one run on the same files.

  bare (decode)        one process: read file, ``decode_resize`` (PIL draft + bilinear)
  bare                 one process: read file, ``decode_resize``, PNG-encode the record (ingest's per-image work)
  pool of 2            ``multiprocessing.Pool(2)`` over the same function (what a user would write instead of Spark)
  bare + write         one process: the bare work, and the records written to Parquet with pyarrow
                       (image id, PNG bytes, sha256; row groups of ``ingest.rowgroup_size_mb``)
  pool of 2 + write    two processes, each doing bare + write over half the files into its own part
  floor, binaryFile    Spark local[2]: ``binaryFile`` -> ``mapInPandas`` doing the same decode + encode, count
  floor, paths         Spark local[2]: paths -> ``mapInPandas`` reading each file, decode + encode, count
  ingest end to end    the ingest job (metadata, listing, read + decode + encode, Petastorm splits,
                       rejects, manifest), and its decode stage alone (from the manifest)

Files: a HAM10000-shaped set from ``lesionspark synth`` (GENERATED 600x450 JPEGs whose rows follow the
genuine metadata, plus the 56 genuine JPEGs). ``--data`` reuses a synth output folder.

    .venv/bin/python benchmarks/ingest.py --n-images 10000 --size 128 [--data DIR]
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lesionspark.core.config import Config  # noqa: E402
from lesionspark.imaging.images import decode_resize  # noqa: E402
from lesionspark.dataset.schema import encode_image, lesion_schema  # noqa: E402

SIZE = 128


def decode_only(path: str) -> int:
    with open(path, "rb") as fh:
        return decode_resize(fh.read(), SIZE).shape[0]


def decode_encode_bytes(data: bytes) -> int:
    return len(encode_image(lesion_schema(SIZE), decode_resize(data, SIZE)))


def decode_encode(path: str) -> int:
    with open(path, "rb") as fh:
        return decode_encode_bytes(fh.read())


def write_part(args: tuple[list[str], str]) -> int:
    """Read, decode, encode and hash ``paths``, writing the records to one Parquet file at ``out``
    in row groups of about 32 MB (the default ``ingest.rowgroup_size_mb``)."""
    import hashlib

    import pyarrow as pa
    import pyarrow.parquet as pq
    paths, out = args
    schema = pa.schema([("image_id", pa.string()), ("image", pa.binary()), ("sha256", pa.string())])
    rows, size = [], 0
    with pq.ParquetWriter(out, schema) as writer:
        for p in paths:
            data = Path(p).read_bytes()
            png = encode_image(lesion_schema(SIZE), decode_resize(data, SIZE))
            rows.append((Path(p).stem, png, hashlib.sha256(data).hexdigest()))
            size += len(png)
            if size >= 32 << 20 or p == paths[-1]:
                cols = list(zip(*rows))
                writer.write_table(pa.table([pa.array(c, t) for c, t in zip(cols, schema.types)], schema=schema))
                rows, size = [], 0
    return len(paths)


def rate(n: int, fn) -> float:
    start = time.perf_counter()
    fn()
    return n / (time.perf_counter() - start)


def spark_floors(spark, folders: list[str], n: int, mb: float) -> dict:
    """The minimal Spark jobs doing the same per-image work and nothing else."""
    import pandas as pd
    size = SIZE

    def from_bytes(batches):
        from lesionspark.imaging.images import decode_resize
        from lesionspark.dataset.schema import encode_image, lesion_schema
        for b in batches:
            yield pd.DataFrame({"n": [len(encode_image(lesion_schema(size), decode_resize(bytes(c), size)))
                                      for c in b["content"]]})

    def from_paths(batches):
        from lesionspark.imaging.images import decode_resize
        from lesionspark.dataset.schema import encode_image, lesion_schema
        for b in batches:
            out = []
            for p in b["path"]:
                with open(p[5:] if p.startswith("file:") else p, "rb") as fh:
                    out.append(len(encode_image(lesion_schema(size), decode_resize(fh.read(), size))))
            yield pd.DataFrame({"n": out})

    out = {}
    with_conf = {"spark.sql.files.maxPartitionBytes": str(int(mb * 2**20 / 16)),
                 "spark.sql.files.openCostInBytes": "1", "spark.sql.execution.arrow.maxRecordsPerBatch": "32"}
    for k, v in with_conf.items():
        spark.conf.set(k, v)
    df = spark.read.format("binaryFile").option("pathGlobFilter", "*.jpg").load(folders)
    out["floor_binaryfile"] = rate(n, lambda: df.select("content").mapInPandas(from_bytes, "n long").count())
    paths = df.select("path").cache()
    paths.count()
    out["floor_paths"] = rate(n, lambda: paths.mapInPandas(from_paths, "n long").count())
    paths.unpersist()
    for k in with_conf:
        spark.conf.unset(k)
    return out


def main():
    global SIZE
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-images", type=int, default=10000)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--data", default=None, help="a `lesionspark synth` output folder to reuse")
    args = ap.parse_args()
    SIZE = args.size
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    from lesionspark.core.progress import setup_logging
    setup_logging("INFO")
    work = Path(tempfile.mkdtemp(prefix="lesionspark-bench-ingest-"))
    if args.data:
        data = Path(args.data)
        made = {"metadata": str(data / "HAM10000_metadata.csv"),
                "images": [str(p) for p in sorted(data.glob("images_*"))]}
    else:
        from lesionspark.imaging.synth import synth
        made = synth(str(work / "raw"), n_images=args.n_images, seed=11, with_genuine=True, progress=False)
    paths = sorted(str(p) for f in made["images"] for p in Path(f).glob("*.jpg"))
    n, mb = len(paths), sum(os.path.getsize(p) for p in paths) / 2**20
    print(f"files: {n} JPEGs ({mb:.0f} MB; GENERATED 600x450 + the genuine ones), {SIZE}px", flush=True)
    for p in paths:  # page cache warm for every path
        Path(p).read_bytes()

    results = {"bare_decode_only": rate(n, lambda: [decode_only(p) for p in paths]),
               "bare": rate(n, lambda: [decode_encode(p) for p in paths])}
    with mp.Pool(2) as pool:
        pool.map(decode_encode, paths[:8])
        results["pool2"] = rate(n, lambda: pool.map(decode_encode, paths, chunksize=32))
    results["bare_write"] = rate(n, lambda: write_part((paths, str(work / "bare.parquet"))))
    with mp.Pool(2) as pool:
        halves = [(paths[i::2], str(work / f"pool-{i}.parquet")) for i in range(2)]
        results["pool2_write"] = rate(n, lambda: pool.map(write_part, halves, chunksize=1))

    from lesionspark.ingest.driver import ingest
    from lesionspark.store.spark import get_spark
    cfg = Config.load(overrides=["spark.master=local[2]", "spark.conf.spark.ui.showConsoleProgress=false",
                                 f"dataset.image_size={SIZE}"]).with_overrides({
        "storage.root": str(work / "root"), "ingest.metadata": made["metadata"], "ingest.images": made["images"]})
    spark = get_spark(cfg)
    spark.range(10).count()  # JVM up before the clock starts
    results.update(spark_floors(spark, made["images"], n, mb))
    start = time.perf_counter()
    manifest = ingest(spark, cfg)
    wall = time.perf_counter() - start
    assert manifest["counts"]["written"] + manifest["counts"]["rejected"] == manifest["inputs"]["total"]
    results["ingest_end_to_end"] = manifest["counts"]["written"] / wall
    results["ingest_decode_stage"] = manifest["timing"]["decode_images_per_s"]
    spark.stop()

    floor = max(results["floor_binaryfile"], results["floor_paths"])
    print("\n| path | img/s | x bare | x floor |\n| --- | ---: | ---: | ---: |")
    for k, v in results.items():
        print(f"| {k} | {v:.1f} | {v / results['bare']:.2f} | {v / floor:.2f} |")
    print(f"\ningest end to end / bare + write: {results['ingest_end_to_end'] / results['bare_write']:.2f}; "
          f"decode stage / pool of 2 + write: {results['ingest_decode_stage'] / results['pool2_write']:.2f}")
    print(f"\ningest wall {wall:.1f}s for {manifest['counts']['written']} records ({os.cpu_count()} cores); "
          f"floor = the faster floor ({floor:.1f} img/s)")
    print(json.dumps({k: round(v, 1) for k, v in results.items()}))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
