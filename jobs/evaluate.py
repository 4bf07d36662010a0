"""spark-submit entry point for evaluation; same arguments as ``lesionspark evaluate``.

    spark-submit --master yarn jobs/evaluate.py --root hdfs:///lesionspark \
        --model cnn:latest --splits val test
Exit codes: 0 done; 2 model or dataset missing (message on stderr/stdout); 1 the run failed.
"""
import sys

from lesionspark.cli import main

if __name__ == "__main__":
    sys.exit(main(["evaluate", *sys.argv[1:]]))
