"""Compression of a trained ε-ResNet (docs/original.md §8): remove the blocks its gates skip.

The blocks removed are exactly those closed at inference (gate.StrictIdentity: the stored
decision, is_discarded average >= 1/2). Where a gate is closed the gated network's block
outputs its shortcut alone and where it is open shortcut + F, whatever the batch, so the plain
network without the closed blocks computes the gated network's inference logits on every
input, at every batch size. (The original decided from the is_discarded averages having
reached 1, and compared with a gated network that decided per batch: docs/tensorflow.md,
"The gate at inference".)

The compressed network is built from the gated network's Architecture without those blocks,
and takes the gated network's weights layer by layer, by name: the mechanism of
pruning.without_closed_blocks, which says why this one builds rather than clones. A check
then runs both networks on the validation set, together with the original's per-batch gates
for comparison.
"""
import collections
import logging
import os
import re

import keras
import numpy as np
import tensorflow as tf

from epsilon_resnet import batch_norm, checkpoints, compressed_cfg, pruning, run_folder
from epsilon_resnet import config as config_lib
from epsilon_resnet.compressed_cfg import CompressedSpec
from epsilon_resnet.errors import CompressionError, Interrupted
from epsilon_resnet.evaluation import logit_tolerance, logits_equal, run_batches, top_k_wrong
from epsilon_resnet.gate import CLOSED_AT_INFERENCE, gates_of, per_batch_inference
from epsilon_resnet.networks import build_resnet, network_parts
from epsilon_resnet.signals import StopRequest
from epsilon_resnet.structures import architecture_for

DECISION = f"closed at inference: is_discarded moving average >= {CLOSED_AT_INFERENCE:g}"
# A gate whose recent training steps disagree this much (its average between 0.1 and 0.9) is reported.
FLICKERING = 0.1

logger = logging.getLogger("epsilon_resnet")


# ---- which blocks go ------------------------------------------------------------------------
def decide_at_inference(gated):
    """(the blocks closed at inference, [{block, closed_rate}] of the flickering gates: those
    closed on between FLICKERING and 1 − FLICKERING of their recent training steps, whose
    is_discarded average is closed_rate)."""
    gates = gates_of(gated)
    discarded = [g.block for g in pruning.closed_gates(gated)]
    flickering = [{"block": g.block, "closed_rate": round(float(g.is_discarded.numpy()), 4),
                   "closed_at_inference": g.closed_at_inference()}
                  for g in gates if FLICKERING < float(g.is_discarded.numpy()) < 1.0 - FLICKERING]
    return discarded, flickering


# ---- the compressed network -----------------------------------------------------------------
def compress_model(gated, architecture, discarded):
    """(compressed plain model with the weights of `gated`, its Architecture): `gated`, built
    from `architecture`, without the blocks named in `discarded` and without its side head."""
    try:
        kept = architecture.compressed(discarded)
    except ValueError as err:
        raise CompressionError(str(err)) from None
    compressed = build_resnet(kept, gated.output["logits"].shape[-1], name="compressed_resnet",
                              batch_norm_kind=batch_norm.kind_of(gated))
    pruning.copy_weights(gated, compressed)
    return compressed, kept


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


# ---- the check ------------------------------------------------------------------------------
def lossless_check(gated, compressed, batches, stop=None):
    """Run the gated network (at inference, and with per-batch gates) and the compressed one on
    the same batches: the image count, the largest |logit difference| between gated and
    compressed, whether that is within `evaluation.logit_tolerance`, and the three errors. stop: a
    signals.StopRequest that ends the check at the next batch (Interrupted)."""
    @tf.function(reduce_retracing=True)
    def step(images, labels):
        logits = gated(images, training=False)["logits"]
        other = compressed(images, training=False)["logits"]
        with per_batch_inference(gated):
            per_batch = gated(images, training=False)["logits"]
        return (tf.reduce_max(tf.abs(logits - other)), tf.reduce_max(tf.abs(logits)),
                *(tf.reduce_sum(top_k_wrong(x, labels)) for x in (logits, other, per_batch)))

    totals = collections.Counter()
    for (diff, largest, *wrong), images in run_batches(step, batches, stop=stop):
        totals.update(images=images, batches=1, gated=float(wrong[0]), compressed=float(wrong[1]),
                      per_batch=float(wrong[2]))
        totals["max_diff"] = max(totals["max_diff"], float(diff))
        totals["largest"] = max(totals["largest"], float(largest))
    return {"images": totals["images"], "batches": totals["batches"],
            "max_abs_logit_difference": totals["max_diff"],
            "logits_equal": logits_equal(totals["max_diff"], totals["largest"]),
            "logit_tolerance": logit_tolerance(totals["largest"]),
            "gated_error": totals["gated"] / totals["images"],
            "compressed_error": totals["compressed"] / totals["images"],
            "per_batch_error": totals["per_batch"] / totals["images"]}


# ---- compressing a run ----------------------------------------------------------------------
def record_at_step(records, step):
    """The metrics record of the epoch that ended at `step`, or None."""
    return next((record for record in records if record["global_step"] == step), None)


def load_gated(run_dir, step, data_dir=None, source=None):
    """(config, source, gated model restored at `step`, with its gates in the stored inference mode
    whatever the run's model.gate_inference, checkpoint path) of a run folder."""
    config = run_folder.read_config(run_dir)
    if not config.model.gated:
        raise CompressionError(f"{run_dir} trained a plain ResNet (model.gated: false): it has no gates to compress")
    checkpoint = run_folder.checkpoint_path(run_dir, step)
    stored = config_lib.replace(config, **{"model.gate_inference": "stored"})
    source, gated = checkpoints.load_network(stored, checkpoint, data_dir, source)
    return config, source, gated, checkpoint


def compress_run(directory, step, check_batches=None, data_dir=None, source=None):
    """Compress a run folder's checkpoint model-<step>; returns (path of the .cfg, its CompressedSpec).

    check_batches: check on the first K validation batches instead of all. source: a
    DataSource to use instead of the run's dataset (tests).
    """
    if check_batches is not None and check_batches < 1:
        raise CompressionError(f"`check_batches` must be >= 1, got {check_batches}")
    run_dir = run_folder.find_run(directory)
    # The lock first: what this step's outputs are, and what an interrupted publish left, is
    # only known while no other process writes the folder. SIGINT and SIGTERM stop the check
    # at the next batch; during the publish they wait for it to end.
    with run_folder.locked(run_dir, "compressModel", when_held="wait until it ends, then compress `directory` "
                                                               "again"), StopRequest() as stop:
        remove_unpublished(run_dir, step)
        refuse_existing_outputs(run_dir, step)
        try:
            spec, compressed = _compress(run_dir, step, check_batches, data_dir, source, stop)
        except Interrupted:
            raise Interrupted(f"stopped by {stop.signal} during the check of step {step}; nothing was written: run "
                              f"compressModel again") from None
        return publish(run_dir, step, compressed, spec), spec


def _compress(run_dir, step, check_batches, data_dir, source, stop):
    """(CompressedSpec, compressed network) of a run's checkpoint at `step`, checked."""
    record = record_at_step(run_folder.read_metrics(run_dir), step)
    config, source, gated, checkpoint = load_gated(run_dir, step, data_dir, source)
    # Compression runs on one device: a null eval batch is the run's training batch on one GPU.
    config = config_lib.replace(config, **{"train.eval_batch_size": config_lib.eval_batch_size(config.train, 1)})
    discarded, flickering = decide_at_inference(gated)
    check_data = source.eval_dataset(config.train.eval_batch_size)
    if check_batches is not None:
        check_data = check_data.take(check_batches)
    architecture = architecture_for(config.model, source.family, source.image_shape)
    compressed, kept = compress_model(gated, architecture, discarded)
    check = {**lossless_check(gated, compressed, check_data, stop), "check_batches": check_batches,
             "batch_size": config.train.eval_batch_size}
    data_dir = data_dir or config.data.dir
    spec = CompressedSpec(
        config.data.name, kept, source.num_classes, run_folder.compressed_name(step),
        os.path.abspath(data_dir) if data_dir else None, dict(config.data.options),
        config.train.eval_batch_size, source_checkpoint=os.path.basename(checkpoint), step=step,
        epoch=record["epoch"] if record else None, epsilon=_epsilon_record(gated), decision=DECISION,
        flickering_blocks=tuple(flickering),
        recorded_errors={k: float(v) for k, v in (record or {}).items() if k.startswith("val_error")},
        check=check, warnings=tuple(_warnings(check, flickering)),
        cost={"full": network_cost(gated), "compressed": network_cost(compressed)})
    return spec, compressed


def _weight_files(run_dir, step):
    """The compressed weights of a step in the run folder (regular files only)."""
    pattern = re.compile(re.escape(run_folder.compressed_name(step)) + r"\.(index|data-\d{5}-of-\d{5})")
    return sorted(entry.path for entry in os.scandir(run_dir)
                  if pattern.fullmatch(entry.name) and entry.is_file(follow_symlinks=False))


def remove_unpublished(run_dir, step):
    """Delete the compressed weights of a step that have no .cfg: an interrupted `publish` left
    them (it writes the .cfg last). Call only while holding the run folder's lock."""
    if os.path.lexists(os.path.join(run_dir, run_folder.compressed_name(step) + ".cfg")):
        return
    for path in _weight_files(run_dir, step):
        os.remove(path)
        logger.warning("removed %s: weights without their .cfg, left by an interrupted compressModel", path)


def refuse_existing_outputs(run_dir, step):
    """Refuse to compress a step twice."""
    existing = sorted(f for f in os.listdir(run_dir) if f.startswith(run_folder.compressed_name(step) + "."))
    if existing:
        raise CompressionError(f"{run_dir} already holds {existing}; remove them to compress step {step} again")


def publish(run_dir, step, compressed, spec):
    """Write the compressed weights, then the .cfg that names them, each only once complete;
    returns the .cfg's path. Call only while holding the run folder's lock (run_folder.locked).

    The .cfg's text is made first, so nothing is written when it cannot be; if writing the
    .cfg fails, the weight files this call wrote are removed again.
    """
    text = compressed_cfg.dumps(spec)
    name = run_folder.compressed_name(step)
    path = os.path.join(run_dir, name + ".cfg")
    checkpoints.write_checkpoint(tf.train.Checkpoint(model=compressed), run_dir, name)
    try:
        run_folder.write_new_file(path, text)
    except BaseException:
        for file in _weight_files(run_dir, step):
            os.remove(file)
        raise
    return path


def describe(spec, path):
    """What compressModel did, in a few lines."""
    full, small, check = spec.cost["full"], spec.cost["compressed"], spec.check
    kept = spec.architecture
    return "\n".join([
        f"step {spec.step}, ε = {spec.epsilon}: discarded {len(spec.discarded_blocks)} of "
        f"{len(kept.all_block_names())} blocks ({spec.decision}) {list(spec.discarded_blocks)}",
        f"units per stage: {kept.units_per_stage()} of {list(kept.stage_units)}, first blocks kept: "
        f"{[kept.has_block(s, 0) for s in range(len(kept.stage_units))]}",
        f"parameters {full['params']:,} -> {small['params']:,} ({small['params'] / full['params']:.1%}), "
        f"MACs per image {full['macs']:,} -> {small['macs']:,} ({small['macs'] / full['macs']:.1%})",
        f"check on {check['images']} validation images: logits {'equal' if check['logits_equal'] else 'DIFFER'} "
        f"(max |difference| {check['max_abs_logit_difference']:.3g}, tolerance {check['logit_tolerance']:.3g}), "
        f"error gated {check['gated_error']:.4f}, compressed {check['compressed_error']:.4f}",
        f"the original's per-batch gates at batch {check['batch_size']}: error {check['per_batch_error']:.4f}",
        f"wrote {path}",
    ])


def _epsilon_record(gated):
    """The checkpoint's ε, in the float32's shortest decimal form (0.01, not 0.00999999977);
    {block: ε} in the unusual case that the gates' ε differ."""
    values = {g.block: float(str(np.float32(g.epsilon.numpy()))) for g in gates_of(gated)}
    return values.popitem()[1] if len(set(values.values())) == 1 else values


def _warnings(check, flickering):
    warnings = [f"{f['block']} was closed on {f['closed_rate']:.1%} of its recent training steps (decay-weighted) "
                f"and open on the others: at inference, and so here, it is "
                f"{'removed' if f['closed_at_inference'] else 'kept'}" for f in flickering]
    if not check["logits_equal"]:
        warnings.append(f"the compressed network's logits differ from the gated network's by up to "
                        f"{check['max_abs_logit_difference']:.3g}, beyond the tolerance {check['logit_tolerance']:.3g}")
    return warnings
