"""The CPU thread budget of one TensorFlow process: a Horovod rank, a Python worker in an executor
(scoring, explain) or a benchmark. Runs wherever TensorFlow runs.

Call ``limit_threads`` before the process's first TensorFlow op: the native libraries read the
environment variables when they load, and TensorFlow fixes its pools when its runtime starts.
"""
from __future__ import annotations

import os

_VARS = ("OMP_NUM_THREADS", "TF_NUM_INTRAOP_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def limit_threads(threads: int) -> None:
    """``threads`` for the math in one op, one for running ops side by side. In a reused Python worker
    whose TensorFlow already started, the first budget stays (TensorFlow cannot change it)."""
    for var in _VARS:
        os.environ[var] = str(threads)
    os.environ["TF_NUM_INTEROP_THREADS"] = "1"
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf  # deferred: the variables above must be set before TensorFlow loads
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:
        pass  # already initialised in this reused worker
