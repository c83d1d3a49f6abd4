"""The compressed network's description, compressed_model_<step>.cfg: write, read, rebuild, export.

The .cfg is YAML written by compressModel.py beside the run's checkpoints, with the pruned
weights compressed_model_<step>.index/.data-* (a tf.train.Checkpoint(model=...) of the
plain network). It holds everything needed to rebuild that network without the run's
config: dataset, n or depth, the kept structure, number of classes, image shape, and, for
the record, what was discarded, how the decision was made, the lossless check and costs.
"""
import dataclasses
import os
import shutil
import tempfile

import keras
import tensorflow as tf
import yaml

from epsilon_resnet import data, run_folder
from epsilon_resnet.config import read_yaml
from epsilon_resnet.errors import CompressionError
from epsilon_resnet.networks import build_resnet
from epsilon_resnet.structures import Structure, cifar_structure, imagenet_structure

HEADER = ("# A compressed ε-ResNet written by compressModel.py. Evaluate it with "
          "cifarCompressedResnet.py / svhnCompressedResnet.py / imagenetCompressedResnet.py --cfg <this file>.\n")
REQUIRED_KEYS = {"dataset": str, "stage_units": list, "first_block_kept": list, "num_classes": int,
                 "image_shape": list, "weights": str}


def output_name(step):
    return f"compressed_model_{step}"


def refuse_existing_outputs(run_dir, step):
    """Refuse to compress a step twice (a killed run's temporaries do not count: `write` removes them)."""
    existing = sorted(f for f in os.listdir(run_dir)
                      if f.startswith(output_name(step) + ".") and not run_folder.TEMPORARY.fullmatch(f))
    if existing:
        raise CompressionError(f"{run_dir} already holds {existing}; remove them to compress step {step} again")


def write(run_dir, step, compressed, cfg):
    """Write the compressed checkpoint, then the .cfg that names it, each only once complete.

    The .cfg's text is made first, so nothing is written when it cannot be; if writing the
    .cfg fails, the checkpoint files this call wrote are removed again. The run folder is
    locked meanwhile (run_folder.locked).
    """
    text = HEADER + yaml.safe_dump(cfg, sort_keys=False, default_flow_style=None)
    name = output_name(step)
    path = os.path.join(run_dir, name + ".cfg")
    with run_folder.locked(run_dir, "compressModel"):
        refuse_existing_outputs(run_dir, step)
        run_folder.write_checkpoint(tf.train.Checkpoint(model=compressed), run_dir, name)
        try:
            run_folder.write_new_file(path, text)
        except BaseException:
            for file in os.listdir(run_dir):
                if file.startswith(name + ".") and not file.endswith(".cfg"):
                    os.remove(os.path.join(run_dir, file))
            raise
    return path


@dataclasses.dataclass(frozen=True)
class CompressedSpec:
    """What building and evaluating a compressed network needs, read from its .cfg."""
    path: str
    dataset: str
    structure: Structure
    num_classes: int
    image_shape: tuple
    weights: str            # checkpoint prefix, resolved against the .cfg's folder
    data_dir: str = None
    data_options: dict = dataclasses.field(default_factory=dict)
    eval_batch_size: int = 128
    size: int = None        # n (CIFAR/SVHN) or depth (ImageNet) of the network it was pruned from


def _check_keys(path, raw):
    if not isinstance(raw, dict):
        raise CompressionError(f"{path}: expected a mapping written by compressModel.py, got {type(raw).__name__}")
    for key, kind in REQUIRED_KEYS.items():
        if key not in raw:
            raise CompressionError(f"{path}: missing key {key!r} (a compressModel.py .cfg has "
                                   f"{', '.join(REQUIRED_KEYS)}, and n or depth)")
        if not isinstance(raw[key], kind) or isinstance(raw[key], bool):
            raise CompressionError(f"{path}: {key} must be a {kind.__name__}, got {raw[key]!r}")
    if raw["dataset"] not in data.DATASETS:
        raise CompressionError(f"{path}: unknown dataset {raw['dataset']!r}; expected one of "
                               f"{', '.join(data.DATASETS)}")


def _structure(path, raw, size_key):
    """The kept Structure, checked against the full network it was pruned from."""
    try:
        full = imagenet_structure(raw["depth"]) if size_key == "depth" else cifar_structure(raw["n"])
        structure = Structure(full.family, raw["stage_units"], raw["first_block_kept"], full.bottleneck)
    except (ValueError, TypeError) as err:
        raise CompressionError(f"{path}: {err}") from None
    discarded = raw.get("first_block_discarded")
    if discarded is not None and list(discarded) != [not kept for kept in structure.first_block_kept]:
        raise CompressionError(f"{path}: first_block_kept {list(structure.first_block_kept)} contradicts "
                               f"first_block_discarded {discarded}; the weights fit the structure compressModel.py "
                               f"wrote, so neither can be edited")
    if any(kept > units for kept, units in zip(structure.stage_units, full.stage_units)):
        raise CompressionError(f"{path}: stage_units {list(structure.stage_units)} exceed the full network's "
                               f"{list(full.stage_units)}")
    return structure


def read(path):
    """Parse and validate a compressed_model_<step>.cfg; errors name the file and the key."""
    raw = read_yaml(path, CompressionError, f"--cfg {path!r} does not exist (compressModel.py writes "
                                            f"train_log.<output>/compressed_model_<step>.cfg)")
    _check_keys(path, raw)
    size_key = "depth" if data.family_of(raw["dataset"]) == "imagenet" else "n"
    if not isinstance(raw.get(size_key), int) or isinstance(raw.get(size_key), bool):
        raise CompressionError(f"{path}: a {raw['dataset']} network needs an integer {size_key!r}, "
                               f"got {raw.get(size_key)!r}")
    eval_batch_size = raw.get("eval_batch_size", 128)
    if isinstance(eval_batch_size, bool) or not isinstance(eval_batch_size, int) or eval_batch_size < 1:
        raise CompressionError(f"{path}: eval_batch_size must be a whole number >= 1, got {eval_batch_size!r}")
    weights = os.path.join(os.path.dirname(os.path.abspath(path)), raw["weights"])
    return CompressedSpec(path, raw["dataset"], _structure(path, raw, size_key), raw["num_classes"],
                          tuple(raw["image_shape"]), weights, raw.get("data_dir"), dict(raw.get("data_options") or {}),
                          eval_batch_size, raw[size_key])


def build(spec):
    """The plain network a .cfg describes, with its weights loaded; every weight must fit."""
    model = build_resnet(spec.structure, spec.num_classes, gated=False, side_output=False,
                         image_shape=spec.image_shape, name="compressed_resnet")
    run_folder.restore_model(model, spec.weights, exact=True, error=CompressionError)
    return model


def check_source_fits(spec, source):
    if source.num_classes != spec.num_classes or tuple(source.image_shape) != tuple(spec.image_shape):
        raise CompressionError(f"{spec.path} describes a network for {spec.num_classes} classes of "
                               f"{list(spec.image_shape)} images, but the {spec.dataset} data has "
                               f"{source.num_classes} classes of {list(source.image_shape)} images")


def check_export_target(directory):
    """Refuse a file, or a folder with anything in it."""
    if os.path.exists(directory) and (not os.path.isdir(directory) or os.listdir(directory)):
        raise CompressionError(f"--export {directory!r} exists and is not an empty folder; choose a new one")


def export_saved_model(model, directory):
    """Write a SavedModel whose serve(images) returns the logits: TensorFlow alone can load it
    (keep the object tf.saved_model.load returns while calling serve: it owns the variables).

    Exported into a temporary sibling folder, then renamed into place.
    """
    check_export_target(directory)
    directory = os.path.abspath(directory)
    os.makedirs(os.path.dirname(directory), exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(directory)}.tmp-", dir=os.path.dirname(directory))
    try:
        keras.Model(model.input, model.output["logits"], name=model.name).export(tmp, verbose=False)
        os.replace(tmp, directory)  # also replaces an empty folder
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory
