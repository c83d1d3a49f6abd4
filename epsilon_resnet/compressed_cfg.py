"""compressed_model_<step>.cfg, the compressed network's description: `CompressedSpec` is its
only writer (`dumps`, `write`) and reader (`read`, `loads`), without TensorFlow.

The .cfg is YAML written by compressModel.py beside the run's checkpoints, next to the pruned
weights compressed_model_<step>.index/.data-* (a tf.train.Checkpoint(model=...) of the plain
network). It holds everything needed to rebuild that network without the run's config
(dataset, n or depth, the kept structure, number of classes, image shape) and, for the record,
what was removed, how it was decided, the lossless check and the costs.
"""
import dataclasses
import os

import yaml

from epsilon_resnet import data, run_folder
from epsilon_resnet.config import read_yaml
from epsilon_resnet.errors import CompressionError
from epsilon_resnet.structures import Structure, cifar_structure, imagenet_structure

HEADER = ("# A compressed ε-ResNet written by compressModel.py. Evaluate it with "
          "cifarCompressedResnet.py / svhnCompressedResnet.py / imagenetCompressedResnet.py, given this file.\n")
# Keys every .cfg has, with their YAML types; the record's keys (below) may be missing or null.
REQUIRED_KEYS = {"dataset": str, "stage_units": list, "first_block_kept": list, "num_classes": int,
                 "image_shape": list, "weights": str}
RECORD_KEYS = ("source_checkpoint", "step", "epoch", "epsilon", "decision", "discarded_blocks", "flickering_blocks",
               "recorded_errors", "check", "warnings", "cost")


def size_key(dataset):
    """The key that gives the full network's size: depth for ImageNet, n (depth 6n+2) otherwise."""
    return "depth" if data.family_of(dataset) == "imagenet" else "n"


@dataclasses.dataclass(frozen=True)
class CompressedSpec:
    """A compressed network: how to rebuild it (the first block of fields) and the record of
    how it was made. `weights` is the checkpoint prefix's name beside the .cfg; `path` is
    where the spec was read from (None for one not read from a file)."""
    dataset: str
    size: int               # n (CIFAR/SVHN) or depth (ImageNet) of the network it was pruned from
    structure: Structure    # the kept structure
    num_classes: int
    image_shape: tuple
    weights: str
    data_dir: str = None
    data_options: dict = dataclasses.field(default_factory=dict)
    eval_batch_size: int = 128
    source_checkpoint: str = None
    step: int = None
    epoch: int = None
    epsilon: object = None  # a float, or {block: ε} when the gates' ε differ
    decision: str = None
    discarded_blocks: tuple = ()
    flickering_blocks: tuple = ()  # ({block, closed_rate, closed_at_inference}, ...)
    recorded_errors: dict = dataclasses.field(default_factory=dict)
    check: dict = dataclasses.field(default_factory=dict)  # compression.lossless_check's record
    warnings: tuple = ()
    cost: dict = dataclasses.field(default_factory=dict)   # {"full"|"compressed": {"params", "macs"}}
    path: str = None

    @property
    def full_structure(self):
        """The structure of the network it was pruned from."""
        return imagenet_structure(self.size) if size_key(self.dataset) == "depth" else cifar_structure(self.size)

    @property
    def weights_path(self):
        """The weights' checkpoint prefix, resolved against the .cfg's folder."""
        return os.path.join(os.path.dirname(os.path.abspath(self.path or ".")), self.weights)


def dumps(spec):
    """The .cfg text of a spec."""
    raw = {"dataset": spec.dataset, "data_dir": spec.data_dir, "data_options": dict(spec.data_options),
           size_key(spec.dataset): spec.size, "num_classes": spec.num_classes, "image_shape": list(spec.image_shape),
           "eval_batch_size": spec.eval_batch_size, "stage_units": list(spec.structure.stage_units),
           "first_block_kept": list(spec.structure.first_block_kept), "weights": spec.weights,
           **{key: _plain(getattr(spec, key)) for key in RECORD_KEYS}}
    return HEADER + yaml.safe_dump(raw, sort_keys=False, default_flow_style=None)


def _plain(value):
    """Tuples as YAML lists, dicts and lists inside them too."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def write(path, spec):
    """Write a spec to a new .cfg file, atomically."""
    run_folder.write_new_file(path, dumps(spec))


def read(path):
    """Parse and validate a compressed_model_<step>.cfg; errors name the file and the key."""
    raw = read_yaml(path, f"the .cfg {path!r} does not exist (compressModel.py writes "
                          f"train_log.<output>/compressed_model_<step>.cfg)")
    return loads(raw, path)


def loads(raw, path):
    """A spec from a .cfg's parsed YAML (`path` names it in errors and resolves the weights)."""
    _check_keys(path, raw)
    size = size_key(raw["dataset"])
    if not _is_int(raw.get(size)):
        raise CompressionError(f"{path}: a {raw['dataset']} network needs an integer {size!r}, got {raw.get(size)!r}")
    if raw["num_classes"] < 1 or len(raw["image_shape"]) != 3 or not all(
            _is_int(side) and side >= 1 for side in raw["image_shape"]):
        raise CompressionError(f"{path}: expected num_classes >= 1 and image_shape [height, width, channels] of "
                               f"whole numbers >= 1, got {raw['num_classes']!r} and {raw['image_shape']!r}")
    eval_batch_size = raw.get("eval_batch_size", 128)
    if not _is_int(eval_batch_size) or eval_batch_size < 1:
        raise CompressionError(f"{path}: eval_batch_size must be a whole number >= 1, got {eval_batch_size!r}")
    record = {k: raw[k] for k in RECORD_KEYS if raw.get(k) is not None}
    for key in ("discarded_blocks", "flickering_blocks", "warnings"):
        record[key] = tuple(record.get(key) or ())
    return CompressedSpec(raw["dataset"], raw[size], _structure(path, raw, size), raw["num_classes"],
                          tuple(raw["image_shape"]), raw["weights"], raw.get("data_dir"),
                          dict(raw.get("data_options") or {}), eval_batch_size, path=path, **record)


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


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


def _structure(path, raw, key):
    """The kept Structure, checked against the full network it was pruned from."""
    try:
        full = imagenet_structure(raw["depth"]) if key == "depth" else cifar_structure(raw["n"])
        structure = Structure(full.family, raw["stage_units"], raw["first_block_kept"], full.bottleneck)
    except (ValueError, TypeError) as err:
        raise CompressionError(f"{path}: {err}") from None
    if any(kept > units for kept, units in zip(structure.stage_units, full.stage_units)):
        raise CompressionError(f"{path}: stage_units {list(structure.stage_units)} exceed the full network's "
                               f"{list(full.stage_units)}")
    return structure


def check_source_fits(spec, source):
    """The data must have the classes and image shape the network was built for."""
    if source.num_classes != spec.num_classes or tuple(source.image_shape) != tuple(spec.image_shape):
        raise CompressionError(f"{spec.path} describes a network for {spec.num_classes} classes of "
                               f"{list(spec.image_shape)} images, but the {spec.dataset} data has "
                               f"{source.num_classes} classes of {list(source.image_shape)} images")
