"""The models and what is computed from their outputs, on the driver, in executors and in Horovod
ranks: architectures, augmentation, calibration, clinical metrics with intervals, drift statistics,
Grad-CAM and its overlays. Imports the layers below it (``core``, ``store``, ``dataset``,
``imaging``).
"""
