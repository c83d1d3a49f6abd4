"""TF1Momentum against a NumPy trace of TF1 MomentumOptimizer's rule (docs/original.md §4),
across a learning-rate restart from 0.0002 to 0.1 set from outside the compiled step."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from epsilon_resnet.optimizers import TF1Momentum

MU = 0.9
W0 = np.array([1.0, -2.0, 0.5, 3.0])
C = np.array([1.0, 0.5, 2.0, 0.1])  # loss ½·Σ C·w² + Σ B·w, gradient C·w + B
B = np.array([0.3, -0.1, 0.0, 1.0])
LRS = [0.0002, 0.0002, 0.0002, 0.1, 0.1, 0.1]  # a restart at the fourth step
RESTART = LRS.index(0.1)


def tf1_trace(lrs, nesterov):
    """Weights per step, TF1's rule: a ← μ·a + g; w ← w − lr·a (Nesterov: w ← w − lr·(g + μ·a))."""
    w, a, trace = W0.copy(), np.zeros_like(W0), []
    for lr in lrs:
        g = C * w + B
        a = MU * a + g
        w = w - lr * (g + MU * a if nesterov else a)
        trace.append(w.copy())
    return np.array(trace)


def keras_trace(optimizer, lrs, loss_scaled=False):
    """Weights after each step when a compiled step applies `optimizer` and lr is set between steps."""
    w = keras.Variable(W0.astype("float32"))
    c, b = tf.constant(C, tf.float32), tf.constant(B, tf.float32)
    optimizer.build([w])

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            loss = 0.5 * tf.reduce_sum(c * w * w) + tf.reduce_sum(b * w)
            scaled = optimizer.scale_loss(loss) if loss_scaled else loss
        optimizer.apply_gradients([(tape.gradient(scaled, w), w)])

    trace = []
    for lr in lrs:
        optimizer.learning_rate = lr  # as the learning-rate callback does at an epoch start
        step()
        trace.append(w.numpy())
    return np.array(trace)


@pytest.mark.parametrize("nesterov", [False, True])
def test_follows_the_tf1_rule_across_a_restart(nesterov):
    got = keras_trace(TF1Momentum(LRS[0], momentum=MU, nesterov=nesterov), LRS)
    np.testing.assert_allclose(got, tf1_trace(LRS, nesterov), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("nesterov", [False, True])
def test_works_inside_a_loss_scale_optimizer(nesterov):
    optimizer = keras.optimizers.LossScaleOptimizer(TF1Momentum(LRS[0], momentum=MU, nesterov=nesterov))
    got = keras_trace(optimizer, LRS, loss_scaled=True)
    np.testing.assert_allclose(got, tf1_trace(LRS, nesterov), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("nesterov", [False, True])
def test_keras_sgd_agrees_until_the_restart_only(nesterov):
    """Why the rule matters: Keras' SGD keeps lr inside its velocity, so the trace above tells them apart."""
    got = keras_trace(keras.optimizers.SGD(LRS[0], momentum=MU, nesterov=nesterov), LRS)
    expected = tf1_trace(LRS, nesterov)
    np.testing.assert_allclose(got[:RESTART], expected[:RESTART], rtol=1e-5, atol=1e-6)
    assert np.abs(got[RESTART] - expected[RESTART]).max() > 1e-2


def test_config_round_trip():
    optimizer = TF1Momentum(0.05, momentum=0.8, nesterov=True, name="momentum")
    copy = keras.optimizers.deserialize(keras.optimizers.serialize(optimizer))
    assert isinstance(copy, TF1Momentum)
    assert (copy.momentum, copy.nesterov, copy.name) == (0.8, True, "momentum")
    assert float(keras.ops.convert_to_numpy(copy.learning_rate)) == pytest.approx(0.05)


def test_accumulators_are_checkpointed(tmp_path):
    optimizer = TF1Momentum(0.1)
    keras_trace(optimizer, [0.1, 0.1])
    path = tf.train.Checkpoint(optimizer=optimizer).save(str(tmp_path / "ckpt"))
    restored = TF1Momentum(0.1)
    restored.build([keras.Variable(W0.astype("float32"))])
    tf.train.Checkpoint(optimizer=restored).restore(path).assert_existing_objects_matched()
    np.testing.assert_array_equal(restored.accumulators[0].numpy(), optimizer.accumulators[0].numpy())
    assert restored.accumulators[0].numpy().any()
