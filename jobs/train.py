"""spark-submit entry point for the train stage; same arguments as ``lesionspark train``.

Horovod needs one Spark task slot per worker: --num-proc must not exceed the executors' slots.

    spark-submit --master yarn --num-executors 4 --executor-cores 4 --conf spark.task.cpus=4 \
        jobs/train.py --root hdfs:///lesionspark --name ham10000 --model cnn --balance smote --num-proc 4
"""
import sys

from lesionspark.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
