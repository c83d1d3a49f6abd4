"""The strict-identity gate against a NumPy transcription of docs/original.md §1 (the four
ReLUs, tensorpack's moving averages), and its effect in a model."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from epsilon_resnet import gate as gate_lib
from epsilon_resnet.gate import StrictIdentity, gates_of
from epsilon_resnet.networks import build_resnet, network_parts
from epsilon_resnet.structures import cifar_resnet

L = 1e6
MONITORED = ("is_discarded", "response_abs_max", "response_mean_max")  # the original's summary names


def reference_gate(f, eps, dtype=np.float64):
    """The four ReLUs literally, in NumPy: s over the whole tensor, then the two outer ReLUs."""
    relu = lambda v: np.maximum(v, dtype(0))  # noqa: E731
    f, eps, slope, one = f.astype(dtype), dtype(eps), dtype(-L), dtype(1)
    s = np.max(relu(f - eps) + relu(-f - eps))
    return relu(relu(s * slope + one) * slope + one)


def scaled_to_max(rng, max_abs, shape=(4, 8, 8, 16)):
    f = rng.uniform(-1, 1, size=shape).astype(np.float32)
    f *= max_abs / np.abs(f).max()
    f.flat[rng.integers(f.size)] = max_abs * rng.choice([-1, 1])  # the extreme, positive or negative
    return f


def test_the_monitored_names_are_the_originals():
    assert gate_lib.GATE_METRICS == MONITORED
    layer = StrictIdentity(1.0, block="res1.0")
    layer.build((None, 4))
    assert all(getattr(layer, name).path.endswith(name) for name in MONITORED)


@pytest.mark.parametrize("eps", [0.0, 0.5, 2.5, 1e3])
@pytest.mark.parametrize("offset", [-1e-3, 0.0, 1e-3])
def test_gate_matches_numpy_reference_around_epsilon(eps, offset):
    rng = np.random.default_rng(int(eps * 10) + int(offset * 1e4) + 17)
    max_abs = max(eps + offset, 0.0)
    f = scaled_to_max(rng, max_abs)
    shortcut = rng.normal(size=f.shape).astype(np.float32)
    expected_gate = reference_gate(f, np.float32(eps))
    # Just above ε (by 1e-3 ≫ 1/L) the gate is open; at or below ε it is closed.
    assert expected_gate == (1.0 if max_abs > eps else 0.0)
    for training in (False, True):  # the per-batch gate, at inference as in training
        branch = StrictIdentity(eps, inference="per_batch")(tf.constant(f), training=training).numpy()
        np.testing.assert_allclose(branch, expected_gate * f, rtol=1e-6, atol=0)
        block = StrictIdentity(eps, inference="per_batch")([tf.constant(shortcut), tf.constant(f)],
                                                           training=training).numpy()
        np.testing.assert_allclose(block, shortcut + expected_gate * f, rtol=1e-6, atol=1e-7)
    assert float(gate_lib.gate_is_open(np.abs(f).max(), eps)) == expected_gate


def test_a_gate_inside_the_narrow_band_takes_the_literal_product():
    """For 1/L − 1/L² < s < 1/L the gate is a fraction; the block must still output sc + gate·F."""
    f = np.zeros((2, 3, 3, 4), np.float32)
    f[1, 2, 0, 3] = np.float32(1e-6 - 5e-13)  # s = max |F| with ε = 0
    expected_gate = reference_gate(f, 0.0, np.float32)
    assert 0.0 < expected_gate < 1.0
    shortcut, residual = tf.ones_like(f), tf.constant(f)
    with tf.GradientTape() as tape:
        tape.watch(residual)
        out = StrictIdentity(0.0)([shortcut, residual], training=True)
    np.testing.assert_array_equal(out.numpy(), shortcut.numpy() + expected_gate * f)
    np.testing.assert_array_equal(tape.gradient(out, residual).numpy(), np.full(f.shape, expected_gate, np.float32))


def test_gate_is_zero_for_all_zero_branch_even_with_eps_zero():
    out = StrictIdentity(0.0)(tf.zeros((2, 4, 4, 3))).numpy()
    assert not out.any()


def test_gate_looks_at_the_whole_batch():
    """Per batch, one image above ε keeps the block open for every image of the batch."""
    f = np.full((3, 4, 4, 2), 0.1, np.float32)
    f[2, 1, 1, 1] = -3.0
    for training, inference in ((True, "stored"), (False, "per_batch")):
        layer = StrictIdentity(2.5, inference=inference)
        np.testing.assert_array_equal(layer(tf.constant(f), training=training).numpy(), f)
        assert not layer(tf.constant(f[:2]), training=training).numpy().any()


def numpy_moving_averages(values, decay=0.95):
    """tensorpack's moving summaries in float32: shadow −= (1 − d)·(shadow − x) with
    d = min(decay, (1 + t) / (10 + t)), t the number of earlier updates, shadow from 0."""
    shadow, one, trace = np.float32(0), np.float32(1), []
    for t, x in enumerate(values):
        d = np.minimum(np.float32(decay), (one + np.float32(t)) / (np.float32(10) + np.float32(t)))
        shadow = np.float32(shadow - (shadow - np.float32(x)) * (one - d))
        trace.append(shadow)
    return trace


def test_moving_averages_follow_tensorpack_and_stall_below_one():
    """A gate's three averages against a hand-computed float32 trace: a few open steps, then a
    long closure, over which is_discarded stalls a few ulps below 1 as the original's did."""
    rng = np.random.default_rng(3)
    layer = StrictIdentity(2.0, block="res1.0")
    steps = [(3.0, 1.5), (2.5, 0.75), (0.5, 0.25)] + [(1.0, 0.5)] * 400  # (max |F|, mean |F|) of each step
    expected = {stat: [] for stat in MONITORED}
    for max_abs, mean_abs in steps:
        # Every |F| equal to mean_abs (signs random), except one element ±max_abs. Sums of equal
        # powers-of-two fractions are exact in any order, so the mean is known exactly.
        f = (mean_abs * rng.choice([-1.0, 1.0], (4, 4, 4, 8))).astype(np.float32)
        f[0, 0, 0, :2] = [max_abs, -max_abs]
        f[0, 0, 0, 2:4] = 2 * mean_abs - max_abs, -(2 * mean_abs - max_abs)  # keeps the mean at mean_abs
        layer(tf.constant(f), training=True)
        for stat, value in zip(MONITORED, (float(max_abs <= 2.0), max_abs, np.abs(f).mean())):
            expected[stat].append(value)
    for stat in MONITORED:
        assert float(getattr(layer, stat).numpy()) == numpy_moving_averages(expected[stat])[-1], stat
    assert int(layer.updates.numpy()) == len(steps)
    stalled = numpy_moving_averages(expected["is_discarded"])[-1]
    assert 0.9999990 < stalled < 1.0  # the float32 stall of docs/original.md §5


def test_moving_averages_warm_up_step_by_step():
    layer = StrictIdentity(0.5)
    values = [0.8, 0.1, 0.3, 0.9, 0.2]
    for t, max_abs in enumerate(values):
        f = np.zeros((1, 2, 2, 1), np.float32)
        f[0, 0, 0, 0] = max_abs
        layer(tf.constant(f), training=True)
        assert float(layer.response_abs_max.numpy()) == numpy_moving_averages(values[:t + 1])[-1]


def test_moving_averages_update_only_in_training():
    layer = StrictIdentity(2.5)
    layer(tf.constant(scaled_to_max(np.random.default_rng(0), 1.0)), training=False)
    assert all(float(getattr(layer, stat).numpy()) == 0.0 for stat in MONITORED)
    assert int(layer.updates.numpy()) == 0


@pytest.mark.parametrize("dtype", ["mixed_float16", "float16"])
def test_gate_under_float16(dtype):
    """L = 1e6 overflows float16: the gate must still open and close correctly, its weights and
    averages stay float32, and the block output keeps the compute dtype."""
    f = np.array([[0.5, -3.0, 0.25, 0.25]], np.float16)
    shortcut = np.ones_like(f)
    for eps, expected_gate in ((2.5, 1.0), (3.5, 0.0)):
        layer = StrictIdentity(eps, dtype=dtype)
        out = layer([tf.constant(shortcut), tf.constant(f)], training=True)
        assert out.dtype == tf.float16
        np.testing.assert_array_equal(out.numpy(), shortcut + expected_gate * f)
        assert all(w.dtype in ("float32", "int64") for w in layer.weights)
        np.testing.assert_allclose(layer.response_abs_max.numpy(), 0.9 * 3.0, rtol=1e-6)  # first update: d = 0.1
        np.testing.assert_allclose(layer.response_mean_max.numpy(), 0.9 * 1.0, rtol=1e-6)
        assert float(layer.is_discarded.numpy()) == pytest.approx(0.9 * (1 - expected_gate))


def one_train_step(model, images):
    with tf.GradientTape():
        model(images, training=True)


def random_images(seed, count=4):
    return np.random.default_rng(seed).uniform(0, 255, (count, 32, 32, 3)).astype(np.float32)


def test_epsilon_zero_discards_nothing():
    model = build_resnet(cifar_resnet(2), 10, epsilon=0.0)
    one_train_step(model, random_images(0))
    assert all(float(g.is_discarded.numpy()) == 0.0 for g in gates_of(model))


def test_huge_epsilon_discards_every_block_and_leaves_the_shortcut_path():
    n = 2
    model = build_resnet(cifar_resnet(n), 10, epsilon=1e3, pixel_mean=127.0, pixel_scale=1 / 128)
    images = random_images(1)
    one_train_step(model, images)
    # The first update of an average is 0.9·x (decay (1 + 0)/(10 + 0)): here x = 1 for every block.
    assert [float(g.is_discarded.numpy()) for g in gates_of(model)] == [np.float32(0.9)] * (3 * n)

    # With every block closed the network is the stem, the three stage shortcuts and the head.
    shortcuts = build_resnet(cifar_resnet(n).compressed(cifar_resnet(n).block_names()), 10)
    source, target = network_parts(model), network_parts(shortcuts)
    assert [target[(stage, 0)] for stage in range(3)] == [[], [], []]  # CIFAR shortcuts have no weights
    for part in ("stem", "head"):
        for src, dst in zip(source[part], target[part], strict=True):
            dst.set_weights(src.get_weights())
    np.testing.assert_allclose(model(images, training=False)["logits"].numpy(),
                               shortcuts(images, training=False)["logits"].numpy(), rtol=1e-5, atol=1e-5)


def test_each_gate_owns_its_epsilon_and_set_epsilon_moves_them_all():
    model = build_resnet(cifar_resnet(1), 10, epsilon=0.0)
    gates = gates_of(model)
    variables = [g.epsilon for g in gates]
    assert len({id(v) for v in variables}) == len(gates) == 3
    assert all(not v.trainable and v.dtype == "float32" and any(w is v for w in g.weights)
               for g, v in zip(gates, variables))
    assert not hasattr(model, "epsilon")
    assert gate_lib.epsilon_of(model) == 0.0
    gate_lib.set_epsilon(model, 1e3)
    assert [float(v.numpy()) for v in variables] == [1e3] * 3 and gate_lib.epsilon_of(model) == 1e3
    one_train_step(model, random_images(2, 2))
    assert all(float(g.is_discarded.numpy()) > 0 for g in gates)
    gates[1].epsilon.assign(2.0)
    with pytest.raises(ValueError, match="different epsilons"):
        gate_lib.epsilon_of(model)
    with pytest.raises(ValueError, match=">= 0"):
        gate_lib.set_epsilon(model, -1.0)
    assert gate_lib.epsilon_of(build_resnet(cifar_resnet(1, gated=False), 10)) is None


@pytest.mark.parametrize("eps, expected", [(0.5, 1.0), (2.5, 0.0)])
def test_gradient_of_the_block_is_the_gate_on_the_branch_and_one_on_the_shortcut(eps, expected):
    """d(sc + gate·F)/dF = gate, d/d sc = 1: the step-function gate passes no gradient back to F
    through its statistics, in graph mode (as in training) and eagerly."""
    f = tf.constant(scaled_to_max(np.random.default_rng(1), 1.0))
    shortcut = tf.constant(np.random.default_rng(2).normal(size=f.shape).astype(np.float32))
    layer = StrictIdentity(eps)

    def gradients(f, shortcut):
        with tf.GradientTape() as tape:
            tape.watch([f, shortcut])
            out = layer([shortcut, f], training=True)
        return tape.gradient(out, [f, shortcut], unconnected_gradients="zero")

    for run in (gradients, tf.function(gradients)):
        d_f, d_shortcut = run(f, shortcut)
        np.testing.assert_array_equal(d_f.numpy(), np.full(f.shape, expected, np.float32))
        np.testing.assert_array_equal(d_shortcut.numpy(), np.ones(f.shape, np.float32))


def test_residual_input_is_the_branch_the_gate_decides_on():
    keras.utils.set_random_seed(4)
    model = build_resnet(cifar_resnet(2), 10, epsilon=0.0, gate_inference="per_batch", pixel_mean=127.0,
                         pixel_scale=1 / 128)
    gates = gates_of(model)
    assert gate_lib.residual_input(gates[0]) is model.get_layer("res1.0_conv2").output
    probe = keras.Model(model.input, [gate_lib.residual_input(g) for g in gates])
    blocks = keras.Model(model.input, [(g.input[0], g.output) for g in gates])
    images = random_images(4, 2)
    seen = set()
    # ε at each block's max |F| in turn: closing a block changes what later blocks see, so
    # every block's decision and output are checked against its F as the network computed it.
    for eps in sorted(float(np.abs(f).max()) for f in probe(images)):
        gate_lib.set_epsilon(model, eps)
        for f, (shortcut, out) in zip(probe(images), blocks(images)):
            decision = reference_gate(f.numpy(), eps)
            np.testing.assert_allclose(out.numpy(), shortcut.numpy() + decision * f.numpy(), rtol=1e-6, atol=1e-6)
            seen.add(decision)
    assert seen == {0.0, 1.0}


def test_layer_config_round_trip():
    layer = StrictIdentity(1.5, block="group2/block9", ema_decay=0.9, inference="per_batch", name="group2_block9_gate")
    layer.build((None, 4))
    layer.epsilon.assign(2.5)  # the config carries the current ε
    clone = StrictIdentity.from_config(layer.get_config())
    clone.build((None, 4))
    assert (clone.block, clone.ema_decay, clone.inference, clone.name, float(clone.epsilon.numpy())) == (
        "group2/block9", 0.9, "per_batch", "group2_block9_gate", 2.5)
    with pytest.raises(ValueError, match=">= 0"):
        StrictIdentity(-0.5)
    with pytest.raises(ValueError, match="inference must be one of"):
        StrictIdentity(1.0, inference="batch")


@pytest.mark.parametrize("family", ["cifar", "imagenet"])
def test_inference_logits_of_an_image_do_not_depend_on_its_batch(family):
    """Open and closed gates (is_discarded 0 and 1), ε in the range of the branches' max|F| so that
    per batch the decisions would move: an image scored alone or in a batch of 128 gets the same
    logits at inference, up to the order of float32 sums."""
    from epsilon_resnet.compression import logits_equal
    from epsilon_resnet.structures import imagenet_resnet

    keras.utils.set_random_seed(5)
    architecture = cifar_resnet(1) if family == "cifar" else imagenet_resnet(18, image_shape=(32, 32, 3))
    model = build_resnet(architecture, 10, epsilon=0.5, pixel_mean=120.0, pixel_scale=1 / 64)
    gates = gates_of(model)
    for k, g in enumerate(gates):
        g.is_discarded.assign(float(k % 2))
    images = random_images(9, 128)
    batch = model(images, training=False)["logits"].numpy()
    largest = np.abs(batch).max()
    for i in (0, 77):
        alone = model(images[i:i + 1], training=False)["logits"].numpy()
        assert logits_equal(np.abs(alone - batch[i:i + 1]).max(), largest)
    assert [g.closed_at_inference() for g in gates] == [bool(k % 2) for k in range(len(gates))]
