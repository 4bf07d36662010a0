"""Inference shared by score, evaluate and explain: a typed spec built on the driver and one predictor
(the model loaded once per executor, called per batch). Imports the layers below it.
"""
