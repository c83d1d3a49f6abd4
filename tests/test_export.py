"""Every export format of a tiny ResNet written, loaded again in its own runtime (TensorFlow,
onnxruntime, the LiteRT interpreter) and run on uint8 and float32 pixels at batch 1 and 7; an
export whose logits differ is refused and leaves nothing; int8 is calibrated on the images given."""
import json
import os

import numpy as np
import pytest

from epsilon_resnet import export
from epsilon_resnet.errors import RunError, UserError
from epsilon_resnet.networks import build_resnet
from epsilon_resnet.structures import cifar_resnet

FILES = {("saved_model", None): "saved_model", ("onnx", None): "onnx/{}.onnx", ("litert", None): "litert/{}.tflite",
         ("litert", "int8"): "litert_int8/{}.tflite"}


def pixels(count, seed):
    return np.random.default_rng(seed).integers(0, 256, (count, 32, 32, 3)).astype(np.float32)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """ResNet-8 (trained BN statistics) exported once to every format, int8 included."""
    model = build_resnet(cifar_resnet(1, gated=False, side_output=False), 10, pixel_mean=120.0,
                         pixel_scale=1 / 128)
    for seed in range(3):  # moving BN statistics away from their start
        model(pixels(8, seed), training=True)
    folder = tmp_path_factory.mktemp("exports")
    calibration = export.Calibration((pixels(16, 10), pixels(16, 11)), {"indices": list(range(32))})
    check = [(pixels(5, 20), np.arange(5) % 10), (pixels(3, 21), np.arange(3) % 10)]
    path, report, lines = export.export(model, folder / "all", ("saved_model", "onnx"), check)
    path_litert, report_litert, lines_litert = export.export(model, folder / "lite", ("litert",), check)
    path_int8, report_int8, _ = export.export(model, folder / "int8", ("litert",), check, "int8", calibration)
    return model, {**report, **report_litert, **report_int8}, lines + lines_litert


def test_every_format_is_written_checked_and_kept(exported):
    model, report, lines = exported
    assert len(report) == 8 and len(lines) == 6
    for (fmt, quantize, dtype), result in report.items():
        assert result["file"].endswith(FILES[(fmt, quantize)].format(dtype)) and os.path.exists(result["file"])
        assert result["images"] == 8 and result["error"] is not None
        if quantize:
            assert result["tolerance"] is None and result["matches"]  # reported, never judged
        else:
            assert result["matches"] and result["max_abs_logit_difference"] <= result["tolerance"]
    calibration = os.path.join(os.path.dirname(report[("litert", "int8", "uint8")]["file"]), "calibration.json")
    assert json.load(open(calibration)) == {"indices": list(range(32))}


@pytest.mark.parametrize("batch", [1, 7])
@pytest.mark.parametrize("dtype", ["float32", "uint8"])
def test_every_file_runs_in_its_runtime_at_any_batch_on_raw_pixels(exported, batch, dtype):
    model, report, _ = exported
    images = pixels(batch, 30 + batch)
    expected = model(images, training=False)["logits"].numpy()
    scale = max(1.0, float(np.abs(expected).max()))
    for (fmt, quantize, file_dtype), result in report.items():
        if file_dtype != dtype:
            continue
        logits = export.load_runner(fmt, result["file"])(images.astype(dtype))
        assert logits.shape == (batch, 10) and logits.dtype == np.float32
        if quantize:  # int8: close to the float logits, not equal
            assert np.abs(logits - expected).max() <= 0.2 * np.abs(expected).max()
        else:
            np.testing.assert_allclose(logits, expected, rtol=0, atol=1e-5 * scale)


def test_the_saved_model_takes_uint8_pixels(exported):
    """The old SavedModel raised TypeError on uint8: serve has a signature per input dtype."""
    import tensorflow as tf

    _, report, _ = exported
    loaded = tf.saved_model.load(report[("saved_model", None, "uint8")]["file"])
    images = pixels(2, 40)
    np.testing.assert_array_equal(loaded.serve(tf.constant(images.astype(np.uint8))).numpy(),
                                  loaded.serve(tf.constant(images)).numpy())


def test_a_file_that_differs_is_refused_and_nothing_is_left(exported, tmp_path, monkeypatch):
    model, _, _ = exported
    real = export.load_runner

    def off_by_a_little(fmt, path, threads=None):
        run = real(fmt, path, threads)
        return (lambda images: run(images) + 1e-3) if fmt == "onnx" else run
    monkeypatch.setattr(export, "load_runner", off_by_a_little)
    with pytest.raises(RunError, match=r"refused to keep the export.*onnx/float32.onnx .*DIFFERS"):
        export.export(model, tmp_path / "out", ("onnx",), [(pixels(2, 50), None)])
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("formats, quantize, message", [
    (("tflite",), None, "`formats` must be some of saved_model, onnx, litert"),
    (("onnx",), "int8", "`quantize` 'int8': only int8, and only with the litert format"),
    (("litert",), "int8", "`quantize` int8 needs `calibration` images"),
])
def test_bad_arguments_are_user_errors(exported, tmp_path, formats, quantize, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(")):
        export.export(exported[0], tmp_path / "out", formats, [(pixels(1, 0), None)], quantize)
    assert os.listdir(tmp_path) == []


def test_calibration_images_are_training_images_never_held_out():
    from epsilon_resnet.data import augment
    from epsilon_resnet.data.source import ArraySource

    rng = np.random.default_rng(0)
    train = (rng.integers(0, 256, (60, 32, 32, 3), dtype=np.uint8), np.arange(60) % 10)
    test = (rng.integers(0, 256, (10, 32, 32, 3), dtype=np.uint8), np.arange(10) % 10)
    source = ArraySource("cifar10", 10, train, test, augment.CIFAR_TRAIN, holdout_count=20, family="cifar")
    calibration = export.calibration_from(source, count=25, batch_size=10)
    images = np.concatenate(calibration.batches)
    kept = {image.tobytes() for image in source._columns["train"][0]}
    held_out = {image.tobytes() for image in source._columns["eval"][0]}
    assert images.shape == (25, 32, 32, 3) and len(calibration.record["indices"]) == 25
    for index, image in zip(calibration.record["indices"], images.astype(np.uint8)):
        assert image.tobytes() in kept and image.tobytes() not in held_out
        assert np.array_equal(image, source._columns["train"][0][index])
