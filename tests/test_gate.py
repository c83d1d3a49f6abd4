"""The strict-identity gate against a NumPy transcription of SPEC §1, and its effect in a model."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from epsilon_resnet.gate import StrictIdentity, gates_of
from epsilon_resnet.networks import Structure, build_resnet, cifar_structure

L = 1e6


def reference_gate(f, eps):
    """SPEC §1 literally, in float64."""
    relu = lambda v: np.maximum(v, 0.0)  # noqa: E731
    f = f.astype(np.float64)
    s = np.max(relu(f - eps) + relu(-f - eps))
    return relu(relu(s * -L + 1.0) * -L + 1.0)


def apply_gate(f, eps, training=False, ema_decay=0.95):
    layer = StrictIdentity(keras.Variable(eps, trainable=False), block="res1.0", ema_decay=ema_decay)
    out = layer(tf.constant(f), training=training)
    return layer, out.numpy()


def scaled_to_max(rng, max_abs, shape=(4, 8, 8, 16)):
    f = rng.uniform(-1, 1, size=shape).astype(np.float32)
    f *= max_abs / np.abs(f).max()
    f.flat[rng.integers(f.size)] = max_abs * rng.choice([-1, 1])  # the extreme, positive or negative
    return f


@pytest.mark.parametrize("eps", [0.0, 0.5, 2.5, 1e3])
@pytest.mark.parametrize("offset", [-1e-3, 0.0, 1e-3])
def test_gate_matches_numpy_reference_around_epsilon(eps, offset):
    rng = np.random.default_rng(int(eps * 10) + int(offset * 1e4) + 17)
    max_abs = max(eps + offset, 0.0)
    f = scaled_to_max(rng, max_abs)
    expected_gate = reference_gate(f, np.float32(eps))
    _, out = apply_gate(f, eps)
    # Just above ε (by 1e-3 ≫ 1/L) the gate is open; at or below ε it is closed.
    assert expected_gate == (1.0 if max_abs > eps else 0.0)
    np.testing.assert_allclose(out, expected_gate * f, rtol=1e-6, atol=0)


def test_gate_is_zero_for_all_zero_branch_even_with_eps_zero():
    _, out = apply_gate(np.zeros((2, 4, 4, 3), np.float32), 0.0)
    assert not out.any()


def test_gate_looks_at_the_whole_batch():
    """One image above ε keeps the block open for every image of the batch."""
    f = np.full((3, 4, 4, 2), 0.1, np.float32)
    f[2, 1, 1, 1] = -3.0
    _, out = apply_gate(f, 2.5)
    np.testing.assert_array_equal(out, f)
    _, out = apply_gate(f[:2], 2.5)
    assert not out.any()


def test_moving_averages_update_only_in_training():
    f = scaled_to_max(np.random.default_rng(0), 1.0)
    layer, _ = apply_gate(f, 2.5, training=False)
    assert float(layer.is_discarded.numpy()) == 0.0
    layer, _ = apply_gate(f, 2.5, training=True)
    np.testing.assert_allclose(layer.is_discarded.numpy(), 0.05, rtol=1e-6)
    np.testing.assert_allclose(layer.max_abs.numpy(), 0.05 * 1.0, rtol=1e-6)
    np.testing.assert_allclose(layer.mean_abs.numpy(), 0.05 * np.abs(f).mean(), rtol=1e-5)


def test_gate_under_float16_input():
    """L = 1e6 overflows float16: the gate must still open and close correctly."""
    f = np.array([[0.5, -3.0]], np.float16)
    _, out = apply_gate(f, 2.5)
    np.testing.assert_array_equal(out, f)
    _, out = apply_gate(f, 3.5)
    assert not out.any()


def one_train_step(model, images):
    with tf.GradientTape():
        model(images, training=True)


def test_epsilon_zero_discards_nothing():
    model = build_resnet(cifar_structure(2), 10, epsilon=0.0)
    one_train_step(model, np.random.default_rng(0).uniform(0, 255, (4, 32, 32, 3)).astype(np.float32))
    assert all(float(g.is_discarded.numpy()) == 0.0 for g in gates_of(model))


def test_huge_epsilon_discards_every_block_and_leaves_the_shortcut_path():
    n = 2
    model = build_resnet(cifar_structure(n), 10, epsilon=1e3)
    for gate in gates_of(model):
        gate.ema_decay = 0.0  # the average then equals the last step's value
    images = np.random.default_rng(1).uniform(0, 255, (4, 32, 32, 3)).astype(np.float32)
    one_train_step(model, images)
    assert sum(float(g.is_discarded.numpy()) for g in gates_of(model)) == 3 * n

    # With every block closed the network is conv0, the three stage shortcuts and the head.
    shortcuts = build_resnet(Structure("cifar", (1, 1, 1), (False, False, False)), 10, gated=False,
                             side_output=False)
    for layer in shortcuts.layers:
        if layer.weights:
            layer.set_weights(model.get_layer(layer.name).get_weights())
    np.testing.assert_allclose(model(images, training=False)["logits"].numpy(),
                               shortcuts(images, training=False)["logits"].numpy(), rtol=1e-5, atol=1e-5)


def test_one_shared_epsilon_variable_moves_every_gate():
    model = build_resnet(cifar_structure(1), 10, epsilon=0.0)
    assert all(g.epsilon is model.epsilon for g in gates_of(model))
    assert sum(w is model.epsilon for w in model.weights) == 1
    model.epsilon.assign(1e3)
    images = np.random.default_rng(2).uniform(0, 255, (2, 32, 32, 3)).astype(np.float32)
    one_train_step(model, images)
    assert all(float(g.is_discarded.numpy()) > 0 for g in gates_of(model))


@pytest.mark.parametrize("eps, expected", [(0.5, 1.0), (2.5, 0.0)])
def test_gradient_of_the_gated_branch_is_the_gate(eps, expected):
    """d(gate·F)/dF = gate: the step-function gate itself passes no gradient back to F."""
    f = tf.constant(scaled_to_max(np.random.default_rng(1), 1.0))
    layer = StrictIdentity(keras.Variable(eps, trainable=False), block="res1.0")
    with tf.GradientTape() as tape:
        tape.watch(f)
        out = layer(f, training=True)
    np.testing.assert_array_equal(tape.gradient(out, f).numpy(), np.full(f.shape, expected, np.float32))
