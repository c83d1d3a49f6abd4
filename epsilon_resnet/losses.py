"""The training objective of docs/original.md §4: cross-entropy, 0.1 × the side head's
cross-entropy, and an L2 weight decay on every convolution and dense kernel whose
coefficient decays stepwise with the global step."""
import tensorflow as tf

from epsilon_resnet.evaluation import cross_entropy, top_k_wrong


def classification_losses(outputs, labels, global_batch, side_loss_weight):
    """(this replica's share of the loss, {statistic: this replica's share}) for one batch.

    Each replica divides its sums by the global batch, so summing over replicas gives the
    mean over the global batch, as the gradients (summed across replicas) expect.
    """
    def share(values):
        return tf.nn.compute_average_loss(values, global_batch_size=global_batch)

    loss = share(cross_entropy(outputs["logits"], labels))
    stats = {"cross_entropy_loss": loss, "train_error": share(top_k_wrong(outputs["logits"], labels))}
    if "side_logits" in outputs:
        side = share(cross_entropy(outputs["side_logits"], labels))
        loss += side_loss_weight * side
        stats["side_cross_entropy_loss"] = side
        stats["train_error_side"] = share(top_k_wrong(outputs["side_logits"], labels))
    return loss, stats


def weight_decay_coefficient(step, rate, decay_rate, decay_steps):
    """wd · decay_rate^⌊step / decay_steps⌋ (0.0002 · 0.2^⌊step / 480000⌋ on CIFAR and SVHN)."""
    step = tf.cast(step, tf.float32)
    return rate * tf.pow(tf.cast(decay_rate, tf.float32), tf.floor(step / decay_steps))


def weight_decay_cost(kernels, coefficient):
    """coefficient · Σ ½‖W‖² over the kernels, in float32 whatever the kernels' dtype."""
    return coefficient * tf.add_n([0.5 * tf.reduce_sum(tf.square(tf.cast(k, tf.float32))) for k in kernels])
