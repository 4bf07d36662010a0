"""Score: ``driver`` plans an incremental run over an archive, holds the lease and commits the tables;
``executor`` reads, hashes, decodes and predicts each file in Spark tasks.
"""
