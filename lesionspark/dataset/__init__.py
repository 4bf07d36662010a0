"""The Petastorm datasets between the stages: their schema, the lesion-level split, the HAM10000
metadata file and the clinical side-car, writing a dataset (driver and executors) and reading it
back (executors and Horovod ranks). Imports ``core`` and ``store``.
"""
