"""The strict-identity gate of ε-ResNet (SPEC §1): four ReLUs that close a whole residual block.

For a residual branch output F(x), the gate is

    s    = max over the whole batch tensor of relu(F - ε) + relu(-F - ε)   (> 0 iff some |F| > ε)
    gate = relu(relu(s·(-L) + 1)·(-L) + 1),  L = 1e6                        (≈ 1 if s > 1/L, else 0)

and the layer returns gate·F(x). The huge slope L turns the ReLUs into a step function.
When the gate is 0 no gradient reaches the block's weights except weight decay, which
drives them to zero, so a closed block stays closed.
"""
import keras
import tensorflow as tf

GATE_SLOPE = 1e6  # L: any s above 1/L opens the gate fully; a smaller L leaves it half-open.
EMA_DECAY = 0.95  # tensorpack's moving-summary decay, which the original's logs (and compression) used.
MONITORED = ("is_discarded", "max_abs", "mean_abs")


def sparsity_score(max_abs, epsilon):
    """s of SPEC §1 from max |F| over the batch tensor: positive iff some element has |F| > ε.

    For ε >= 0 at most one of relu(F - ε) and relu(-F - ε) is non-zero per element, and
    that one is |F| - ε, so max(relu(F - ε) + relu(-F - ε)) = relu(max|F| - ε) exactly. The
    gate monitors max|F| anyway; taking s from it saves four passes over the block output.
    """
    return tf.nn.relu(max_abs - epsilon)


def gate_from_score(score):
    """The outer two ReLUs: 1 when score > 1/L, 0 when score == 0."""
    return tf.nn.relu(tf.nn.relu(score * -GATE_SLOPE + 1.0) * -GATE_SLOPE + 1.0)


def cross_replica(max_abs, mean_abs):
    """Reduce the per-replica statistics so every replica takes the same gate decision.

    The original let each GPU gate its own share of the batch; here the gate is a function
    of the global batch (the score follows from the global max |F|), so which blocks close
    does not depend on the number of replicas. Replicas hold equal shares, so the mean of
    their means is the global mean.
    """
    ctx = tf.distribute.get_replica_context()
    if ctx is None or ctx.num_replicas_in_sync == 1:
        return max_abs, mean_abs
    stats = ctx.all_gather(tf.stack([max_abs, mean_abs])[tf.newaxis], axis=0)
    return tf.reduce_max(stats[:, 0]), tf.reduce_mean(stats[:, 1])


class StrictIdentity(keras.layers.Layer):
    """Multiplies a residual branch by its strict-identity gate and keeps its monitoring EMAs.

    `epsilon` is a variable shared by every gate of a model, so one assignment (the ε
    schedule) moves all of them. The EMAs (decay 0.95, from 0, updated on training steps
    only) are non-trainable weights, so they live in checkpoints; `is_discarded` reaches 1
    only after a block has stayed closed for a few hundred steps, which is what
    compression looks for.
    """

    def __init__(self, epsilon, block, ema_decay=EMA_DECAY, **kwargs):
        super().__init__(**kwargs)
        self.epsilon = epsilon
        self.block = block  # the user-facing block name, e.g. "res2.9" or "group2/block9"
        self.ema_decay = ema_decay

    def build(self, input_shape):
        for stat in MONITORED:
            setattr(self, stat, self.add_weight(shape=(), initializer="zeros", trainable=False,
                                                name=stat, autocast=False))

    def call(self, residual, training=False):
        # float16 cannot hold L = 1e6, so the gate is computed in float32 under mixed precision.
        # The gate's derivative in F is zero except where s is within 1e-12 of 1/L, so no
        # gradient flows through the statistics: the backward pass then keeps no copy of |F|.
        f = tf.stop_gradient(tf.cast(residual, tf.float32))
        if training:  # mean |F| is monitored on training steps only
            abs_f = tf.abs(f)
            max_abs, mean_abs = tf.reduce_max(abs_f), tf.reduce_mean(abs_f)
        else:
            max_abs, mean_abs = tf.maximum(tf.reduce_max(f), -tf.reduce_min(f)), tf.zeros([])
        max_abs, mean_abs = cross_replica(max_abs, mean_abs)
        gate = gate_from_score(sparsity_score(max_abs, tf.cast(self.epsilon, tf.float32)))
        if training:
            for stat, value in zip(MONITORED, (1.0 - gate, max_abs, mean_abs)):
                ema = getattr(self, stat)
                ema.assign(ema * self.ema_decay + value * (1.0 - self.ema_decay))
        return residual * tf.cast(gate, residual.dtype)


def gates_of(model):
    """The model's gates in network order."""
    return [layer for layer in model.layers if isinstance(layer, StrictIdentity)]
