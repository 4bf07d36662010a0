"""spark-submit entry point for scoring; same arguments as ``lesionspark score``.

    spark-submit --master yarn jobs/score.py --root hdfs:///lesionspark \
        --archive hdfs:///dermatology/archive --model cnn:latest
Exit codes: as ``lesionspark score``; ``lesionspark --help`` prints the table (``lesionspark/exitcodes.py``).
"""
import sys

from lesionspark.cli import main

if __name__ == "__main__":
    sys.exit(main(["score", *sys.argv[1:]]))
