"""Compression of a trained ε-ResNet (docs/original.md §8): remove the blocks its gates skip.

By default the decision comes from the gates themselves: the gated network, restored at
the step, runs in inference mode over a few training batches, and a block is removed when
its gate is closed on every one of them. There the gated network's output is the
shortcut's alone, so the plain network without that block computes the same function.
The original's rule (the block's is_discarded moving average reached 1) stays available
as rule "ema"; it can keep a block that the gates already skip, and then the compressed
network adds back a residual the gated one left out.

Weights are copied by the network's structure (unit k of stage s to its new place), and a
lossless check then runs both networks on the validation set, which the decision never saw.
"""
import collections
import os

import keras
import numpy as np
import tensorflow as tf

from epsilon_resnet import compressed_cfg, run_folder
from epsilon_resnet import config as config_lib
from epsilon_resnet.errors import CompressionError
from epsilon_resnet.evaluation import run_batches, top_k_wrong
from epsilon_resnet.gate import StrictIdentity, gate_is_open, gates_of, residual_input
from epsilon_resnet.metrics_file import read_metrics
from epsilon_resnet.networks import build_resnet, network_parts
from epsilon_resnet.structures import Structure, structure_for
from epsilon_resnet.training import eval_batch_size

RULES = ("gates", "ema")
DECIDE_BATCHES = 20  # training batches the gates are watched on; a block must be closed on all of them


# ---- which blocks go ------------------------------------------------------------------------
class GateProbe:
    """The gated network's logits plus, per gate, max|F| over the batch and whether it is open."""

    def __init__(self, gated):
        self.gates = gates_of(gated)
        per_image_max = [keras.ops.max(keras.ops.abs(residual_input(g)), axis=tuple(range(1, 4))) for g in self.gates]
        self.model = keras.Model(gated.input, [gated.output["logits"], *per_image_max])
        self.epsilons = tf.constant([float(g.epsilon.numpy()) for g in self.gates], tf.float32)
        self.step = tf.function(self._step, reduce_retracing=True)

    def _step(self, images):
        logits, *per_image = self.model(images, training=False)
        max_abs = tf.stack([tf.reduce_max(tf.cast(m, tf.float32)) for m in per_image])
        return logits, max_abs, gate_is_open(max_abs, self.epsilons) > 0


def decide_by_gates(probe, batches):
    """(blocks closed on every batch, [{block, closed_rate, max_abs, epsilon}] of those closed on some).

    A block closed on some batches and open on others is kept; the report says how often it
    closed and how its largest max|F| compares with ε.
    """
    opened, largest, count = np.zeros(len(probe.gates), int), np.zeros(len(probe.gates)), 0
    for (_, max_abs, is_open), _ in run_batches(lambda images, labels: probe.step(images), batches):
        opened += is_open.numpy()
        largest = np.maximum(largest, max_abs.numpy())
        count += 1
    discarded = [g.block for g, n in zip(probe.gates, opened) if n == 0]
    flickering = [{"block": g.block, "closed_rate": round(1 - int(n) / count, 4), "max_abs": float(m),
                   "epsilon": float(e)} for g, n, m, e in zip(probe.gates, opened, largest, probe.epsilons.numpy())
                  if 0 < n < count]
    return discarded, flickering


def discard_tolerance(ema_decay):
    """How far below 1 an is_discarded average may stall and still count as "reached 1".

    The gate's EMA is a float32 variable updated as ema·d + x·(1−d). Near 1 the increment
    (1−ema)·(1−d) drops below half a float32 ulp (2⁻²⁵) before ema gets to 1, so a block
    closed forever stalls at 1 − g with g ≤ ~2⁻²⁴/(1−d): 0.99999946 for d = 0.95. The
    tolerance 2⁻²³/(1−d) (2.4e-6 at d = 0.95) covers that stall with a margin and still
    excludes a block that was open in the last ~190 steps (at d = 0.95).
    """
    return 2.0 ** -23 / (1.0 - ema_decay)


def decide_by_ema(record, block_names, ema_decay):
    """The blocks whose is_discarded average in a metrics record has reached 1 (the original's rule)."""
    missing = [b for b in block_names if f"{b}/is_discarded" not in record]
    if missing:
        raise CompressionError(f"the metrics record of step {record.get('global_step')} has no is_discarded "
                               f"average for block(s) {missing}: was this run gated?")
    return [b for b in block_names if float(record[f"{b}/is_discarded"]) >= 1.0 - discard_tolerance(ema_decay)]


# ---- the compressed network -----------------------------------------------------------------
def compressed_structure(structure, discarded):
    """(kept Structure, {(stage, old unit): (stage, new unit)}) for removing `discarded`.

    Unit 0 of a stage stays unit 0 whether its block stays or only its shortcut path does
    (a removed downsampling block still downsamples); the kept units 1.. are renumbered 1, 2, ...
    """
    names = {structure.block_name(s, u): (s, u) for s, n in enumerate(structure.stage_units) for u in range(n)}
    unknown = sorted(set(discarded) - set(structure.block_names()))
    if unknown:
        raise CompressionError(f"cannot discard {unknown}: the network's blocks are {structure.block_names()}")
    gone = {names[b] for b in discarded}
    units, first_kept, moves = [], [], {}
    for stage, count in enumerate(structure.stage_units):
        kept = [0] + [u for u in range(1, count) if (stage, u) not in gone]
        moves.update({(stage, old): (stage, new) for new, old in enumerate(kept)})
        units.append(len(kept))
        first_kept.append(structure.first_block_kept[stage] and (stage, 0) not in gone)
    return Structure(structure.family, units, first_kept, structure.bottleneck), moves


def copy_weights(gated, compressed, kept, moves):
    """Assign every weight of `compressed` from the layer at the same place of `gated`.

    Parts are matched by structure (stem, head, and unit k of stage s moved to its new
    place); within a part, layers in build order. A unit reduced to its shortcut path
    holds the first layers of the full unit (pre-activation, shortcut convolution); any
    other part must match its source layer for layer. Gates and the side head have no
    place in the compressed network.
    """
    sources = {part: [layer for layer in layers if not isinstance(layer, StrictIdentity)]
               for part, layers in network_parts(gated).items()}
    origin = {"stem": "stem", "head": "head", **{new: old for old, new in moves.items()}}
    targets = network_parts(compressed)
    if sum(map(len, targets.values())) != sum(1 for layer in compressed.layers if layer.weights):
        raise CompressionError("network_parts misses layers of the compressed network: cannot copy by structure")
    for part, layers in targets.items():
        source = sources.get(origin[part], [])
        whole = part in ("stem", "head") or part[1] > 0 or kept.first_block_kept[part[0]]
        if len(source) < len(layers) or (whole and len(source) != len(layers)):
            raise CompressionError(f"part {part} of the compressed network has {len(layers)} layers with weights, "
                                   f"its source {origin[part]} in the gated network {len(source)}")
        for target, origin_layer in zip(layers, source):
            _copy_layer(origin_layer, target)


def _copy_layer(source, target):
    if type(source) is not type(target) or len(source.weights) != len(target.weights):
        raise CompressionError(f"layer {target.name!r} ({type(target).__name__}) does not match its source "
                               f"{source.name!r} ({type(source).__name__})")
    for weight, value in zip(target.weights, source.weights):
        if tuple(value.shape) != tuple(weight.shape):
            raise CompressionError(f"layer {target.name!r}: weight {weight.name!r} has shape {tuple(weight.shape)} "
                                   f"but its source {source.name!r} has {tuple(value.shape)}")
        weight.assign(value)


def compress_model(gated, structure, discarded):
    """(compressed plain model with copied weights, its Structure, {(stage, old unit): (stage, new unit)})."""
    kept, moves = compressed_structure(structure, discarded)
    compressed = build_resnet(kept, gated.output["logits"].shape[-1], gated=False, side_output=False,
                              image_shape=gated.input.shape[1:], name="compressed_resnet")
    copy_weights(gated, compressed, kept, moves)
    return compressed, kept, moves


def network_cost(model):
    """Trainable parameters and multiply-accumulates per image of the path to the logits.

    MACs count the Conv2D (H_out·W_out·k·k·C_in·C_out) and Dense (C_in·C_out) layers; the
    side head, which compression drops, is left out of both counts.
    """
    side = {id(layer) for layer in network_parts(model).get("side", [])}
    params = macs = 0
    for layer in model.layers:
        if id(layer) in side:
            continue
        params += sum(int(np.prod(w.shape)) for w in layer.trainable_weights)
        if isinstance(layer, keras.layers.Conv2D):
            shape = layer.output.shape
            height, width = shape[2:4] if layer.data_format == "channels_first" else shape[1:3]
            macs += height * width * int(np.prod(layer.kernel.shape))
        elif isinstance(layer, keras.layers.Dense):
            macs += int(np.prod(layer.kernel.shape))
    return {"params": params, "macs": macs}


# ---- the lossless check ----------------------------------------------------------------------
def lossless_check(probe, compressed, batches, discarded):
    """Run the gated and the compressed network on the same batches and compare them.

    Returns the image count, the largest |logit difference|, both errors, the removed blocks
    whose gate opened on some batch (there the gated network used the block) and the kept
    blocks whose gate closed on some batch (there it skipped a block the compressed one runs).
    """
    @tf.function(reduce_retracing=True)
    def step(images, labels):
        logits, _, is_open = probe.step(images)
        other = compressed(images, training=False)["logits"]
        return (tf.reduce_max(tf.abs(logits - other)), is_open,
                tf.reduce_sum(top_k_wrong(logits, labels)), tf.reduce_sum(top_k_wrong(other, labels)))

    totals = collections.Counter()
    ever_open, ever_closed = np.zeros(len(probe.gates), bool), np.zeros(len(probe.gates), bool)
    for (diff, is_open, wrong_gated, wrong_compressed), images in run_batches(step, batches):
        totals.update(images=images, batches=1, gated=float(wrong_gated), compressed=float(wrong_compressed))
        totals["max_diff"] = max(totals["max_diff"], float(diff))
        ever_open |= is_open.numpy()
        ever_closed |= ~is_open.numpy()
    removed = set(discarded)
    return {"images": totals["images"], "batches": totals["batches"],
            "max_abs_logit_difference": totals["max_diff"],
            "gated_error": totals["gated"] / totals["images"],
            "compressed_error": totals["compressed"] / totals["images"],
            "discarded_blocks_opened": [g.block for g, o in zip(probe.gates, ever_open) if o and g.block in removed],
            "kept_blocks_closed": [g.block for g, c in zip(probe.gates, ever_closed) if c and g.block not in removed]}


# ---- compressing a run ----------------------------------------------------------------------
def record_at_step(records, step):
    """The metrics record of the epoch that ended at `step`, or None."""
    return next((record for record in records if record["global_step"] == step), None)


def load_gated(run_dir, step, data_dir=None, source=None):
    """(config, source, gated model restored at `step`, checkpoint path) of a run folder."""
    config = run_folder.read_config(run_dir)
    if not config.model.gated:
        raise CompressionError(f"{run_dir} trained a plain ResNet (model.gated: false): it has no gates to compress")
    checkpoint = run_folder.checkpoint_path(run_dir, step)
    source, gated = run_folder.load_network(config, checkpoint, data_dir, source, error=CompressionError)
    return config, source, gated, checkpoint


def decide(rule, probe, config, source, record, step, decide_batches):
    """(discarded blocks, flickering report) under `rule` ("gates" or "ema")."""
    if rule == "ema":
        if record is None:
            raise CompressionError(f"--rule ema reads the is_discarded averages recorded at an epoch end, and "
                                   f"metrics.jsonl has no epoch ending at step {step}")
        names = structure_for(config.model, source.family).block_names()
        return decide_by_ema(record, names, config.model.gate_ema_decay), []
    batches = source.train_dataset(config.train.eval_batch_size, seed=0).take(decide_batches)
    return decide_by_gates(probe, batches)


def compress_run(directory, step, rule="gates", decide_batches=DECIDE_BATCHES, check_batches=None, strict=False,
                 data_dir=None, source=None):
    """Compress a run folder's checkpoint model-<step>; returns (path of the .cfg, its contents).

    rule: "gates" (closed on every one of `decide_batches` training batches) or "ema".
    check_batches: check on the first K validation batches instead of all. strict: keep a
    removed block whose gate opens on the check data. source: a DataSource to use instead
    of the run's dataset (tests).
    """
    if rule not in RULES:
        raise CompressionError(f"--rule must be one of {RULES}, got {rule!r}")
    for name, value in (("--decide-batches", decide_batches), ("--check-batches", check_batches)):
        if value is not None and value < 1:
            raise CompressionError(f"{name} must be >= 1, got {value}")
    run_dir = run_folder.find_run(directory)
    compressed_cfg.refuse_existing_outputs(run_dir, step)
    config, source, gated, checkpoint = load_gated(run_dir, step, data_dir, source)
    # Compression runs on one device: a null eval batch is the run's training batch on one GPU.
    config = config_lib.replace(config, **{"train.eval_batch_size": eval_batch_size(config.train, 1)})
    record = record_at_step(read_metrics(run_dir), step)
    probe = GateProbe(gated)
    discarded, flickering = decide(rule, probe, config, source, record, step, decide_batches)
    check_data = source.eval_dataset(config.train.eval_batch_size)
    if check_batches is not None:
        check_data = check_data.take(check_batches)
    structure = structure_for(config.model, source.family)
    compressed, kept, moves = compress_model(gated, structure, discarded)
    check = lossless_check(probe, compressed, check_data, discarded)
    kept_by_strict = check["discarded_blocks_opened"] if strict else []
    if kept_by_strict:
        discarded = [b for b in discarded if b not in kept_by_strict]
        compressed, kept, moves = compress_model(gated, structure, discarded)
        check = lossless_check(probe, compressed, check_data, discarded)
    cfg = {**_network_record(config, source, data_dir, kept),
           **_decision_record(rule, decide_batches, discarded, flickering, gated, checkpoint, step, record),
           "weights": compressed_cfg.output_name(step),
           "check": {**check, "check_batches": check_batches, "strict": strict, "kept_by_strict": kept_by_strict},
           "warnings": _warnings(check, flickering, kept_by_strict),
           "cost": {"full": network_cost(gated), "compressed": network_cost(compressed)}}
    return compressed_cfg.write(run_dir, step, compressed, cfg), cfg


def _network_record(config, source, data_dir, kept):
    """The .cfg keys that rebuild the compressed network and find its data."""
    data_dir = data_dir or config.data.dir
    size_key = "depth" if source.family == "imagenet" else "n"
    return {"dataset": config.data.name, "data_dir": os.path.abspath(data_dir) if data_dir else None,
            "data_options": dict(config.data.options), size_key: getattr(config.model, size_key),
            "num_classes": source.num_classes, "image_shape": list(source.image_shape),
            "eval_batch_size": config.train.eval_batch_size,
            "first_block_discarded": [not k for k in kept.first_block_kept],
            "stage_units": list(kept.stage_units), "first_block_kept": list(kept.first_block_kept)}


def _decision_record(rule, decide_batches, discarded, flickering, gated, checkpoint, step, record):
    """The .cfg keys that say what was removed, from which checkpoint, and how it was decided."""
    return {"source_checkpoint": os.path.basename(checkpoint), "step": step,
            "epoch": record["epoch"] if record else None,
            "epsilon": _epsilon_record(gated),
            "rule": rule, "decide_batches": decide_batches if rule == "gates" else None,
            "discarded_blocks": list(discarded), "flickering_blocks": flickering,
            "recorded_errors": {k: float(v) for k, v in (record or {}).items() if k.startswith("val_error")}}


def _epsilon_record(gated):
    """The checkpoint's ε, in the float32's shortest decimal form (0.01, not 0.00999999977);
    {block: ε} in the unusual case that the gates' ε differ."""
    values = {g.block: float(str(np.float32(g.epsilon.numpy()))) for g in gates_of(gated)}
    return values.popitem()[1] if len(set(values.values())) == 1 else values


def _warnings(check, flickering, kept_by_strict):
    warnings = [f"kept {f['block']}: its gate closed on {f['closed_rate']:.0%} of the training batches, not all "
                f"(largest max|F| {f['max_abs']:.4g} against ε {f['epsilon']:g})" for f in flickering]
    if kept_by_strict:
        warnings.append(f"--strict: kept {kept_by_strict}: their gates opened on validation data")
    warnings += [f"the gate of removed block {block} opened on some validation batch: there the compressed network "
                 f"differs from the gated one (--strict keeps such blocks)" for block in check["discarded_blocks_opened"]]
    if check["kept_blocks_closed"]:
        warnings.append(f"kept block(s) {check['kept_blocks_closed']} were closed on some validation batch: there "
                        f"the gated network skipped them and the compressed network does not")
    return warnings
