"""Evaluate: ``driver`` predicts the held-out splits, computes clinical metrics with intervals and
writes the metrics table and the report (``results``, ``report``); ``executor`` predicts a split's
rows in Spark tasks.
"""
