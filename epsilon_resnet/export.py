"""A network in the formats where it is deployed, each written by Keras' own `Model.export` and
checked in its own runtime before it is put in place.

Formats (one entry each inside the export folder):
- saved_model/: a TensorFlow SavedModel whose `serve(images)` returns the logits; `serve`
  has one signature per input dtype (float32 and uint8), TensorFlow picks by the tensor's dtype;
- onnx/float32.onnx and onnx/uint8.onnx: for onnxruntime (through tf2onnx);
- litert/float32.tflite and litert/uint8.tflite: for the LiteRT interpreter (ai-edge-litert);
- litert_int8/float32.tflite and uint8.tflite (`quantize="int8"`): full-integer LiteRT, its
  weights and activations int8, calibrated on the images given (their record in calibration.json);
  it takes and returns float32 (or uint8) at its edges.
An ONNX or LiteRT graph has one dtype per input, hence one file per input dtype: each takes raw
0–255 RGB pixels (the network subtracts the mean itself; the uint8 file casts first) in a batch of
any size, and returns logits.

Everything is written into a temporary sibling folder, every file is loaded in its runtime and
run on the check images next to the Keras network, and only when every float file gives the
network's logits (within `evaluation.logit_tolerance`) is the folder renamed into place;
otherwise it is removed and a RunError says which file differs by how much. The int8 files are
not expected to give the float logits: their error and largest difference are reported, never
used to accept or refuse anything.
"""
import dataclasses
import json
import os
import shutil

import numpy as np

from epsilon_resnet.atomic import temporary_path
from epsilon_resnet.errors import RunError, UserError

# Keras and TensorFlow are imported inside the functions: the command lines read the names
# below before --gpu is applied, which must happen before TensorFlow starts.

FORMATS = ("saved_model", "onnx", "litert")
QUANTIZATIONS = ("int8",)
INPUT_DTYPES = ("float32", "uint8")
EXTENSIONS = {"onnx": ".onnx", "litert": ".tflite"}
CALIBRATION_RECORD = "calibration.json"
CALIBRATION_IMAGES = 500  # training images an int8 model is calibrated on (all, if fewer)


class ExportError(UserError, ValueError):
    """Export arguments that do not fit: an unknown format, int8 without LiteRT or without images."""


@dataclasses.dataclass(frozen=True)
class Calibration:
    """The images an int8 model is calibrated on (batches of float32 0..255 pixels) and what
    they are (dataset, split, indices), written beside the model as calibration.json."""
    batches: tuple
    record: dict


def entry_name(fmt, quantize=None):
    """The file or folder a format gets inside the export folder."""
    return f"{fmt}_{quantize}" if quantize else fmt


def entries(formats, quantize=None):
    """[(format, quantize)] for the formats asked for; quantize applies to LiteRT only."""
    formats = list(dict.fromkeys(formats))
    unknown = sorted(set(formats) - set(FORMATS))
    if unknown or not formats:
        raise ExportError(f"`formats` must be some of {', '.join(FORMATS)}, got {formats}")
    if quantize is not None and (quantize not in QUANTIZATIONS or "litert" not in formats):
        raise ExportError(f"`quantize` {quantize!r}: only int8, and only with the litert format")
    return [(fmt, quantize if fmt == "litert" else None) for fmt in formats]


def check_export_dir(export_dir):
    """Refuse a file, or a folder with anything in it."""
    if os.path.exists(export_dir) and (not os.path.isdir(export_dir) or os.listdir(export_dir)):
        raise RunError(f"`export_dir` {export_dir!r} exists and is not an empty folder; choose a new one")


def check_request(export_dir, formats, quantize=None):
    """Refuse a bad request before any work is done: a used `export_dir`, unknown `formats`, a bad `quantize`."""
    check_export_dir(export_dir)
    entries(formats, quantize)


def calibration_from(source, count=CALIBRATION_IMAGES, batch_size=100):
    """A Calibration on a seeded sample of `source`'s training images (never test or held-out)."""
    indices, batches = source.training_sample(count, batch_size)
    record = {"dataset": source.name, "split": "train, without the held-out images (if any)",
              "indices": [int(i) for i in indices],
              "indices_are": "positions among the training images the network was trained on, in their stored "
                             "order, after any held-out images are removed (data.holdout)"}
    return Calibration(tuple(images.numpy() for images, _ in batches), record)


def logits_model(model):
    """The model with its logits as its one output (this package's networks output a dict)."""
    import keras

    if isinstance(model.output, dict):
        return keras.Model(model.input, model.output["logits"], name=model.name)
    return model


def with_input_dtype(network, dtype):
    """`network` behind an input of `dtype` that is cast to float32 first."""
    import keras

    images = keras.Input(network.input.shape[1:], dtype=dtype, name="images")
    pixels = images if dtype == "float32" else keras.layers.Lambda(
        lambda x: keras.ops.cast(x, "float32"), name="to_float32")(images)
    return keras.Model(images, network(pixels), name=f"{network.name}_{dtype}")


def signature(network, dtype):
    import tensorflow as tf

    return [tf.TensorSpec((None, *network.input.shape[1:]), dtype, name="images")]


def as_dtype(images, dtype):
    """Float 0..255 pixels as an input of `dtype` (uint8: rounded and clipped)."""
    images = np.asarray(images, np.float32)
    return images if dtype == "float32" else np.clip(np.rint(images), 0, 255).astype(dtype)


# ---- writing --------------------------------------------------------------------------------
def write_saved_model(network, path):
    import keras
    import tensorflow as tf

    archive = keras.export.ExportArchive()
    archive.track(network)
    serve = tf.function(lambda images: network(tf.cast(images, tf.float32), training=False))
    for dtype in INPUT_DTYPES:
        serve.get_concrete_function(*signature(network, dtype))
    archive.add_endpoint("serve", serve)
    archive.write_out(path, verbose=False)


def write_file(network, fmt, dtype, path, calibration=None):
    """One input dtype's file of a format, by Keras' Model.export (LiteRT int8: with its converter
    options for full-integer quantisation on the calibration images)."""
    import tensorflow as tf

    options = {}
    if calibration is not None:
        options = {"optimizations": [tf.lite.Optimize.DEFAULT],
                   "representative_dataset": lambda: ([as_dtype(batch, dtype)] for batch in calibration.batches),
                   "target_spec": {"supported_ops": [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]}}
    with_input_dtype(network, dtype).export(path, format=fmt, verbose=False,
                                            input_signature=signature(network, dtype), **options)


def write_entry(network, folder, fmt, quantize=None, calibration=None, dtypes=INPUT_DTYPES):
    """Write a format's entry into `folder`, for each input dtype; returns {input dtype: path}."""
    path = os.path.join(folder, entry_name(fmt, quantize))
    if fmt == "saved_model":
        write_saved_model(network, path)
        return {dtype: path for dtype in dtypes}
    os.makedirs(path)
    files = {dtype: os.path.join(path, dtype + EXTENSIONS[fmt]) for dtype in dtypes}
    for dtype, file in files.items():
        write_file(network, fmt, dtype, file, calibration if quantize else None)
    if quantize:
        with open(os.path.join(path, CALIBRATION_RECORD), "w") as f:
            json.dump(calibration.record, f, indent=1)
    return files


# ---- running in each runtime ----------------------------------------------------------------
def load_runner(fmt, path, threads=None):
    """A function from a batch of images (numpy, of the file's input dtype) to numpy logits, run by the
    format's own runtime: TensorFlow (SavedModel), onnxruntime, or the LiteRT interpreter.
    threads: the runtime's intra-op threads (None: its default)."""
    if fmt == "saved_model":
        import tensorflow as tf

        loaded = tf.saved_model.load(path)  # kept by the closure: it owns the variables
        return lambda images: loaded.serve(tf.constant(images)).numpy()
    if fmt == "onnx":
        import onnxruntime

        options = onnxruntime.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        session = onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        return lambda images: session.run(None, {name: images})[0]
    if fmt == "litert":
        from ai_edge_litert.interpreter import Interpreter

        runner = Interpreter(model_path=path, num_threads=threads).get_signature_runner()
        (name,) = runner.get_input_details()
        return lambda images: next(iter(runner(**{name: images}).values()))
    raise ExportError(f"`formats` must be some of {', '.join(FORMATS)}, got {fmt!r}")


def check_files(network, files, batches):
    """Run every file {(format, quantize, dtype): path} on the batches of (float32 images,
    labels or None) beside the Keras network; per file the images, the largest |logit
    difference|, the tolerance, whether it passes and the error (None without labels)."""
    from epsilon_resnet.evaluation import logit_tolerance

    runners = {key: load_runner(key[0], path, threads=os.cpu_count()) for key, path in files.items()}
    stats = {key: {"max_diff": 0.0, "largest": 0.0, "wrong": 0, "images": 0} for key in files}
    reference_wrong, labelled = 0, True
    for images, labels in batches:
        images = np.asarray(images, np.float32)
        labelled = labelled and labels is not None
        reference = {"float32": (images, network(images, training=False).numpy())}
        if any(key[2] == "uint8" for key in files):
            pixels = as_dtype(images, "uint8")
            same = np.array_equal(pixels, images)  # whole pixel values, as CIFAR's: the same logits
            reference["uint8"] = (pixels, reference["float32"][1] if same else
                                  network(pixels.astype(np.float32), training=False).numpy())
        if labelled:
            reference_wrong += int(np.sum(reference["float32"][1].argmax(-1) != np.asarray(labels)))
        for key, run in runners.items():
            pixels, expected = reference[key[2]]
            logits = np.asarray(run(pixels))
            if logits.shape != expected.shape or not np.all(np.isfinite(logits)):
                raise RunError(f"{files[key]} returned logits of shape {logits.shape} (finite: "
                               f"{bool(np.all(np.isfinite(logits)))}) for {expected.shape}")
            entry = stats[key]
            entry["max_diff"] = max(entry["max_diff"], float(np.max(np.abs(logits - expected))))
            entry["largest"] = max(entry["largest"], float(np.max(np.abs(expected))))
            entry["wrong"] += int(np.sum(logits.argmax(-1) != np.asarray(labels))) if labelled else 0
            entry["images"] += len(images)
    report = {}
    for key, entry in stats.items():
        tolerance = logit_tolerance(entry["largest"])
        report[key] = {"file": files[key], "images": entry["images"], "max_abs_logit_difference": entry["max_diff"],
                       "tolerance": None if key[1] else tolerance,
                       "matches": True if key[1] else entry["max_diff"] <= tolerance,
                       "error": entry["wrong"] / entry["images"] if labelled and entry["images"] else None,
                       "network_error": reference_wrong / entry["images"] if labelled and entry["images"] else None}
    return report


def describe(key, result):
    """One line per checked file."""
    _, quantize, dtype = key
    line = (f"{result['file']} ({dtype} input): largest |logit difference| to the TensorFlow network "
            f"{result['max_abs_logit_difference']:.3g} on {result['images']} images")
    line += (f", tolerance {result['tolerance']:.3g}: {'matches' if result['matches'] else 'DIFFERS'}"
             if not quantize else f" ({quantize}: not expected to equal the float logits)")
    if result["error"] is not None:
        line += f"; error {result['error']:.4f} (TensorFlow network {result['network_error']:.4f})"
    return line


def export(model, export_dir, formats=("saved_model",), check_batches=(), quantize=None, calibration=None,
           dtypes=INPUT_DTYPES):
    """Write `model` (a functional Keras model whose output is its logits, or a dict holding
    them: this package's networks, or any plain model such as pruning.without_closed_blocks
    returns) into the new folder `export_dir` in each format, check every file in its runtime
    on `check_batches` ((float32 images 0..255, labels or None) batches) and keep the folder only
    if every float file matches. int8 (`quantize`, LiteRT) needs a `Calibration`. dtypes: the
    input dtypes to write files for (both by default).

    Returns (absolute path, {(format, quantize, dtype): check result}, [one line per file]).
    """
    export_dir = os.path.abspath(export_dir)
    check_export_dir(export_dir)
    wanted = entries(formats, quantize)
    if quantize and (calibration is None or not calibration.batches):
        raise ExportError("`quantize` int8 needs `calibration` images (training images, never test or held-out)")
    network = logits_model(model)
    os.makedirs(os.path.dirname(export_dir), exist_ok=True)
    from epsilon_resnet import checkpoints

    folder = temporary_path(export_dir)
    os.mkdir(folder)
    try:
        files = {}
        with checkpoints.file_errors_as_os_errors(folder):
            for fmt, q in wanted:
                for dtype, path in write_entry(network, folder, fmt, q, calibration, dtypes).items():
                    files[(fmt, q, dtype)] = path
        report = check_files(network, files, check_batches)
        if not report or not next(iter(report.values()))["images"]:
            raise RunError("no images to check the exported files on: `check_batches` is empty")
        for result in report.values():
            result["file"] = os.path.join(export_dir, os.path.relpath(result["file"], folder))
        lines = [describe(key, result) for key, result in report.items()]
        failed = [line for key, line in zip(report, lines) if not report[key]["matches"]]
        if failed:
            raise RunError("refused to keep the export, its logits differ from the network's beyond "
                           "float32 tolerance (nothing was written): " + "; ".join(failed))
        os.replace(folder, export_dir)  # also replaces an empty folder
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return export_dir, report, lines


def export_evaluated(model, source, batch_size, export_dir, formats=("saved_model",), quantize=None):
    """Export a network that was scored on `source`: the files are checked on its validation
    images in batches of `batch_size`, int8 calibrated on its training images. Returns the
    lines to print."""
    calibration = calibration_from(source) if quantize else None
    batches = ((x.numpy(), y.numpy()) for x, y in source.eval_dataset(batch_size))
    path, _, lines = export(model, export_dir, formats, batches, quantize, calibration)
    return [*lines, f"exported the network to {path}"]
