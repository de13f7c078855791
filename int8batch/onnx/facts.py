"""What calibration and Q/DQ writing need to know about one model, analysed once."""
from . import graph as G
from .placement import plan_qdq


class ModelFacts:
    """What calibration and Q/DQ writing need to know about one model, analysed once.

    ``ModelFacts.of(model)`` loads the model and runs shape inference one
    time; the Q/DQ plan and the bounded tensors are computed on first use.
    Every consumer that is handed a ``ModelFacts`` uses these instead of
    analysing the model again (on DenseNet-121, shape inference alone ran
    seven times per calibration before).  The model must not be modified
    while its facts are in use.

    Attributes
    ----------
    model : onnx.ModelProto
    types : dict of str -> int
        :func:`~int8batch.onnx.graph.tensor_types`.
    shapes : dict of str -> tuple
        Inferred shapes (:func:`~int8batch.onnx.graph.tensor_types_and_shapes`).
    quantizable : list of str
        :func:`~int8batch.onnx.graph.quantizable_tensors`, in order.
    input : InputInfo
        The first graph input (:func:`~int8batch.onnx.graph.input_info`).
    """

    def __init__(self, model):
        self.model = G.load_model(model)
        self.types, self.shapes = G.tensor_types_and_shapes(self.model)
        self.quantizable = G.quantizable_tensors(self.model, types=self.types)
        self.input = G.input_info(self.model)[0]
        self._plans = {}
        self._bounded = None

    @classmethod
    def of(cls, model):
        """Facts of ``model`` (a path, bytes or ModelProto; a ModelFacts is returned as is)."""
        return model if isinstance(model, cls) else cls(model)

    def bytes_per_image(self, names):
        """Bytes one image adds to the tensors ``names``, from the inferred shapes; None when unknown.

        Known when the input's batch dimension is named and every tensor has
        that dimension first and fixed sizes after it (CNNs exported with a
        dynamic batch usually do; ViT's and some detectors' reshapes do not).
        It sizes the sub-batches of a calibration pass without a probe run.
        """
        batch = self.input.shape[0] if self.input.shape else None
        if not isinstance(batch, str):
            return None
        total = 0
        for n in names:
            shape, kind = self.shapes.get(n), self.types.get(n)
            if not shape or shape[0] != batch or kind is None or not all(isinstance(d, int) for d in shape[1:]):
                return None
            size = G.element_size(kind)
            if size is None:
                return None
            per = size
            for d in shape[1:]:
                per *= d
            total += per
        return total

    def describes(self, model) -> bool:
        """True when ``model`` is the very model these facts were computed from."""
        return model is self.model

    def plan(self, pools="auto"):
        """:func:`int8batch.onnx.placement.plan_qdq` of the model (cached per ``pools``)."""
        if pools not in self._plans:
            self._plans[pools] = plan_qdq(self.model, pools=pools, act=set(self.quantizable))
        return self._plans[pools]

    @property
    def bounded(self):
        """:func:`~int8batch.onnx.graph.bounded_tensors`, with only finite bounds kept."""
        if self._bounded is None:
            self._bounded = {k: v for k, v in G.bounded_tensors(self.model, self.quantizable).items()
                             if all(b is not None and abs(float(b)) != float("inf") for b in v)}
        return self._bounded
