"""Compression of a trained ε-ResNet (SPEC §8): drop the blocks its gates discarded.

A block whose is_discarded moving average has reached 1 was closed on every recent
training batch; its weights have decayed towards zero and the gated network computes its
output from the shortcut alone. The compressed network is the plain pre-activation
ResNet without those blocks (a discarded downsampling block leaves its shortcut path), with
the kept blocks renumbered consecutively in each stage and every weight copied BY LAYER
NAME from the gated network. A lossless check runs both networks on validation data and
records how far their logits differ.

Outputs go next to the run's checkpoints: compressed_model_<step>.index/.data-* (a
tf.train.Checkpoint(model=...) of the compressed network) and compressed_model_<step>.cfg
(YAML: what was dropped, the kept structure, errors, costs). Nothing in the run folder is
ever changed; the weights are published before the .cfg that points at them.
"""
import collections
import dataclasses
import os
import shutil
import tempfile

import keras
import numpy as np
import tensorflow as tf
import yaml

from epsilon_resnet import config as config_lib
from epsilon_resnet import data, training
from epsilon_resnet.metrics_file import read_metrics
from epsilon_resnet.gate import StrictIdentity, gates_of
from epsilon_resnet.networks import Structure, build_resnet, cifar_structure, imagenet_structure

IMAGENET_DATASETS = ("imagenet", "fake-imagenet")
SIDE_HEAD_PREFIX = "side_"  # the side head (side_bn, side_linear, ...) is a training aid: never compressed
CFG_HEADER = ("# A compressed ε-ResNet written by compressModel.py. Evaluate it with "
              "cifarCompressedResnet.py / svhnCompressedResnet.py / imagenetCompressedResnet.py --cfg <this file>.\n")


class CompressionError(ValueError):
    """A run, step, .cfg or weight file that cannot be compressed or loaded; the message says why."""


# ---- which blocks are discarded ------------------------------------------------------------
def discard_tolerance(ema_decay):
    """How far below 1 an is_discarded average may stall and still count as "reached 1".

    The gate's EMA is a float32 variable updated as ema·d + x·(1−d). Near 1 the increment
    (1−ema)·(1−d) drops below half a float32 ulp (2⁻²⁵) before ema gets to 1, so a block
    closed forever stalls at 1 − g with g ≤ ~2⁻²⁴/(1−d): 0.99999946 for d = 0.95 (g = 5.4e-7),
    0.999997 for d = 0.99. The tolerance 2⁻²³/(1−d) (2.4e-6 at d = 0.95) covers that stall
    with a margin and still excludes a block that was open k steps ago, which leaves a gap
    of at least (1−d)·dᵏ: within the last ~190 steps at d = 0.95, ~670 at d = 0.99.
    """
    return 2.0 ** -23 / (1.0 - ema_decay)


def reached_one(average, ema_decay):
    return float(average) >= 1.0 - discard_tolerance(ema_decay)


def discarded_blocks(record, block_names, ema_decay):
    """The blocks whose is_discarded average in a metrics record has reached 1, in network order."""
    missing = [b for b in block_names if f"{b}/is_discarded" not in record]
    if missing:
        raise CompressionError(f"the metrics record of step {record.get('global_step')} has no is_discarded "
                               f"average for block(s) {missing}: was this run gated?")
    return [b for b in block_names if reached_one(record[f"{b}/is_discarded"], ema_decay)]


# ---- the compressed structure and its weights ---------------------------------------------
def compressed_structure(structure, discarded):
    """(kept Structure, {old block: new block}) for dropping `discarded` from `structure`.

    Unit 0 of a stage keeps its name whether the first block stays or only its shortcut
    path does; the kept units 1.. are renumbered 1, 2, ... in order.
    """
    unknown = sorted(set(discarded) - set(structure.block_names()))
    if unknown:
        raise CompressionError(f"cannot discard {unknown}: the network's blocks are {structure.block_names()}")
    units, first_kept, renames = [], [], {}
    for stage, count in enumerate(structure.stage_units):
        first = structure.block_name(stage, 0)
        renames[first] = first
        names = [structure.block_name(stage, u) for u in range(1, count)]
        kept = [name for name in names if name not in discarded]
        renames.update({old: structure.block_name(stage, new) for new, old in enumerate(kept, 1)})
        units.append(1 + len(kept))
        first_kept.append(structure.first_block_kept[stage] and first not in discarded)
    return Structure(structure.family, units, first_kept, structure.bottleneck), renames


def _layer_prefix(block):
    return block.replace("/", "_") + "_"  # layer names of block group2/block9 start with group2_block9_


def copy_weights(source, target, renames, discarded=()):
    """Assign every weight of `target` from the `source` layer of the same name, block prefixes renamed.

    Checks that every target weight is assigned exactly once with the source's shape, and
    that every source weight left behind belongs to a discarded block, a gate or the side head.
    """
    new_to_old = {_layer_prefix(new): _layer_prefix(old) for old, new in renames.items()}
    assigned, used_sources = collections.Counter(), set()
    for layer in target.layers:
        if not layer.weights:
            continue
        prefix = next((p for p in new_to_old if layer.name.startswith(p)), None)
        source_name = new_to_old[prefix] + layer.name[len(prefix):] if prefix else layer.name
        try:
            source_layer = source.get_layer(source_name)
        except ValueError:
            raise CompressionError(f"layer {layer.name!r} of the compressed network has no source layer "
                                   f"{source_name!r} in the gated network") from None
        source_weights = {w.name: w for w in source_layer.weights}
        if sorted(source_weights) != sorted(w.name for w in layer.weights):
            raise CompressionError(f"layer {layer.name!r} has weights {sorted(w.name for w in layer.weights)} but "
                                   f"its source {source_name!r} has {sorted(source_weights)}")
        for weight in layer.weights:
            value = source_weights[weight.name]
            if tuple(value.shape) != tuple(weight.shape):
                raise CompressionError(f"layer {layer.name!r}: weight {weight.name!r} has shape {tuple(weight.shape)} "
                                       f"but its source {source_name!r} has {tuple(value.shape)}")
            weight.assign(value)
            assigned[weight.path] += 1
        used_sources.add(source_name)
    wrong = [w.path for w in target.weights if assigned[w.path] != 1]
    if wrong:
        raise CompressionError(f"weights assigned {[assigned[p] for p in wrong]} times instead of once: {wrong}")
    dropped_prefixes = tuple(_layer_prefix(b) for b in discarded)
    lost = [layer.name for layer in source.layers
            if layer.weights and layer.name not in used_sources and not isinstance(layer, StrictIdentity)
            and not layer.name.startswith((SIDE_HEAD_PREFIX, *dropped_prefixes))]
    if lost:
        raise CompressionError(f"layers of the gated network outside the discarded blocks have no place in the "
                               f"compressed network: {lost}")


def compress_model(gated, structure, discarded):
    """(compressed plain model with copied weights, its Structure, {old block: new block})."""
    kept, renames = compressed_structure(structure, discarded)
    compressed = build_resnet(kept, gated.get_layer("linear").units, gated=False, side_output=False,
                              image_shape=gated.input.shape[1:], name="compressed_resnet")
    copy_weights(gated, compressed, renames, discarded)
    return compressed, kept, renames


def network_cost(model):
    """Trainable parameters and multiply-accumulates per image of the path to the logits.

    MACs count the Conv2D (H_out·W_out·k·k·C_in·C_out) and Dense (C_in·C_out) layers; the
    side head, which compression drops, is left out of both counts.
    """
    params = macs = 0
    for layer in model.layers:
        if layer.name.startswith(SIDE_HEAD_PREFIX):
            continue
        params += sum(int(np.prod(w.shape)) for w in layer.trainable_weights)
        if isinstance(layer, keras.layers.Conv2D):
            shape = layer.output.shape
            height, width = shape[2:4] if layer.data_format == "channels_first" else shape[1:3]
            macs += height * width * int(np.prod(layer.kernel.shape))
        elif isinstance(layer, keras.layers.Dense):
            macs += int(np.prod(layer.kernel.shape))
    return {"params": params, "macs": macs}


# ---- running the networks -------------------------------------------------------------------
def evaluate(model, batches):
    """{"val_error"} (and "val_error_top5" with more than 10 classes) of a model over (images, labels) batches."""
    top5 = model.output["logits"].shape[-1] > 10

    @tf.function(reduce_retracing=True)
    def step(images, labels):
        logits = model(images, training=False)["logits"]
        misses = {"val_error": tf.reduce_sum(training.top1_wrong(logits, labels))}
        if top5:
            misses["val_error_top5"] = tf.reduce_sum(training.top5_wrong(logits, labels))
        return misses

    totals, count = collections.Counter(), 0
    for images, labels in batches:
        totals.update({k: float(v) for k, v in step(images, labels).items()})
        count += int(labels.shape[0])
    if not count:
        raise CompressionError("the evaluation set is empty")
    return {k: v / count for k, v in totals.items()}


def lossless_check(gated, compressed, batches, discarded):
    """Run both networks on the same batches and compare them.

    Returns the image count, the largest |logit difference|, both error rates, the
    discarded blocks whose gate opened on some batch (there the gated network used the
    block and the compressed one cannot) and the kept blocks whose gate closed on some batch
    (there the gated network skipped the block and the compressed one does not). A closed
    gate outputs exact zeros, an open one does not, so max |gate output| tells them apart.
    """
    gates = gates_of(gated)
    probe = keras.Model(gated.input, [gated.output["logits"], *[g.output for g in gates]])

    @tf.function(reduce_retracing=True)
    def step(images, labels):
        logits, *gate_outputs = probe(images, training=False)
        other = compressed(images, training=False)["logits"]
        return (tf.reduce_max(tf.abs(logits - other)), tf.stack([tf.reduce_max(tf.abs(o)) for o in gate_outputs]),
                tf.reduce_sum(training.top1_wrong(logits, labels)), tf.reduce_sum(training.top1_wrong(other, labels)))

    count, batch_count, max_diff, wrong_gated, wrong_compressed = 0, 0, 0.0, 0.0, 0.0
    ever_open, ever_closed = np.zeros(len(gates), bool), np.zeros(len(gates), bool)
    for images, labels in batches:
        diff, gate_max, gated_wrong, compressed_wrong = step(images, labels)
        max_diff = max(max_diff, float(diff))
        ever_open |= gate_max.numpy() > 0
        ever_closed |= gate_max.numpy() == 0
        wrong_gated += float(gated_wrong)
        wrong_compressed += float(compressed_wrong)
        count += int(labels.shape[0])
        batch_count += 1
    if not count:
        raise CompressionError("the validation set is empty: nothing to check the compressed network on")
    discarded = set(discarded)
    return {"images": count, "batches": batch_count, "max_abs_logit_difference": max_diff,
            "gated_error": wrong_gated / count, "compressed_error": wrong_compressed / count,
            "discarded_blocks_opened": [g.block for g, o in zip(gates, ever_open) if o and g.block in discarded],
            "kept_blocks_closed": [g.block for g, c in zip(gates, ever_closed) if c and g.block not in discarded]}


# ---- checkpoints -----------------------------------------------------------------------------
def restore_weights(model, prefix, exact):
    """Load a model's weights from a checkpoint prefix written as tf.train.Checkpoint(model=...).

    exact: every value of the checkpoint must be used (a compressed checkpoint); otherwise
    extra values (a training run's optimizer and state) are ignored. Either way every
    weight of the model must be found, with its shape.
    """
    if not tf.io.gfile.exists(prefix + ".index"):
        raise CompressionError(f"no checkpoint {prefix!r}: the file {prefix}.index does not exist")
    try:
        status = tf.train.Checkpoint(model=model).read(prefix)
        if exact:
            status.assert_consumed()
        else:
            status.expect_partial()
            status.assert_existing_objects_matched()
    except (AssertionError, ValueError, tf.errors.OpError) as err:
        raise CompressionError(f"the weights in {prefix} do not fit the network {model.name!r}: {err}") from None


def find_run(directory):
    """RUN_DIR itself, or the one run folder (config.yaml and metrics.jsonl) below it."""
    if not os.path.isdir(directory):
        raise CompressionError(f"--dir {directory!r} is not a folder")

    def is_run(folder):
        return all(os.path.isfile(os.path.join(folder, f)) for f in ("config.yaml", "metrics.jsonl"))

    if is_run(directory):
        return directory
    runs = sorted(os.path.normpath(root) for root, _, _ in os.walk(directory) if is_run(root))
    if len(runs) != 1:
        found = f"several: {runs}; pass one of them" if runs else "none"
        raise CompressionError(f"looked for a run folder (with config.yaml and metrics.jsonl) in and below "
                               f"{directory!r} and found {found}")
    return runs[0]


def record_at_step(records, step):
    for record in records:
        if record["global_step"] == step:
            return record
    raise CompressionError(f"metrics.jsonl has no epoch ending at step {step}; "
                           f"the recorded steps are {[r['global_step'] for r in records]}")


def output_name(step):
    return f"compressed_model_{step}"


def refuse_existing_outputs(run_dir, step):
    existing = sorted(f for f in os.listdir(run_dir) if f.startswith(output_name(step) + "."))
    if existing:
        raise CompressionError(f"{run_dir} already holds {existing}; remove them to compress step {step} again")


def _publish(tmp_path, path):
    """Move a finished file into place, never over an existing one."""
    if os.path.exists(path):
        raise CompressionError(f"{path} appeared while compressing; it was left untouched")
    os.replace(tmp_path, path)


def write_outputs(run_dir, step, compressed, cfg):
    """Write the compressed checkpoint, then the .cfg, each moved into place when complete."""
    refuse_existing_outputs(run_dir, step)
    name = output_name(step)
    tmp_dir = tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=run_dir)
    try:
        tf.train.Checkpoint(model=compressed).write(os.path.join(tmp_dir, name))
        # The index names the checkpoint's data: publish it after the data files.
        for file in sorted(os.listdir(tmp_dir), key=lambda f: f.endswith(".index")):
            _publish(os.path.join(tmp_dir, file), os.path.join(run_dir, file))
        tmp_cfg = os.path.join(tmp_dir, name + ".cfg")
        with open(tmp_cfg, "w") as f:
            f.write(CFG_HEADER + yaml.safe_dump(cfg, sort_keys=False, default_flow_style=None))
            f.flush()
            os.fsync(f.fileno())
        cfg_path = os.path.join(run_dir, name + ".cfg")
        _publish(tmp_cfg, cfg_path)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    return cfg_path


# ---- compressing a run ----------------------------------------------------------------------
def compress_run(directory, step, check_batches=None, strict=False, data_dir=None, source=None):
    """Compress a run folder's checkpoint model-<step>; returns (path of the .cfg, its contents).

    check_batches: check on the first K validation batches instead of all of them. strict:
    keep a discarded block whose gate opens on the check data. source: the DataSource to
    use instead of the run's dataset (tests).
    """
    run_dir = find_run(directory)
    refuse_existing_outputs(run_dir, step)
    if check_batches is not None and check_batches < 1:
        raise CompressionError(f"--check-batches must be >= 1, got {check_batches}")
    config = config_lib.load(os.path.join(run_dir, "config.yaml"))
    if not config.model.gated:
        raise CompressionError(f"{run_dir} trained a plain ResNet (model.gated: false): it has no gates to compress")
    record = record_at_step(read_metrics(run_dir), step)
    checkpoint = training.checkpoint_path(run_dir, step)
    training.check_checkpoint(checkpoint)
    structure = training.structure_for(config)
    discarded = discarded_blocks(record, structure.block_names(), config.model.gate_ema_decay)

    data_dir = data_dir or config.data.dir
    if source is None:
        source = data.get_source(config.data.name, data_dir, **config.data.options)
    gated = training.build_model(config, source)
    restore_weights(gated, checkpoint, exact=False)  # the pixel mean comes from the checkpoint's preprocess layer
    batches = source.eval_dataset(config.train.eval_batch_size)
    if check_batches is not None:
        batches = batches.take(check_batches)

    compressed, kept, renames = compress_model(gated, structure, discarded)
    check = lossless_check(gated, compressed, batches, discarded)
    warnings, kept_by_strict = [], []
    if check["discarded_blocks_opened"] and strict:
        kept_by_strict = check["discarded_blocks_opened"]
        warnings.append(f"--strict: kept {kept_by_strict}: their averages reached 1 but their gates opened on "
                        f"validation data")
        discarded = [b for b in discarded if b not in kept_by_strict]
        compressed, kept, renames = compress_model(gated, structure, discarded)
        check = lossless_check(gated, compressed, batches, discarded)
    for block in check["discarded_blocks_opened"]:
        warnings.append(f"the gate of discarded block {block} opened on some validation batch: there the "
                        f"compressed network differs from the gated one (--strict keeps such blocks)")
    if check["kept_blocks_closed"]:
        warnings.append(f"kept block(s) {check['kept_blocks_closed']} were closed on some validation batch: "
                        f"there the gated network skipped them and the compressed network does not")

    imagenet = config.data.name in IMAGENET_DATASETS
    cfg = {
        "dataset": config.data.name,
        "data_dir": os.path.abspath(data_dir) if data_dir else None,
        "data_options": dict(config.data.options),
        ("depth" if imagenet else "n"): config.model.depth if imagenet else config.model.n,
        "num_classes": source.num_classes,
        "image_shape": list(source.image_shape),
        "eval_batch_size": config.train.eval_batch_size,
        "source_checkpoint": os.path.basename(checkpoint),
        "step": step,
        "epoch": record["epoch"],
        "epsilon": float(str(gated.epsilon.numpy())),  # the float32's shortest decimal form: 0.01, not 0.00999999977
        "discarded_blocks": list(discarded),
        "first_block_discarded": [not k for k in kept.first_block_kept],
        "stage_units": list(kept.stage_units),
        "first_block_kept": list(kept.first_block_kept),
        "renamed_blocks": {old: new for old, new in renames.items() if old != new},
        "weights": output_name(step),
        "recorded_errors": {k: float(v) for k, v in record.items() if k.startswith("val_error")},
        "check": {**check, "check_batches": check_batches, "strict": strict, "kept_by_strict": kept_by_strict},
        "warnings": warnings,
        "cost": {"full": network_cost(gated), "compressed": network_cost(compressed)},
    }
    return write_outputs(run_dir, step, compressed, cfg), cfg


# ---- reading a compressed model back ---------------------------------------------------------
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


REQUIRED_KEYS = {"dataset": str, "stage_units": list, "first_block_kept": list, "num_classes": int,
                 "image_shape": list, "weights": str}


def read_cfg(path):
    """Parse and validate a compressed_model_<step>.cfg; errors name the file and the key."""
    raw = config_lib.read_yaml(path, CompressionError, f"--cfg {path!r} does not exist")
    if not isinstance(raw, dict):
        raise CompressionError(f"{path}: expected a mapping written by compressModel.py, got {type(raw).__name__}")
    for key, kind in REQUIRED_KEYS.items():
        if key not in raw:
            raise CompressionError(f"{path}: missing key {key!r} (a compressModel.py .cfg has "
                                   f"{', '.join(REQUIRED_KEYS)}, and n or depth)")
        if not isinstance(raw[key], kind) or isinstance(raw[key], bool):
            raise CompressionError(f"{path}: {key} must be a {kind.__name__}, got {raw[key]!r}")
    dataset = raw["dataset"]
    if dataset not in data.LOADERS:
        raise CompressionError(f"{path}: unknown dataset {dataset!r}; expected one of {', '.join(data.LOADERS)}")
    size_key = "depth" if dataset in IMAGENET_DATASETS else "n"
    if not isinstance(raw.get(size_key), int):
        raise CompressionError(f"{path}: a {dataset} network needs an integer {size_key!r}, got {raw.get(size_key)!r}")
    try:
        full = imagenet_structure(raw["depth"]) if size_key == "depth" else cifar_structure(raw["n"])
        structure = Structure(full.family, raw["stage_units"], raw["first_block_kept"], full.bottleneck)
    except (ValueError, TypeError) as err:
        raise CompressionError(f"{path}: {err}") from None
    if any(kept > units for kept, units in zip(structure.stage_units, full.stage_units)):
        raise CompressionError(f"{path}: stage_units {list(structure.stage_units)} exceed the full network's "
                               f"{list(full.stage_units)}")
    weights = os.path.join(os.path.dirname(os.path.abspath(path)), raw["weights"])
    return CompressedSpec(path, dataset, structure, raw["num_classes"], tuple(raw["image_shape"]), weights,
                          raw.get("data_dir"), dict(raw.get("data_options") or {}),
                          int(raw.get("eval_batch_size", 128)))


def load_compressed(spec):
    """The plain network a .cfg describes, with its weights loaded and checked."""
    model = build_resnet(spec.structure, spec.num_classes, gated=False, side_output=False,
                         image_shape=spec.image_shape, name="compressed_resnet")
    restore_weights(model, spec.weights, exact=True)
    return model


def check_source_fits(spec, source):
    if source.num_classes != spec.num_classes or tuple(source.image_shape) != tuple(spec.image_shape):
        raise CompressionError(f"{spec.path} describes a network for {spec.num_classes} classes of "
                               f"{list(spec.image_shape)} images, but the {spec.dataset} data has "
                               f"{source.num_classes} classes of {list(source.image_shape)} images")


# ---- export ----------------------------------------------------------------------------------
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
