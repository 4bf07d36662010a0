"""Images and DICOM objects, decoded in executors (and on the driver for the demo's generator):
JPEG/PNG decoding and resizing, DICOM pixel data under a memory budget, frames, and the synthetic
demo images. Imports ``core``, ``store`` and ``dataset``.
"""
