"""spark-submit entry point for the ingest stage; same arguments as ``lesionspark ingest``.

    spark-submit --master yarn --py-files lesionspark.zip jobs/ingest.py \
        --metadata hdfs:///ham10000/HAM10000_metadata.csv --images hdfs:///ham10000/images \
        --root hdfs:///lesionspark
"""
import sys

from lesionspark.cli import main

if __name__ == "__main__":
    sys.exit(main(["ingest", *sys.argv[1:]]))
