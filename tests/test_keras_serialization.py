"""Keras-native saving: a gated ResNet survives `model.save("x.keras")` / `keras.models.load_model`
with its outputs, ε and gate state, and the gate wraps the residual branch of any Keras model."""
import os

import keras
import numpy as np
import tensorflow as tf

from epsilon_resnet import gate
from epsilon_resnet.gate import StrictIdentity, gates_of
from epsilon_resnet.structures import GATE_METRICS as MONITORED
from epsilon_resnet.networks import ChannelPad, PixelNormalization, build_resnet
from epsilon_resnet.structures import cifar_resnet

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")


def readme_example():
    """The README's example of StrictIdentity in a user's own model, as the README shows it."""
    with open(README, encoding="utf-8") as f:
        text = f.read()
    block = text.split("<!-- gate example: start -->", 1)[1].split("<!-- gate example: end -->", 1)[0]
    return block.split("```python", 1)[1].split("```", 1)[0]


def images(seed, count=4):
    return np.random.default_rng(seed).uniform(0, 255, (count, 32, 32, 3)).astype(np.float32)


def decisions(model, batch):
    """Each gate's decision on a batch, from its residual branch (inference mode)."""
    gates = gates_of(model)
    probe = keras.Model(model.input, [gate.residual_input(g) for g in gates])
    return [float(gate.gate_is_open(tf.reduce_max(tf.abs(f)), g.epsilon)) for g, f in zip(gates, probe(batch))]


def mixed_gates_model():
    """A gated ResNet with a side head whose common ε closes some gates and leaves others open on
    a batch, after a few training-mode passes (so the moving averages and BN statistics are not
    at their start); the gates closed on the batch are closed at inference too (is_discarded)."""
    keras.utils.set_random_seed(1)
    model = build_resnet(cifar_resnet(2), 10, epsilon=0.0, pixel_mean=125.0, pixel_scale=1 / 128)
    for seed in range(3):
        model(images(seed), training=True)
    batch = images(0)
    probe = keras.Model(model.input, [gate.residual_input(g) for g in gates_of(model)])
    for eps in sorted(float(np.abs(f).max()) for f in probe(batch)):  # the first ε that gives a mix
        gate.set_epsilon(model, eps)
        if set(decisions(model, batch)) == {0.0, 1.0}:
            for g, is_open in zip(gates_of(model), decisions(model, batch)):
                g.is_discarded.assign(1.0 - is_open)
            return model, batch
    raise AssertionError("no common ε closes some gates and leaves others open")


def test_custom_layers_are_registered():
    for cls in (StrictIdentity, PixelNormalization, ChannelPad):
        assert keras.saving.get_registered_object(f"epsilon_resnet>{cls.__name__}") is cls


def test_keras_file_round_trip_keeps_outputs_epsilon_and_gate_state(tmp_path):
    model, batch = mixed_gates_model()
    path = str(tmp_path / "gated.keras")
    model.save(path)
    loaded = keras.models.load_model(path)

    assert gate.epsilon_of(loaded) == gate.epsilon_of(model) > 0
    assert [g.block for g in gates_of(loaded)] == [g.block for g in gates_of(model)]
    for original, restored in zip(gates_of(model), gates_of(loaded)):
        assert isinstance(restored, StrictIdentity) and restored.ema_decay == original.ema_decay
        for name in MONITORED + ("updates",):
            assert getattr(restored, name).numpy() == getattr(original, name).numpy(), (original.block, name)
    assert decisions(loaded, batch) == decisions(model, batch)
    assert [g.closed_at_inference() for g in gates_of(loaded)] == [not d for d in decisions(model, batch)]
    expected, got = model(batch, training=False), loaded(batch, training=False)
    assert set(got) == {"logits", "side_logits"}
    for key in expected:
        np.testing.assert_array_equal(got[key].numpy(), expected[key].numpy())
    # The restored update counters set the same moving-average decay on the next step.
    model(images(7), training=True)
    loaded(images(7), training=True)
    assert [g.response_abs_max.numpy() for g in gates_of(loaded)] == [
        g.response_abs_max.numpy() for g in gates_of(model)]


def test_readme_example_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(readme_example(), namespace)
    assert len(gate.gates_of(namespace["model"])) == 3
    loaded = keras.models.load_model(tmp_path / "gated.keras")
    assert [g.block for g in gate.gates_of(loaded)] == ["block0", "block1", "block2"]
    assert gate.epsilon_of(loaded) == 2.0
    assert all(int(g.updates.numpy()) == 2 * 2 for g in gate.gates_of(loaded))  # 2 epochs of 2 batches of 32
    # block1 closes and goes; the pruned model, exported to ONNX, gives the gated model's logits in onnxruntime.
    assert [g.closed_at_inference() for g in gate.gates_of(loaded)] == [False, True, False]
    model, plain = namespace["model"], namespace["plain"]
    assert {"block1_conv1", "block1_conv2"} & {layer.name for layer in plain.layers} == set()
    expected = model.predict(namespace["images"], verbose=0)
    np.testing.assert_allclose(namespace["logits"], expected, rtol=0, atol=1e-5 * max(1, np.abs(expected).max()))
    assert sorted(os.listdir(tmp_path / "exported" / "onnx")) == ["float32.onnx", "uint8.onnx"]
