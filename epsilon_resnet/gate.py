"""The strict-identity gate of ε-ResNet (docs/original.md §1): four ReLUs that close a whole
residual block.

For a residual branch output F(x), with L = 1e6,

    s    = max over the whole batch tensor of relu(F - ε) + relu(-F - ε)   (> 0 iff some |F| > ε)
    gate = relu(relu(s·(-L) + 1)·(-L) + 1)                                 (1 if s >= 1/L, 0 if s = 0)

and the block outputs sc(x) + gate·F(x). The huge slope L turns the ReLUs into a step
function. When the gate is 0 no gradient reaches the block's weights except weight decay,
which drives them to zero, so a closed block stays closed.

At inference (training=False) the gate does not look at the batch: like batch normalization,
it uses what training stored. A block is closed at inference when its is_discarded moving
average is at least 1/2, i.e. when it was closed on the (decay-weighted) majority of the recent
training steps (`closed_at_inference`; docs/tensorflow.md, "The gate at inference", gives the
evidence for this rule). So an image's logits do not depend on the other images of its batch,
and the network at inference is exactly the plain network without those blocks. The original's
per-batch gate at inference stays available as the layer's `inference="per_batch"` (or for one
evaluation, `per_batch_inference`).

`StrictIdentity` is an ordinary, serializable Keras layer. Called on `[shortcut, F]` it
returns the whole block output (the cheaper form, used by `networks`); called on `F` alone it
returns gate·F.
"""
import contextlib

import keras
import tensorflow as tf

from epsilon_resnet.structures import GATE_EMA_DECAY, GATE_INFERENCE_MODES, GATE_METRICS

GATE_SLOPE = 1e6  # L: any s above 1/L opens the gate fully; a smaller L leaves it half-open.
CLOSED_AT_INFERENCE = 0.5  # the is_discarded average from which a block is closed at inference


def gate_is_open(max_abs, epsilon):
    """The four-ReLU gate from max |F| over the batch tensor and ε >= 0: 1.0 when some |F| − ε
    >= 1/L, 0.0 when every |F| <= ε (a fraction only in the 1e-12 band between), in float32
    because float16 cannot hold L (docs/tensorflow.md, mixed precision).

    For ε >= 0 at most one of relu(F − ε) and relu(−F − ε) is non-zero per element, and that
    one is |F| − ε; x ↦ fl(x − ε) is monotone, so s = relu(max|F| − ε) exactly, in float32 too.
    """
    score = tf.nn.relu(tf.cast(max_abs, tf.float32) - tf.cast(epsilon, tf.float32))
    return tf.nn.relu(tf.nn.relu(score * -GATE_SLOPE + 1.0) * -GATE_SLOPE + 1.0)


def moving_average_decay(ema_decay, updates):
    """tensorpack's decay min(ema_decay, (1 + t) / (10 + t)) after t updates, in float32 as TF1
    computed it: a warm-up over the first steps, then ema_decay (docs/original.md §1)."""
    t = tf.cast(updates, tf.float32)
    return tf.minimum(tf.constant(ema_decay, tf.float32), (1.0 + t) / (10.0 + t))


def cross_replica(max_abs, mean_abs):
    """Reduce the per-replica statistics so every replica takes the same gate decision (the
    "global" gate scope): the gate is a function of the global batch, so which blocks close does
    not depend on the number of replicas. Replicas hold equal shares, so the mean of their
    means is the global mean.
    """
    ctx = tf.distribute.get_replica_context()
    if ctx is None or ctx.num_replicas_in_sync == 1:
        return max_abs, mean_abs
    stats = ctx.all_gather(tf.stack([max_abs, mean_abs])[tf.newaxis], axis=0)
    return tf.reduce_max(stats[:, 0]), tf.reduce_mean(stats[:, 1])


def replica_zero(values):
    """Replica 0's float32 scalars `values`, on every replica (one all_gather), or `values`
    themselves outside a strategy with several replicas."""
    ctx = tf.distribute.get_replica_context()
    if ctx is None or ctx.num_replicas_in_sync == 1:
        return values
    return tf.unstack(ctx.all_gather(tf.stack(values)[tf.newaxis], axis=0)[0], num=len(values))


def branch_statistics(residual, training, scope="global"):
    """max |F| and (on training steps, for the monitor) mean |F|, in float32, over all replicas
    (scope "global") or over this replica's share of the batch ("per_replica").

    No gradient flows through them (the gate is a step function of F), so the backward pass
    keeps no copy of |F|. On training steps |F| is materialised once and read by both
    reductions: without a fused kernel TensorFlow cannot take the mean of |F| in fewer passes,
    and max(max F, −min F) would add one. Elsewhere max(max F, −min F) reads F twice and writes
    nothing. The max runs in F's own dtype (exact in float16); the mean is taken in float32.
    """
    f = tf.stop_gradient(residual)
    if training:
        abs_f = tf.abs(f)
        max_abs, mean_abs = tf.reduce_max(abs_f), tf.reduce_mean(tf.cast(abs_f, tf.float32))
    else:
        max_abs, mean_abs = tf.maximum(tf.reduce_max(f), -tf.reduce_min(f)), tf.zeros([])
    max_abs = tf.cast(max_abs, tf.float32)
    return cross_replica(max_abs, mean_abs) if scope == "global" else (max_abs, mean_abs)


@tf.custom_gradient
def gated_sum(shortcut, residual, gate):
    """shortcut + gate·F, with the multiply folded away when the gate is exactly 1 or 0.

    The gate is exactly 0 or 1 except in a band of s 1e-12 wide, so a branch selection
    (shortcut + F, or the shortcut alone) computes the same tensor as the product without a
    pass over F for the multiply; any other gate value, NaN included, takes the literal
    product. The gradient is written out, the same selection for gate·dy: d/d shortcut = dy,
    d/dF = dy when the gate is 1 (no pass), gate·dy otherwise; none to the gate, a step
    function of F. (TensorFlow's own gradient of a branch that skips F makes every step
    write an F-sized tensor of zeros for the branch not taken, which costs more than the
    multiply it saves.)
    """
    scale = tf.cast(gate, residual.dtype)
    out = tf.cond(gate == 1.0, lambda: shortcut + residual,
                  lambda: tf.cond(gate == 0.0, lambda: tf.identity(shortcut), lambda: shortcut + residual * scale))

    def gradient(dy):
        return dy, tf.cond(gate == 1.0, lambda: tf.identity(dy), lambda: dy * scale), None
    return out, gradient


def _ancestor_ops(tensor):
    """Names of every op `tensor` depends on (itself included), within its graph."""
    seen, stack = set(), [tensor.op]
    while stack:
        op = stack.pop()
        if op.name not in seen:
            seen.add(op.name)
            stack.extend(t.op for t in op.inputs)
    return seen


def branch_inputs(residual, shortcut):
    """The float tensors the residual branch F takes from outside itself: the tensors it
    shares with the shortcut's computation (the block input) and its variable reads.

    Walks F's graph back from F and stops at a tensor the shortcut also depends on, at a
    variable read (ReadVariableOp) and at leaves; the ops passed on the way are the branch's
    (its convolutions, batch norms and ReLUs, and a pre-activation that only the branch reads).
    """
    outside = _ancestor_ops(shortcut)
    inputs, seen, stack = [], set(), [residual.op]
    while stack:
        for t in stack.pop().inputs:
            if t.name in seen:
                continue
            seen.add(t.name)
            if t.op.name in outside or t.op.type == "ReadVariableOp" or not t.op.inputs:
                if t.dtype.is_floating:
                    inputs.append(t)
            else:
                stack.append(t.op)
    return inputs


def skip_closed_backward(residual, shortcut, gate):
    """F itself, but with the branch's whole backward pass inside a `tf.cond` on the gate.

    The tape no longer backpropagates through the branch's ops: F's gradient goes to the
    branch's inputs (`branch_inputs`) through one custom gradient, which runs the branch's
    registered gradients (tf.gradients over the same forward ops) when the gate is not 0 and
    returns zeros, the exact gradient a closed gate passes, without any kernel when it is 0.
    Weight decay reads the kernels outside the branch and batch-norm statistics update in the
    forward pass, so both are unaffected. Graph mode only (tf.function); eagerly F is returned
    unchanged and the tape differentiates the branch as before.
    """
    if tf.executing_eagerly() or not hasattr(residual, "op") or not hasattr(shortcut, "op"):
        return residual
    if not residual.op.inputs or residual.op.name in _ancestor_ops(shortcut):
        return residual  # F has no ops of its own (an input, or the shortcut's own computation)
    inputs = branch_inputs(residual, shortcut)

    @tf.custom_gradient
    def conditional_backward(f, *unused_inputs):
        def gradient(dy):
            grads = tf.cond(gate == 0.0, lambda: [tf.zeros_like(t) for t in inputs],
                            lambda: tf.gradients(residual, inputs, grad_ys=dy,
                                                 unconnected_gradients=tf.UnconnectedGradients.ZERO))
            return [None, *grads]
        return tf.identity(f), gradient
    return conditional_backward(residual, *inputs)


@keras.saving.register_keras_serializable(package="epsilon_resnet")
class StrictIdentity(keras.layers.Layer):
    """The strict-identity gate of one residual block, with its own ε and monitoring averages.

    Call it on `[shortcut, F]` (a drop-in replacement for the block's `Add`) to get
    shortcut + gate·F, or on `F` alone to get gate·F. Its weights, all non-trainable and so
    saved in checkpoints and `.keras` files: `epsilon` (float32); the float32 moving averages
    of GATE_METRICS (from 0, updated on training steps only, in TF1's form
    shadow −= (1 − d)·(shadow − x) with tensorpack's decay d, see `moving_average_decay`); and
    `updates` (int64), how many updates they have had. `is_discarded` reaches 1 only after a
    block has stayed closed for a few hundred steps, which is what the original's compression
    looked for.

    `skip_closed_backward` (train.skip_closed_backward: no backward pass through a closed
    block's branch, see `skip_closed_backward`) and `scope` (model.gate_scope, checked there)
    act on training steps only, so they are settings of the run, not of the network: they are
    not part of the saved layer config, and a loaded layer takes the defaults.

    Under a tf.distribute strategy every replica updates its own copy of the weights with the
    same values: with the gate scope "global" every replica decides on the whole batch; with
    "per_replica" each replica decides on its own share of the batch, as the original's towers
    did, and the averages are updated with replica 0's values (`replica_zero`), so the stored
    averages, hence the learning-rate restarts and the decision at inference, are replica 0's,
    as the original's were tower 0's (docs/original.md §1).
    """

    def __init__(self, epsilon=0.0, block=None, ema_decay=GATE_EMA_DECAY, inference="stored",
                 skip_closed_backward=True, scope="global", **kwargs):
        super().__init__(**kwargs)
        if float(epsilon) < 0:
            raise ValueError(f"epsilon must be >= 0, got {float(epsilon)}")
        if inference not in GATE_INFERENCE_MODES:
            raise ValueError(f"inference must be one of {GATE_INFERENCE_MODES}, got {inference!r}")
        self.inference = inference
        self.initial_epsilon = float(epsilon)
        self.block = block or self.name  # the user-facing block name, e.g. "res2.9" or "group2/block9"
        self.ema_decay = float(ema_decay)
        self.skip_closed_backward, self.scope = bool(skip_closed_backward), scope  # not saved (see above)

    def build(self, input_shape):
        def weight(name, initializer="zeros", dtype="float32"):
            return self.add_weight(shape=(), initializer=initializer, trainable=False, name=name, dtype=dtype,
                                   autocast=False)

        self.epsilon = weight("epsilon", keras.initializers.Constant(self.initial_epsilon))
        for stat in GATE_METRICS:
            setattr(self, stat, weight(stat))
        self.updates = weight("updates", dtype="int64")

    def call(self, inputs, training=False):
        shortcut, residual = inputs if isinstance(inputs, (list, tuple)) else (None, inputs)
        if not training and self.inference == "stored":
            return self.stored_gate_call(shortcut, residual)
        max_abs, mean_abs = branch_statistics(residual, training, self.scope)
        gate = gate_is_open(max_abs, self.epsilon)
        if training:
            values = (1.0 - gate, max_abs, mean_abs)
            self.update_monitors(values if self.scope == "global" else replica_zero(values))
        if shortcut is None:
            return residual * tf.cast(gate, residual.dtype)
        if training and self.skip_closed_backward:
            residual = skip_closed_backward(residual, shortcut, gate)
        return gated_sum(shortcut, residual, gate)

    def stored_gate_call(self, shortcut, residual):
        """The inference-time block output, with the gate that training stored (no batch statistic)."""
        gate = tf.where(self.is_discarded >= CLOSED_AT_INFERENCE, 0.0, 1.0)
        if shortcut is None:
            return residual * tf.cast(gate, residual.dtype)
        return gated_sum(shortcut, residual, gate)

    def closed_at_inference(self):
        """Whether this block is skipped at inference (in "stored" mode), as a Python bool."""
        return bool(float(self.is_discarded.numpy()) >= CLOSED_AT_INFERENCE)

    def update_monitors(self, values):
        decay = moving_average_decay(self.ema_decay, self.updates)
        for stat, value in zip(GATE_METRICS, values):
            average = getattr(self, stat)
            average.assign_sub((average - value) * (1.0 - decay))
        self.updates.assign_add(1)

    def get_config(self):
        epsilon = float(self.epsilon.numpy()) if self.built else self.initial_epsilon
        return {**super().get_config(), "epsilon": epsilon, "block": self.block, "ema_decay": self.ema_decay,
                "inference": self.inference}


def gates_of(model):
    """The model's gates in network order (nested functional or Sequential models included)."""
    gates = []
    for layer in model.layers:
        if isinstance(layer, StrictIdentity):
            gates.append(layer)
        elif isinstance(layer, keras.Model):
            gates.extend(gates_of(layer))
    return gates


def discarded_count(gates):
    """discarded_cnt, the original's count of closed blocks: the sum of the gates' is_discarded
    averages, a float32 tensor (0 without gates), in a training step as well as eagerly."""
    return tf.add_n([tf.convert_to_tensor(g.is_discarded) for g in gates]) if gates else tf.zeros([])


@contextlib.contextmanager
def per_batch_inference(model):
    """Within the block, the model's gates decide per batch at inference, as the original's did.

    It acts when a call is traced (eager calls and tf.function traces made inside the block),
    so a tf.function that should always use it enters it in its own body.
    """
    gates = gates_of(model)
    modes = [gate.inference for gate in gates]
    for gate in gates:
        gate.inference = "per_batch"
    try:
        yield model
    finally:
        for gate, mode in zip(gates, modes):
            gate.inference = mode


def set_epsilon(model, value):
    """Give every gate of the model the threshold ε = value (the ε schedule's one assignment)."""
    if float(value) < 0:
        raise ValueError(f"epsilon must be >= 0, got {float(value)}")
    for gate in gates_of(model):
        gate.epsilon.assign(float(value))


def epsilon_of(model):
    """The ε all gates of the model share, as a Python float; None for a model without gates."""
    values = {float(gate.epsilon.numpy()) for gate in gates_of(model)}
    if len(values) > 1:
        raise ValueError(f"the gates of {model.name} have different epsilons: {sorted(values)}")
    return values.pop() if values else None


def residual_input(layer):
    """The Keras tensor of the residual branch F that a gate of a functional model gates, so
    a probe model (`keras.Model(model.input, [residual_input(g) for g in gates])`) can look at
    max |F| per block."""
    inputs = layer.input
    return inputs[-1] if isinstance(inputs, (list, tuple)) else inputs
