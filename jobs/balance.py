"""spark-submit entry point for the balance stage; same arguments as ``lesionspark balance``.

    spark-submit --master yarn jobs/balance.py --root hdfs:///lesionspark --name ham10000 --method smote
"""
import sys

from lesionspark.cli import main

if __name__ == "__main__":
    sys.exit(main(["balance", *sys.argv[1:]]))
