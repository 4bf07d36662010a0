"""Explain: ``driver`` chooses the images to explain and writes the explanations table; ``executor``
computes Grad-CAM overlays in Spark tasks.
"""
