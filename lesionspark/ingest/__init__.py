"""Ingest: ``driver`` reads the HAM10000 layout (metadata CSV and image folders) or an hmnist pixel
file, splits by lesion and writes the Petastorm dataset; ``executor`` decodes and resizes the images
in Spark tasks.
"""
