"""pruning.without_closed_blocks: any functional model with gates becomes a plain model without the
closed blocks' branches, whose logits equal the gated model's inference logits."""
import keras
import numpy as np
import pytest

from epsilon_resnet import compression, gate
from epsilon_resnet.gate import StrictIdentity, gates_of
from epsilon_resnet.networks import build_resnet
from epsilon_resnet.pruning import without_closed_blocks
from epsilon_resnet.structures import cifar_structure
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
    gates_of(model)[1].is_discarded.assign(1.0)  # whatever the two epochs closed, block1 is closed now
    for plain in (namespace["plain"], without_closed_blocks(model)):
        closed = {g.name for g in gates_of(model) if g.closed_at_inference()}
        if plain is not namespace["plain"]:
            assert "block1" in closed
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
    gated = build_resnet(cifar_structure(1), 10, epsilon=0.0, pixel_mean=120.0, pixel_scale=1 / 128)
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
