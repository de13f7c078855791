"""int8batch.onnx.inputs: the one shape comparison between images and a model input."""
import onnx
import pytest
from onnx import TensorProto, helper

from int8batch.calib import ort_exec
from int8batch.errors import ModelError
from int8batch.onnx import inputs
from int8batch.onnx.inputs import check_batch_shape, check_recipe, image_input
from int8batch.preprocess import preset


def relu_model(shape, path=None, name="images", extra_input=False, dtype=TensorProto.FLOAT):
    """``name`` (shape) -> Relu -> y; saved to ``path`` when given."""
    ins = [helper.make_tensor_value_info(name, dtype, shape)]
    nodes = [helper.make_node("Relu", [name], ["y"])]
    if extra_input:
        ins.append(helper.make_tensor_value_info("z", TensorProto.FLOAT, [1]))
    g = helper.make_graph(nodes, "relu", ins, [helper.make_tensor_value_info("y", dtype, shape)])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    if path is None:
        return m
    onnx.save(m, str(path))
    return str(path)


def test_calibrate_and_pack_share_one_comparison():
    # the runners' check (ActivationRunner, ModelRunner) is this very function
    assert ort_exec.check_batch_shape is inputs.check_batch_shape
    assert ort_exec.image_input is inputs.image_input


def test_fixed_recipe_mismatch_names_model_both_shapes_and_fixes(tmp_path):
    path = relu_model([1, 3, 299, 299], tmp_path / "incep.onnx")
    with pytest.raises(ModelError) as ei:
        check_recipe(path, preset("imagenet-caffe"))
    msg = str(ei.value)
    assert ei.value.path == path and msg.startswith(path)
    assert "'images'" in msg and "[1, 3, 299, 299]" in msg
    assert "preset imagenet-caffe makes ['N', 3, 224, 224]" in msg
    assert "--preset inception" in msg and "--preset imagenet-torch" not in msg
    # following the advice keeps the preset: it is named with the options (found as a new user: without it
    # the options alone once started from a blank recipe)
    assert "keep the recipe with --preset imagenet-caffe --size 299x299" in msg
    # and the preset's own resize rule for that size (found as a new user: "a --resize-size of at least that"
    # led to 240 from 240 for EfficientNet-Lite1, whose recipe is 240 from 272): 299 x 256 / 224 = 341.7
    assert "--size 299x299 --resize-size 342x342" in msg
    # a gray 28x28 model against a colour recipe: the MNIST presets, and both options
    gray = relu_model(["batch", 1, 28, 28], tmp_path / "lenet.onnx")
    msg = str(pytest.raises(ModelError, check_recipe, gray, preset("imagenet-torch")).value)
    assert "--preset mnist-caffe or --preset mnist" in msg
    assert "--preset imagenet-torch --size 28x28 --resize-size 32 --channels gray" in msg     # 28 x 256 / 224
    # the advice runs as given: one mean and std for the one channel (found as a new user: 3 means for gray)
    hint = msg[msg.index("--preset imagenet-torch --size 28x28"):].split(" (whichever")[0].split()
    assert hint[hint.index("--mean") + 1] == "0.449" and hint[hint.index("--std") + 1] == "0.226"
    import argparse
    from int8batch.cli.options import add_preprocess_options, preprocess_overrides
    ap = argparse.ArgumentParser()
    add_preprocess_options(ap)
    opts = preprocess_overrides(ap.parse_args(hint[2:]))
    assert preset("imagenet-torch", **opts).chw == (1, 28, 28)
    # channels only: 3-channel recipes fit, with the --channels fix
    msg = str(pytest.raises(ModelError, check_recipe, relu_model(["N", 3, "H", "W"]), preset("mnist")).value)
    assert "<model>" in msg and "--channels rgb (or bgr)" in msg and "--size" not in msg
    msg = str(pytest.raises(ModelError, check_recipe, relu_model([1, 4, 224, 224]), preset("mnist")).value)
    assert "the model takes 4 channels" in msg


def test_fitting_and_dynamic_inputs_describe_who_decides(tmp_path):
    fit = check_recipe(relu_model([8, 3, 224, 224], tmp_path / "m.onnx"), preset("imagenet-caffe"))
    assert fit.dynamic == () and fit.shape == [8, 3, 224, 224] and fit.chw == (3, 224, 224)
    assert "fits preset imagenet-caffe (3x224x224)" in fit.describe()   # the batch size is calibrate's business
    fit = check_recipe(relu_model(["N", 3, "height", None]), preset("inception"))
    assert fit.dynamic == ("height", "width") and fit.shape == ["N", 3, "height", "?"]
    assert "height and width dynamic, so preset inception decides (3x299x299)" in fit.describe()
    cfg = preset("imagenet-torch").replace(preset=None, size=(96, 128), resize_size=160)
    assert check_recipe(relu_model([1, 3, 96, 128]), cfg).recipe == "the recipe"


def test_models_int8batch_cannot_feed_are_refused(tmp_path):
    with pytest.raises(ModelError, match=r"rank 2.*NCHW"):
        check_recipe(relu_model([1, 784]), preset("mnist"))
    with pytest.raises(ModelError, match="2 inputs"):
        check_recipe(relu_model([1, 1, 28, 28], extra_input=True), preset("mnist"))
    with pytest.raises(ModelError, match="not a float tensor"):
        image_input(relu_model([1, 1, 28, 28], dtype=TensorProto.INT32))
    with pytest.raises(ModelError, match="no such ONNX model"):
        check_recipe(tmp_path / "missing.onnx", preset("mnist"))


def test_check_batch_shape_skips_unknown_dims_and_keeps_calibrates_hints():
    info = image_input(relu_model([8, 3, 32, 32]))
    check_batch_shape(info, (None, 3, 32, 32))
    with pytest.raises(ModelError, match=r"--batch-size 8"):
        check_batch_shape(info, (4, 3, 32, 32))
    with pytest.raises(ModelError, match=r"\[8, 3, 32, 32\] but the batches are \[8, 1, 32, 32\]; repack"):
        check_batch_shape(info, (8, 1, 32, 32))
    check_batch_shape(image_input(relu_model(None)), (5, 1, 2, 3))  # unknown rank: nothing to compare


def test_a_channels_last_input_is_named_as_such(tmp_path):
    """Found as a new user: an NHWC model ([N, 224, 224, 3], TensorFlow's layout) got 'the model takes 224
    channels' from pack --model and 'repack at the model's size [224, 224, 3]' from calibrate."""
    path = relu_model(["N", 224, 224, 3], tmp_path / "nhwc.onnx")
    info = image_input(onnx.load(path), path)
    for call in (lambda: check_recipe(path, preset("imagenet-torch")),
                 lambda: check_batch_shape(info, (8, 3, 224, 224), path)):
        with pytest.raises(ModelError) as err:
            call()
        msg = str(err.value)
        assert path in msg and "channels-last (NHWC" in msg and "--inputs-as-nchw images" in msg
        assert "224 channels" not in msg and "repack" not in msg
    # an NCHW model of another size keeps the repack advice; a 3x3 image model is not mistaken for NHWC
    with pytest.raises(ModelError, match="repack the images"):
        check_batch_shape(image_input(relu_model(["N", 3, 32, 32]), "m"), (8, 3, 224, 224), "m")
    with pytest.raises(ModelError, match="repack the images"):
        check_batch_shape(image_input(relu_model(["N", 3, 3, 3]), "m"), (8, 3, 224, 224), "m")
