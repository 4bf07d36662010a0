"""spark-submit entry point for Grad-CAM explanations; same arguments as ``lesionspark explain``.

    spark-submit --master yarn jobs/explain.py --root hdfs:///lesionspark \
        --model cnn:latest --split test --limit 200
    spark-submit --master yarn jobs/explain.py --root hdfs:///lesionspark \
        --model cnn:latest --images hdfs:///archive/2026-11-02 --limit 0
Exit codes: 0 done; 2 model, dataset or folder missing; 1 the run failed.
"""
import sys

from lesionspark.cli import main

if __name__ == "__main__":
    sys.exit(main(["explain", *sys.argv[1:]]))
