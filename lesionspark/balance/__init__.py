"""Balance: ``driver`` plans per-class targets and writes the balanced training split; ``executor``
synthesises each class's rows in its own Spark task (SMOTE, ``smote``, or oversampling).
"""
