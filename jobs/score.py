"""spark-submit entry point for scoring; same arguments as ``lesionspark score``.

    spark-submit --master yarn jobs/score.py --root hdfs:///lesionspark \
        --archive hdfs:///dermatology/archive --model cnn:latest
Exit codes: as ``lesionspark score`` (``lesionspark/cli.py``): 0 done; 1 the run failed; 2 model or archive
missing; 3 drift with score.fail_on_drift; 4 lease lost; 75 root held by another run; 143 SIGTERM.
"""
import sys

from lesionspark.cli import main

if __name__ == "__main__":
    sys.exit(main(["score", *sys.argv[1:]]))
