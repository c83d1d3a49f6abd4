"""One evaluation loop for every network of the project: the gated one during training and
with --eval, the compressed one, and the two side by side in compression's lossless check.

Errors are top-k misses as tensorpack counted them (`in_top_k`: a label tied with the k-th
largest logit counts as a hit); every sum is taken over whole batches and divided by the
number of images at the end, so a short last batch weighs what its images weigh.

A gated network is scored twice: val_error and the others with its gates as they are at
inference (by default the decision stored in training: the deployable network), and
val_error_per_batch with the original's per-batch gates, whose answer for an image depends on
the batch it is evaluated in (comparable with the paper's errors at the same batch size).
"""
import keras
import tensorflow as tf

from epsilon_resnet.errors import Interrupted, RunError
from epsilon_resnet.gate import gates_of, per_batch_inference

# Equal logits: two networks run the same operations on the same weights, and only the order
# in which a kernel sums may differ (another graph, another batch size, another runtime):
# |Δ| <= this × max(1, max|logit|). Compression's lossless check and the exports' check use it.
LOGIT_TOLERANCE = 1e-5


def logit_tolerance(largest):
    """The largest |logit difference| that counts as equal, for logits up to `largest` in size."""
    return LOGIT_TOLERANCE * max(1.0, largest)


def logits_equal(difference, largest):
    return difference <= logit_tolerance(largest)


def top_k_wrong(logits, labels, k=1):
    """1.0 for each example whose label is not among its k largest logits, else 0.0."""
    hits = tf.math.in_top_k(tf.cast(labels, tf.int32), tf.cast(logits, tf.float32), k)
    return 1.0 - tf.cast(hits, tf.float32)


def cross_entropy(logits, labels):
    return keras.losses.sparse_categorical_crossentropy(labels, tf.cast(logits, tf.float32), from_logits=True)


def batch_sums(outputs, labels):
    """Sums over one batch of the validation metrics a model's outputs allow.

    val_error and val_cost from the logits, val_error_top5 when there are more than 10
    classes, val_error_side when the side head is there.
    """
    logits = outputs["logits"]
    sums = {"val_error": top_k_wrong(logits, labels), "val_cost": cross_entropy(logits, labels)}
    if logits.shape[-1] > 10:
        sums["val_error_top5"] = top_k_wrong(logits, labels, 5)
    if "side_logits" in outputs:
        sums["val_error_side"] = top_k_wrong(outputs["side_logits"], labels)
    return {key: tf.reduce_sum(value) for key, value in sums.items()}


def run_batches(step, batches, max_batches=None, stop=None):
    """Yield (step(images, labels), number of images) for each batch.

    max_batches: stop after that many batches. stop: a signals.StopRequest; a signal that
    arrives while evaluating ends the loop at the next batch with Interrupted. An empty
    dataset is an error, not a silent zero.
    """
    count = 0
    for index, (images, labels) in enumerate(batches):
        if max_batches is not None and index >= max_batches:
            break
        if stop is not None and stop.signal:
            raise Interrupted(f"stopped by {stop.signal} during evaluation")
        yield step(images, labels), int(labels.shape[0])
        count += int(labels.shape[0])
    if not count:
        raise RunError("the evaluation set is empty: there is nothing to evaluate on")


class Evaluator:
    """A model's validation metrics over a dataset, from one compiled step (plus
    val_error_per_batch for a gated model)."""

    def __init__(self, model, jit_compile=False):
        self.model = model
        self.gates = gates_of(model) if isinstance(model, keras.Model) else []  # or any callable
        self.step = tf.function(self._sums, jit_compile=jit_compile, reduce_retracing=True)

    def _sums(self, images, labels):
        sums = batch_sums(self.model(images, training=False), labels)
        if not self.gates:
            return sums
        if all(gate.inference == "per_batch" for gate in self.gates):
            return {**sums, "val_error_per_batch": sums["val_error"]}
        with per_batch_inference(self.model):
            logits = self.model(images, training=False)["logits"]
        return {**sums, "val_error_per_batch": tf.reduce_sum(top_k_wrong(logits, labels))}

    def __call__(self, batches, max_batches=None, stop=None):
        """{metric: mean over the images} of the batches (or their first max_batches)."""
        totals, count = {}, 0
        for sums, images in run_batches(self.step, batches, max_batches, stop):
            for key, value in sums.items():
                totals[key] = totals.get(key, 0.0) + float(value)
            count += images
        return {key: value / count for key, value in totals.items()}
