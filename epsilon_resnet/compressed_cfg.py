"""compressed_model_<step>.cfg, the compressed network's description: `CompressedSpec` is its
only writer (`dumps`, `write`) and reader (`read`, `loads`), without TensorFlow.

The .cfg is YAML written by compressModel.py beside the run's checkpoints, next to the pruned
weights compressed_model_<step>.index/.data-* (a tf.train.Checkpoint(model=...) of the plain
network). It holds everything needed to rebuild that network without the run's config (the
dataset, the number of classes, and the network's Architecture, whose removed_blocks are the
blocks compression took out) and, for the record, how that was decided, the lossless check
and the costs. A .cfg of the earlier form (n or depth, image_shape, stage_units,
first_block_kept) is read as the Architecture it describes.
"""
import dataclasses
import os

import yaml

from epsilon_resnet import data, run_folder
from epsilon_resnet.config import read_yaml
from epsilon_resnet.errors import CompressionError
from epsilon_resnet.structures import Architecture, cifar_resnet, imagenet_resnet

HEADER = ("# A compressed ε-ResNet written by compressModel.py. Evaluate it with "
          "cifarCompressedResnet.py / svhnCompressedResnet.py / imagenetCompressedResnet.py, given this file.\n")
# Keys every .cfg has, with their YAML types; the record's keys (below) may be missing or null.
REQUIRED_KEYS = {"dataset": str, "num_classes": int, "architecture": dict, "weights": str}
RECORD_KEYS = ("source_checkpoint", "step", "epoch", "epsilon", "decision", "flickering_blocks",
               "recorded_errors", "check", "warnings", "cost")
# The earlier form (written up to commit 43099fa): the preset the network was pruned from, named
# by its size's key, the kept units of each stage renumbered, and the removed blocks in the record.
EARLIER_PRESETS = {"n": cifar_resnet, "depth": imagenet_resnet}
EARLIER_KEYS = {"dataset": str, "image_shape": list, "stage_units": list, "first_block_kept": list}


@dataclasses.dataclass(frozen=True)
class CompressedSpec:
    """A compressed network: how to rebuild it (the first block of fields) and the record of
    how it was made. `weights` is the checkpoint prefix's name beside the .cfg; `path` is
    where the spec was read from (None for one not read from a file)."""
    dataset: str
    architecture: Architecture  # the compressed network's: plain, no side head, its removed_blocks gone
    num_classes: int
    weights: str
    data_dir: str = None
    data_options: dict = dataclasses.field(default_factory=dict)
    eval_batch_size: int = 128
    source_checkpoint: str = None
    step: int = None
    epoch: int = None
    epsilon: object = None  # a float, or {block: ε} when the gates' ε differ
    decision: str = None
    flickering_blocks: tuple = ()  # ({block, closed_rate, closed_at_inference}, ...)
    recorded_errors: dict = dataclasses.field(default_factory=dict)
    check: dict = dataclasses.field(default_factory=dict)  # compression.lossless_check's record
    warnings: tuple = ()
    cost: dict = dataclasses.field(default_factory=dict)   # {"full"|"compressed": {"params", "macs"}}
    path: str = None

    @property
    def discarded_blocks(self):
        """The blocks compression removed, in network order."""
        return self.architecture.removed_blocks

    @property
    def image_shape(self):
        return self.architecture.image_shape

    @property
    def weights_path(self):
        """The weights' checkpoint prefix, resolved against the .cfg's folder."""
        return os.path.join(os.path.dirname(os.path.abspath(self.path or ".")), self.weights)


def dumps(spec):
    """The .cfg text of a spec."""
    raw = {"dataset": spec.dataset, "data_dir": spec.data_dir, "data_options": dict(spec.data_options),
           "num_classes": spec.num_classes, "eval_batch_size": spec.eval_batch_size,
           "architecture": spec.architecture.to_config(), "weights": spec.weights,
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
    if isinstance(raw, dict) and "architecture" not in raw and "stage_units" in raw:
        raw = _from_earlier_form(path, raw)
    _check_keys(path, raw, REQUIRED_KEYS)
    try:
        architecture = Architecture.from_config(raw["architecture"])
    except (ValueError, TypeError) as err:
        raise CompressionError(f"{path}: architecture: {err}") from None
    if not _is_int(raw["num_classes"]) or raw["num_classes"] < 1:
        raise CompressionError(f"{path}: expected num_classes >= 1, got {raw['num_classes']!r}")
    eval_batch_size = raw.get("eval_batch_size", 128)
    if not _is_int(eval_batch_size) or eval_batch_size < 1:
        raise CompressionError(f"{path}: eval_batch_size must be a whole number >= 1, got {eval_batch_size!r}")
    record = {k: raw[k] for k in RECORD_KEYS if raw.get(k) is not None}
    for key in ("flickering_blocks", "warnings"):
        record[key] = tuple(record.get(key) or ())
    return CompressedSpec(raw["dataset"], architecture, raw["num_classes"], raw["weights"], raw.get("data_dir"),
                          dict(raw.get("data_options") or {}), eval_batch_size, path=path, **record)


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _check_keys(path, raw, required):
    if not isinstance(raw, dict):
        raise CompressionError(f"{path}: expected a mapping written by compressModel.py, got {type(raw).__name__}")
    for key, kind in required.items():
        if key not in raw:
            raise CompressionError(f"{path}: missing key {key!r} (a compressModel.py .cfg has "
                                   f"{', '.join(required)})")
        if not isinstance(raw[key], kind) or isinstance(raw[key], bool):
            raise CompressionError(f"{path}: {key} must be a {kind.__name__}, got {raw[key]!r}")
    if raw["dataset"] not in data.DATASETS:
        raise CompressionError(f"{path}: unknown dataset {raw['dataset']!r}; expected one of "
                               f"{', '.join(data.DATASETS)}")


def _from_earlier_form(path, raw):
    """An earlier-form .cfg's mapping with the Architecture it describes in place of its own keys:
    the preset of its n or depth without its discarded_blocks, which must leave the kept units
    it lists."""
    _check_keys(path, raw, EARLIER_KEYS)
    sizes = [key for key in EARLIER_PRESETS if key in raw]
    if len(sizes) != 1 or not _is_int(raw[sizes[0]]):
        raise CompressionError(f"{path}: a .cfg without an architecture names the network it was pruned from by "
                               f"one whole number, n or depth; got {({key: raw[key] for key in sizes})}")
    size = sizes[0]
    try:
        full = EARLIER_PRESETS[size](raw[size], gated=False, side_output=False, image_shape=raw["image_shape"])
        architecture = full.compressed(raw.get("discarded_blocks") or ())
    except (ValueError, TypeError) as err:
        raise CompressionError(f"{path}: {err}") from None
    units = architecture.units_per_stage()
    first_kept = [architecture.has_block(s, 0) for s in range(len(units))]
    if units != raw["stage_units"] or first_kept != raw["first_block_kept"]:
        raise CompressionError(f"{path}: stage_units {raw['stage_units']} and first_block_kept "
                               f"{raw['first_block_kept']} are not what {size} = {raw[size]} keeps without "
                               f"discarded_blocks {list(architecture.removed_blocks)}: {units} and {first_kept}")
    earlier = (*EARLIER_KEYS, size, "discarded_blocks")
    return {**{k: v for k, v in raw.items() if k not in earlier or k == "dataset"},
            "architecture": architecture.to_config()}


def check_source_fits(spec, source):
    """The data must have the classes and image shape the network was built for."""
    if source.num_classes != spec.num_classes or tuple(source.image_shape) != tuple(spec.image_shape):
        raise CompressionError(f"{spec.path} describes a network for {spec.num_classes} classes of "
                               f"{list(spec.image_shape)} images, but the {spec.dataset} data has "
                               f"{source.num_classes} classes of {list(source.image_shape)} images")
