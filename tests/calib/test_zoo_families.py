"""calibrate() on small structural versions of every model-zoo family (tests/zoo_models.py).

For each family (ResNet, DenseNet, MobileNet/EfficientNet-Lite, ConvNeXt, ViT,
YOLO) and each method (auto, entropy, minmax, mse), 16 seeded random-field
PNGs are packed with the family's recipe into two files of 8 and calibrated;
the checks are independent of int8batch's own bookkeeping:

- every artefact is written; the cache, the dynamic-range file and
  calibration.json name exactly the tensors ``quantizable_tensors`` lists;
- the Q/DQ model passes ``onnx.checker`` (full check) and runs in ONNX
  Runtime, and so does the bias-corrected FP32 model; both stay close to FP32
  on the calibration images;
- every activation scale in the Q/DQ model is ``float32(amax / 127)`` of
  calibration.json, the largest amax of its group for the inputs and output
  of a quantized Concat (groups rebuilt here from the Q/DQ graph);
- residual Adds: the input straight from a Conv reads the float tensor, the
  other input a DequantizeLinear; both are quantized where neither comes
  from a weighted op;
- a quantized Concat reads every input through a DequantizeLinear, all with
  one scale.

Tolerance of the FP32 comparison: relative L2 error ``||y_q - y|| / ||y||``
< 10 % per output.  Per-tensor int8 activations and per-channel int8 weights on
layers of 8-64 channels add up to 0.8-4.2 % here for five families and 6-8 %
for the YOLO (about 30 quantized tensors and SiLU layers initialised with gain
3, which amplify a perturbation); the bias-corrected FP32 model is within
0.4-1.5 %.  A wrong scale fails: halving every amax gives 24-80 %.  The exact
checks (scales, tensor sets, placement) are the other tests.
"""
import json
import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import int8batch
import zoo_models as Z
from int8batch.calib import api
from int8batch.calib.cache import read_dynamic_range, read_trt_cache
from int8batch.onnx.graph import quantizable_tensors

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

METHODS = ("auto", "entropy", "minmax", "mse")
FAMILIES = tuple(Z.FAMILIES)
IMAGES, PER_FILE = 16, 8
MAX_REL_L2 = 0.10


def _random_field_pngs(folder, count, seed=0):
    """``count`` seeded RGB images (80 x 64): smooth random fields plus noise, like photographs' spectra."""
    import cv2

    r = np.random.default_rng(seed)
    os.makedirs(folder)
    for i in range(count):
        coarse = r.normal(0, 1, size=(5, 6, 3)).astype(np.float32)
        img = cv2.resize(coarse, (80, 64), interpolation=cv2.INTER_CUBIC) + 0.3 * r.normal(size=(64, 80, 3))
        img = np.clip(128 + 50 * img + r.uniform(-40, 40), 0, 255).astype(np.uint8)
        cv2.imwrite(os.path.join(folder, f"img{i:02d}.png"), img)


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    """Lazily built (family, method) -> dict(model, fp32 path, batches, result, qdq model, data, ...)."""
    root = tmp_path_factory.mktemp("zoo")
    images = root / "images"
    _random_field_pngs(str(images), IMAGES)
    packed, runs = {}, {}

    def get(family, method):
        key = (family, method)
        if key in runs:
            return runs[key]
        build, recipe, expect = Z.FAMILIES[family]
        if family not in packed:
            path = root / f"{family}.onnx"
            model = build()
            onnx.save(model, path)
            out = root / f"{family}_batches"
            overrides = dict(recipe)
            overrides.setdefault("size", (Z.SIZE, Z.SIZE))
            if overrides.get("resize") == "direct":
                overrides.setdefault("resize_size", (Z.SIZE, Z.SIZE))
            else:
                overrides.setdefault("resize_size", Z.SIZE + 4)
            int8batch.pack(images, out, batch_size=PER_FILE, workers=1, **overrides)
            with int8batch.BatchSet(out) as bs:
                data = np.ascontiguousarray(bs.images(0, IMAGES)[0])
            packed[family] = (model, path, out, data)
        model, path, out, data = packed[family]
        res = api.calibrate(path, out, root / f"{family}_{method}", method=method, intra_op_threads=1)
        runs[key] = dict(family=family, method=method, model=model, path=path, data=data, res=res,
                         expect=expect, qdq=onnx.load(res.paths["qdq"]),
                         doc=json.load(open(res.paths["json"])))
        return runs[key]

    return get


CASES = [pytest.param(f, m, id=f"{f}-{m}") for f in FAMILIES for m in METHODS]


def _run(path_or_model, data):
    src = path_or_model if isinstance(path_or_model, str) else path_or_model.SerializeToString()
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    s = ort.InferenceSession(src, opts, providers=["CPUExecutionProvider"])
    return s.run(None, {s.get_inputs()[0].name: data})


def _dq_sources(qdq):
    """DequantizeLinear output -> (float tensor quantized, scale) for activation pairs."""
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in qdq.graph.initializer}
    q_of = {n.output[0]: n for n in qdq.graph.node if n.op_type == "QuantizeLinear"}
    out = {}
    for n in qdq.graph.node:
        if n.op_type == "DequantizeLinear" and n.input[0] in q_of:
            q = q_of[n.input[0]]
            out[n.output[0]] = (q.input[0], inits[q.input[1]])
    return out


@pytest.mark.parametrize("family,method", CASES)
def test_artefacts_name_exactly_the_quantizable_tensors(zoo, family, method):
    r = zoo(family, method)
    res = r["res"]
    for key in ("cache", "dynamic_range", "json", "qdq", "corrected"):
        assert os.path.getsize(res.paths[key]) > 0, key
    names = quantizable_tensors(r["model"])
    assert len(names) == len(set(names)) and names[0] == "x"
    cache = read_trt_cache(res.paths["cache"])
    # centred activations (auto): calibrated under their new names, the original names kept in the
    # cache with the uncentred bound so that it still serves the original model
    renamed = {a: b for t in res.centred for a, b in ((t.original, t.name), (t.pre, t.pre_name))}
    if method != "auto":
        assert not renamed
    elif family == "mobilenet":      # ReLU6 outputs read by 1x1 convolutions
        assert renamed
    calibrated = {renamed.get(n, n) for n in names}
    assert set(cache.scales) == set(names) | calibrated and len(cache.scales) == len(names) + len(renamed)
    assert set(read_dynamic_range(res.paths["dynamic_range"])) == set(names) | calibrated
    assert set(r["doc"]["tensors"]) == calibrated
    for t in res.centred:
        for name in (t.original, t.pre):
            assert cache.scales[name] == np.float32(t.original_amax / 127), name
    for name, entry in r["doc"]["tensors"].items():
        assert cache.scales[name] == np.float32(entry["amax"] / 127), name
        assert 0 < entry["amax"] < np.inf, name
    assert r["doc"]["metadata"]["method"] == method
    assert r["doc"]["metadata"]["qdq_bias_corrected"], "no Conv/Gemm bias was corrected"


@pytest.mark.parametrize("family,method", CASES)
def test_qdq_and_corrected_models_run_and_track_fp32(zoo, family, method):
    r = zoo(family, method)
    onnx.checker.check_model(r["qdq"], full_check=True)
    ref = _run(str(r["path"]), r["data"])
    for label, path in (("qdq", r["res"].paths["qdq"]), ("corrected", r["res"].paths["corrected"])):
        got = _run(path, r["data"])
        assert [g.shape for g in got] == [y.shape for y in ref]
        for y, g in zip(ref, got):
            assert np.isfinite(g).all()
            err = float(np.linalg.norm(g - y) / np.linalg.norm(y))
            assert err < MAX_REL_L2, f"{label}: relative L2 error {err:.3f}"


@pytest.mark.parametrize("family,method", CASES)
def test_activation_scales_are_the_calibrated_amax(zoo, family, method):
    """Every activation Q/DQ scale is float32(amax / 127); a quantized Concat's tensors share the largest."""
    r = zoo(family, method)
    amax = {k: v["amax"] for k, v in r["doc"]["tensors"].items()}
    sources = _dq_sources(r["qdq"])
    scale = {t: s for t, s in sources.values()}
    assert scale and all(s.shape == () and s.dtype == np.float32 for s in scale.values())
    # Concat groups rebuilt from the Q/DQ graph: a Concat whose output is quantized joins its inputs
    parent = {}

    def find(t):
        while parent.get(t, t) != t:
            t = parent[t]
        return t

    for n in r["qdq"].graph.node:
        if n.op_type == "Concat" and n.output[0] in scale:
            for x in n.input:
                parent[find(sources.get(x, (x,))[0])] = find(n.output[0])
    groups = {}
    for t in list(parent) + [find(t) for t in parent]:
        groups.setdefault(find(t), set()).add(t)
    for t, s in scale.items():
        members = groups.get(find(t), {t})
        expect = np.float32(max(amax[m] for m in members) / 127)
        assert s == expect, (t, sorted(members))
    assert set(scale) <= set(amax)
    kept = set(r["res"].kept_float)
    assert not kept & set(scale)
    assert set(r["doc"]["metadata"]["qdq_kept_float"]) == kept


@pytest.mark.parametrize("family,method", CASES)
def test_residual_adds_and_concats_are_placed_by_the_rules(zoo, family, method):
    r = zoo(family, method)
    sources = _dq_sources(r["qdq"])
    kept = set(r["res"].kept_float)
    nodes = {n.name: n for n in r["qdq"].graph.node}
    acts = set(quantizable_tensors(r["model"]))
    for add, fused in r["expect"]["residual"].items():
        ins = list(nodes[add].input)
        orig = [sources.get(x, (x,))[0] for x in ins]
        assert all(x in acts for x in orig), (add, orig)
        for x, o in zip(ins, orig):
            if o == fused:
                assert x == fused, f"{add}: the branch straight from the Conv ({fused}) got a Q/DQ"
            elif o not in kept:
                assert x in sources, f"{add}: input {o} is not quantized"
        if fused is not None:
            assert fused in orig
    # a quantized Concat reads every activation input through Q/DQ (but those kept float), one scale for all
    quantized = {t for t, _ in sources.values()}
    seen = False
    for n in r["qdq"].graph.node:
        if n.op_type != "Concat" or n.output[0] not in quantized:
            continue
        seen = True
        scales = {float(sources[x][1]) for x in n.input if x not in kept}
        assert all(x in sources for x in n.input if x not in kept), n.name
        assert len(scales) == 1, (n.name, scales)
    assert seen == r["expect"]["concat_groups"]
