"""lesionspark: dermatoscopic skin-lesion classification on Apache Spark.

Importing the package installs ``pyarrow_hotfix`` first: pyarrow 10 (pinned by Horovod and
Petastorm) unpickles a Parquet or IPC file's ``arrow.py_extension_type`` metadata, so a crafted
file in a storage root would run code as whoever reads it (CVE-2023-47248). Every process that runs
lesionspark code imports this package before its own modules (the driver, Spark's Python workers
unpickling a lesionspark function, each Horovod rank), so every pyarrow read there is covered.
The same import applies ``storage.umask`` in those processes (``LESIONSPARK_UMASK``).
"""
import os as _os

import pyarrow_hotfix  # noqa: F401  (installs on import; must come before any pyarrow read)

# storage.umask, handed to executors and ranks through their environment (spark.get_spark sets it)
if _os.environ.get("LESIONSPARK_UMASK"):
    _os.umask(int(_os.environ["LESIONSPARK_UMASK"], 8))

__version__ = "0.1.0"
