"""spark-submit entry point for the whole pipeline; same arguments as ``lesionspark pipeline``.

    spark-submit --master yarn jobs/pipeline.py --root hdfs:///lesionspark \
        --conf conf/cluster.yaml
Exit codes: 0 done; 2 an input or setting missing (message on stderr/stdout); 1 the run failed.
"""
import sys

from lesionspark.cli import main

if __name__ == "__main__":
    sys.exit(main(["pipeline", *sys.argv[1:]]))
