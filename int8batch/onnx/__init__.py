"""ONNX graph analysis (``graph``), TensorRT Q/DQ placement (``placement``) and insertion (``qdq``).

``onnx`` itself is imported lazily inside the functions.
"""
from .graph import (InputInfo, bounded_tensors, input_info, load_model,  # noqa: F401
                    quantizable_tensors)
from .placement import plan_qdq  # noqa: F401
from .qdq import (QdqReport, compare_names, insert_qdq, insert_qdq_with_report,  # noqa: F401
                  qdq_from_scales, weight_scales)

__all__ = ["InputInfo", "bounded_tensors", "input_info", "load_model", "quantizable_tensors",
           "QdqReport", "compare_names", "insert_qdq", "insert_qdq_with_report", "plan_qdq",
           "qdq_from_scales", "weight_scales"]
