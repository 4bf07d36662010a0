"""The floor of one training launch in the tests: horovod.spark.run of a worker that only imports
TensorFlow and Horovod, initialises, and allreduces one tensor, on local[2] (2 ranks)."""
import os
import sys
import time
os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
from pyspark.sql import SparkSession  # noqa: E402  (after PYSPARK_PYTHON is set)
spark = SparkSession.builder.master("local[2]").config("spark.ui.enabled", "false").getOrCreate()
spark.sparkContext.setLogLevel("ERROR")

def noop():
    import tensorflow as tf
    import horovod.tensorflow.keras as hvd
    hvd.init()
    return float(hvd.allreduce(tf.constant(1.0)).numpy())

import horovod.spark  # noqa: E402
for i in range(3):
    t = time.perf_counter()
    horovod.spark.run(noop, num_proc=2, verbose=0)
    print(f"launch {i}: {time.perf_counter() - t:.1f} s", flush=True)
