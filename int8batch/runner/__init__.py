"""End-to-end reproductions of TensorRT's INT8 samples (``int8batch run``)."""
