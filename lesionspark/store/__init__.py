"""The storage layer, used on the driver, in executors and in Horovod ranks: URIs and each filesystem's
guarantees, the layout of a root, publishing by rename or record, the scoring lease, listings,
Parquet parts, run logs, the model registry and the Spark session. Imports only ``core``.
"""
