"""lesionspark: dermatoscopic skin-lesion classification on Apache Spark."""
__version__ = "0.1.0"
