"""A network as a TensorFlow SavedModel whose serve(images) returns the logits."""
import os
import shutil

import keras

from epsilon_resnet import checkpoints, run_folder
from epsilon_resnet.errors import RunError


def check_export_dir(export_dir):
    """Refuse a file, or a folder with anything in it."""
    if os.path.exists(export_dir) and (not os.path.isdir(export_dir) or os.listdir(export_dir)):
        raise RunError(f"`export_dir` {export_dir!r} exists and is not an empty folder; choose a new one")


def export_saved_model(model, export_dir):
    """Write a SavedModel that TensorFlow alone can load (keep the object tf.saved_model.load
    returns while calling serve: it owns the variables); returns its absolute path.

    Exported into a temporary sibling folder, then renamed into place.
    """
    check_export_dir(export_dir)
    export_dir = os.path.abspath(export_dir)
    os.makedirs(os.path.dirname(export_dir), exist_ok=True)
    tmp = run_folder.temporary_path(export_dir)
    os.mkdir(tmp)
    try:
        with checkpoints.file_errors_as_os_errors(tmp):
            keras.Model(model.input, model.output["logits"], name=model.name).export(tmp, verbose=False)
        os.replace(tmp, export_dir)  # also replaces an empty folder
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return export_dir
