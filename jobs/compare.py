"""spark-submit entry point for the model comparison table; same arguments as ``lesionspark compare``.

    spark-submit --master yarn jobs/compare.py --root hdfs:///lesionspark \
        --split test
Exit codes: 0 done; 2 no metrics table (message on stderr/stdout); 1 the run failed.
"""
import sys

from lesionspark.cli import main

if __name__ == "__main__":
    sys.exit(main(["compare", *sys.argv[1:]]))
