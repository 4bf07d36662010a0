"""Foundations every layer uses, wherever it runs: the configuration contract, the class list, logging
and progress, thread limits, signals, salted path keys and the forked-child isolation of fragile
decoders. Imports nothing else from lesionspark.
"""
