"""pruning.without_closed_blocks: any functional model with gates becomes a plain model without the
closed blocks' branches, whose logits equal the gated model's inference logits."""
import dataclasses

import keras
import numpy as np
import pytest

from epsilon_resnet import compression, gate
from epsilon_resnet.gate import StrictIdentity, gates_of
from epsilon_resnet.networks import build_resnet, network_parts
from epsilon_resnet.pruning import without_closed_blocks
from epsilon_resnet.structures import cifar_resnet, imagenet_resnet
from test_keras_serialization import readme_example


def inputs(shape, seed=0, count=7):
    return np.random.default_rng(seed).normal(size=(count, *shape)).astype(np.float32)


def assert_equal_at_inference(gated, plain, x):
    expected = gated(x, training=False)
    expected = expected["logits"] if isinstance(expected, dict) else expected
    got = plain(x, training=False)
    got = got["logits"] if isinstance(got, dict) else got
    difference = float(np.abs(np.asarray(got) - np.asarray(expected)).max())
    assert compression.logits_equal(difference, float(np.abs(np.asarray(expected)).max())), difference


def test_the_readme_example_loses_its_closed_blocks(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(readme_example(), namespace)
    model = namespace["model"]
    closed_then = {g.name for g in gates_of(model) if g.closed_at_inference()}  # when the README made its plain
    gates_of(model)[1].is_discarded.assign(1.0)  # whatever the two epochs closed, block1 is closed now
    closed_now = {g.name for g in gates_of(model) if g.closed_at_inference()}
    assert "block1" in closed_now
    for plain, closed in ((namespace["plain"], closed_then), (without_closed_blocks(model), closed_now)):
        names = {layer.name for layer in plain.layers}
        assert not gates_of(plain)
        assert all((f"{g.name}_conv1" in names) == (g.name not in closed) for g in gates_of(model))
    assert plain.count_params() < model.count_params()
    for count in (1, 128):
        assert_equal_at_inference(model, plain, inputs((16, 16, 8), count=count))


def downsampling_model():
    """Two blocks, the first downsampling (a strided 1×1 shortcut convolution), each with a gate."""
    images = keras.Input((16, 16, 4))
    x = keras.layers.Conv2D(8, 3, padding="same", name="stem")(images)
    shortcut = keras.layers.Conv2D(16, 1, strides=2, name="down_shortcut")(x)
    f = keras.layers.Conv2D(16, 3, strides=2, padding="same", activation="relu", name="down_conv1")(x)
    f = keras.layers.Conv2D(16, 3, padding="same", name="down_conv2")(f)
    x = StrictIdentity(0.0, name="down")([shortcut, f])
    f = keras.layers.Conv2D(16, 3, padding="same", name="same_conv")(x)
    x = StrictIdentity(0.0, name="same")([x, f])
    outputs = keras.layers.Dense(5, name="linear")(keras.layers.GlobalAveragePooling2D()(x))
    return keras.Model(images, outputs)


@pytest.mark.parametrize("closed", [["down"], ["down", "same"], []])
def test_a_closed_downsampling_block_keeps_its_shortcut(closed):
    model = downsampling_model()
    for g in gates_of(model):
        g.is_discarded.assign(1.0 if g.name in closed else 0.0)
    plain = without_closed_blocks(model)
    names = {layer.name for layer in plain.layers}
    assert {"stem", "down_shortcut", "linear"} <= names and not gates_of(plain)
    assert ("down_conv1" in names) == ("down" not in closed) and ("same_conv" in names) == ("same" not in closed)
    assert plain.count_params() < model.count_params() or not closed
    for count in (1, 7):
        assert_equal_at_inference(model, plain, inputs((16, 16, 4), seed=count, count=count))


def test_this_packages_resnet_gives_the_compressed_networks_logits():
    gated = build_resnet(cifar_resnet(1), 10, epsilon=0.0, pixel_mean=120.0, pixel_scale=1 / 128)
    gates_of(gated)[1].is_discarded.assign(1.0)  # res2.0, a downsampling block
    plain = without_closed_blocks(gated)
    assert set(plain.output) == {"logits", "side_logits"} and "res2.0_conv1" not in {l.name for l in plain.layers}
    assert_equal_at_inference(gated, plain, inputs((32, 32, 3)) * 60 + 120)


def test_gates_on_f_alone_and_nested_models_are_refused():
    x = keras.Input((4,))
    alone = keras.Model(x, StrictIdentity(0.0, name="g")(keras.layers.Dense(4)(x)))
    gate.gates_of(alone)[0].is_discarded.assign(1.0)
    with pytest.raises(ValueError, match="called on F alone"):
        without_closed_blocks(alone)
    outer = keras.Input((4,))
    with pytest.raises(ValueError, match="nested model"):
        without_closed_blocks(keras.Model(outer, alone(outer)))


def weights_by_layer(model, leave_out=()):
    return {layer.name: [w.numpy() for w in layer.weights] for layer in model.layers
            if layer.weights and layer.name not in leave_out}


@pytest.mark.parametrize("architecture, closed", [
    (cifar_resnet(3), ["res1.1", "res2.0", "res3.1"]),
    (dataclasses.replace(imagenet_resnet(18, image_shape=(32, 32, 3)), stage_units=(1, 1, 3, 1)),
     ["group1/block0", "group2/block1", "group3/block0"]),
], ids=["cifar", "imagenet"])
def test_the_scripts_and_the_own_model_path_remove_the_same_blocks(architecture, closed):
    """compression.compress_model (compressModel.py) and pruning.without_closed_blocks (the README's
    path for any model) on one of this package's ResNets: the same layers with the same weights
    (the side head, which compression drops, aside) and the same logits."""
    gated = build_resnet(architecture, 10, epsilon=0.0, pixel_mean=120.0, pixel_scale=1 / 128)
    rng = np.random.default_rng(3)
    for layer in gated.layers:  # batch-norm statistics away from 0 and 1, so a misplaced one shows
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.moving_variance.assign(rng.uniform(0.5, 2.0, layer.moving_variance.shape).astype(np.float32))
    for g in gates_of(gated):
        g.is_discarded.assign(1.0 if g.block in closed else 0.0)
    discarded, _ = compression.decide_at_inference(gated)
    compressed, kept = compression.compress_model(gated, architecture, discarded)
    plain = without_closed_blocks(gated)
    assert kept.removed_blocks == tuple(closed)
    side = [layer.name for layer in network_parts(gated)["side"]]
    expected, got = weights_by_layer(plain, side), weights_by_layer(compressed)
    assert sorted(got) == sorted(expected)
    for name, values in expected.items():
        for value, other in zip(values, got[name], strict=True):
            np.testing.assert_array_equal(other, value)
    x = inputs(architecture.image_shape) * 60 + 120
    np.testing.assert_allclose(compressed(x, training=False)["logits"], plain(x, training=False)["logits"],
                               rtol=1e-5, atol=1e-5)
    assert_equal_at_inference(gated, compressed, x)
