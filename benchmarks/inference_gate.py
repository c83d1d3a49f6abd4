"""Which gate decision to use at inference, judged on held-out images; and error against batch size.

The original's gate decides per evaluated batch (max |F| over the whole batch), so its error
depends on the evaluation batch size. The paper's errors are per-batch at 128, so a rule that
decides each gate once, from what training stored, is judged by how close its error (and its
predictions) come to the per-batch ones at batch 128. Candidates, for a trained run's
checkpoints:

- stored average: closed when the gate's is_discarded moving average is >= 1/2 (the majority
  of its recent training steps, decay-weighted);
- average reached 1: closed when is_discarded reached 1 (closed on all of its last ~190 steps:
  the original's compression rule, `discard_tolerance`);
- last K batches, all / majority: the per-batch gate at the checkpoint's weights, on the K
  training batches the run trained on last, closed on all of them / on more than half.

Each candidate's decision is applied by removing its closed blocks (compression.compress_model),
so its error does not depend on the batch size; it is scored at batch 128. The run must hold
images out (data option holdout): nothing here looks at the test set. For the last checkpoint
the error of both semantics (the gated network's stored gates, and per batch) is recorded at
evaluation batch sizes 1, 10 and 128.

    python benchmarks/inference_gate.py --run train_log.gate-rule --data DIR   # the run of configs/cifar10-gate-rule.yaml

writes benchmarks/results/inference_gate.json (date, commit, machine: epsilon_resnet/provenance.py).
"""
import argparse
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Run as a script: the repository root makes `benchmarks` importable.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from benchmarks import RESULTS_DIR  # noqa: E402
from epsilon_resnet import checkpoints, compression, provenance, run_folder  # noqa: E402
from epsilon_resnet.atomic import write_atomic  # noqa: E402
from epsilon_resnet.evaluation import Evaluator  # noqa: E402
from epsilon_resnet.gate import gate_is_open, gates_of, per_batch_inference, residual_input  # noqa: E402
from epsilon_resnet.run_folder import read_metrics  # noqa: E402
from epsilon_resnet.structures import architecture_for  # noqa: E402

RESULTS = os.path.join(RESULTS_DIR, "inference_gate.json")
BATCH_SIZES = (1, 10, 128)
JUDGED_AT = 128       # the paper's evaluation batch size: the per-batch reference
LAST_BATCHES = 20     # K of the "last K batches" candidates


def closed_on_last_batches(gated, source, config, step):
    """How many of the run's last LAST_BATCHES training batches before `step` close each gate,
    with the checkpoint's weights (the training-time, per-batch gate)."""
    gates = gates_of(gated)
    probe = tf.keras.Model(gated.input, [residual_input(g) for g in gates])
    epsilons = tf.constant([float(g.epsilon.numpy()) for g in gates])
    batches = source.train_dataset(config.train.batch_size, seed=config.train.seed,
                                   start_step=step - LAST_BATCHES).take(LAST_BATCHES)

    @tf.function
    def closed(images):
        branches = probe(images, training=False)
        max_abs = tf.stack([tf.reduce_max(tf.abs(f)) for f in branches])
        return gate_is_open(max_abs, epsilons) == 0.0

    return sum(closed(images).numpy().astype(int) for images, _ in batches)


def discard_tolerance(ema_decay):
    """How far below 1 one gate's is_discarded average may stall and still count as "reached 1".

    The average is a float32 variable updated as ema·d + x·(1−d). Near 1 the increment
    (1−ema)·(1−d) drops below half a float32 ulp (2⁻²⁵) before ema gets to 1, so a block
    closed forever stalls at 1 − g with g ≤ ~2⁻²⁴/(1−d): 0.99999946 for d = 0.95. The
    tolerance 2⁻²³/(1−d) (2.4e-6 at d = 0.95) covers that stall with a margin and still
    excludes a block that was open in the last ~190 steps (at d = 0.95). (The training loop's
    schedules.DISCARDED_TOLERANCE asks the same of the sum over all gates, where the stalls of
    up to ~1800 closed blocks add up, and so is larger.)
    """
    return 2.0 ** -23 / (1.0 - ema_decay)


def candidates(gated, source, config, step):
    """{candidate: the blocks it closes}."""
    averages = {g.block: float(g.is_discarded.numpy()) for g in gates_of(gated)}
    counts = dict(zip(averages, closed_on_last_batches(gated, source, config, step)))
    reached_one = 1.0 - discard_tolerance(config.model.gate_ema_decay)
    return {"stored average >= 1/2": [b for b, a in averages.items() if a >= 0.5],
            "average reached 1": [b for b, a in averages.items() if a >= reached_one],
            f"last {LAST_BATCHES} batches, all": [b for b, c in counts.items() if c == LAST_BATCHES],
            f"last {LAST_BATCHES} batches, majority": [b for b, c in counts.items() if 2 * c > LAST_BATCHES]}, averages


def predictions(predict, dataset):
    """(predicted classes, labels) over a dataset."""
    predicted, labels = [], []
    for images, batch_labels in dataset:
        predicted.append(np.argmax(predict(images).numpy(), axis=-1))
        labels.append(batch_labels.numpy())
    return np.concatenate(predicted), np.concatenate(labels)


def judge_step(run_dir, config, step, data_dir):
    source, gated = checkpoints.load_network(config, run_folder.checkpoint_path(run_dir, step), data_dir)

    @tf.function(reduce_retracing=True)
    def per_batch(images):
        with per_batch_inference(gated):
            return gated(images, training=False)["logits"]

    reference, labels = predictions(per_batch, source.eval_dataset(JUDGED_AT))
    decisions, averages = candidates(gated, source, config, step)
    architecture = architecture_for(config.model, source.family, source.image_shape)
    judged = {}
    for name, closed in decisions.items():
        compressed, _ = compression.compress_model(gated, architecture, closed)
        predicted, _ = predictions(tf.function(lambda x, m=compressed: m(x, training=False)["logits"]),
                                   source.eval_dataset(JUDGED_AT))
        error = float(np.mean(predicted != labels))
        judged[name] = {"closed": closed, "error": error,
                        "error_minus_per_batch": error - float(np.mean(reference != labels)),
                        "predictions_differing_from_per_batch": int(np.sum(predicted != reference))}
    record = read_metrics(run_dir)
    epoch = next((r["epoch"] for r in record if r["global_step"] == step), None)
    return source, gated, {"step": step, "epoch": epoch, "images": int(labels.size),
                           "per_batch_error_at_128": float(np.mean(reference != labels)),
                           "is_discarded": averages, "candidates": judged}


def error_by_batch_size(gated, source):
    """{batch size: {stored, per_batch}} errors of the gated network on the held-out images."""
    evaluate = Evaluator(gated)
    table = {}
    for size in BATCH_SIZES:
        errors = evaluate(source.eval_dataset(size))
        table[size] = {"stored": errors["val_error"], "per_batch": errors["val_error_per_batch"]}
        print(f"batch {size}: stored {table[size]['stored']:.4f}, per batch {table[size]['per_batch']:.4f}",
              flush=True)
    return table


def main(argv=None):
    parser = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.split("\n")[0])
    parser.add_argument("--run", required=True, help="run folder of configs/cifar10-gate-rule.yaml")
    parser.add_argument("--data", help="CIFAR-10 folder (default: the run's data.dir)")
    parser.add_argument("--steps", type=int, nargs="+", help="checkpoints to judge (default: the config's "
                                                             "train.keep_checkpoint_steps)")
    parser.add_argument("--results", default=RESULTS, help="results file to write")
    args = parser.parse_args(argv)
    config = run_folder.read_config(args.run)
    holdout = config.data.options.get("holdout", 0)
    if not holdout:
        sys.exit(f"error: {args.run} evaluates on the test set; the rule is chosen on held-out images "
                 f"(data option holdout)")
    steps = args.steps or config.train.keep_checkpoint_steps
    judged = []
    for step in steps:
        source, gated, record = judge_step(args.run, config, step, args.data)
        judged.append(record)
        print(json.dumps({k: record[k] for k in ("step", "per_batch_error_at_128", "candidates")}), flush=True)
    by_batch = error_by_batch_size(gated, source)
    result = {"benchmark": "inference_gate", "run_config": config.to_dict(), "holdout_images": holdout,
              "judged_at_batch": JUDGED_AT, "last_batches": LAST_BATCHES, "checkpoints": judged,
              "error_by_batch_size": {"step": steps[-1], **{str(k): v for k, v in by_batch.items()}},
              "date": provenance.now(), **provenance.git_state(), "machine": provenance.machine()}
    write_atomic(args.results, json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.results}")


if __name__ == "__main__":
    main()
