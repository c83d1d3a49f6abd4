"""The CIFAR pre-activation ResNet (docs/original.md §2-3): its architecture, names, exact
parameter counts, the parts map, building from a config."""
import dataclasses
import json
import types

import keras
import numpy as np
import pytest

from epsilon_resnet import gate
from epsilon_resnet.config import ModelConfig
from epsilon_resnet.errors import ConfigError
from epsilon_resnet.gate import gates_of
from epsilon_resnet.networks import build_from_config, build_resnet, network_parts
from epsilon_resnet.structures import Architecture, Stem, architecture_for, cifar_resnet, imagenet_resnet


def expected_trainable_params(n, num_classes, side, k=1):
    """Count the CIFAR network of docs/original.md §3 by hand: 3×3 convs without bias, BN γ/β, dense with bias;
    its stage widths times k (the stem keeps 16 channels; the shortcuts have no parameters)."""
    count = 3 * 3 * 3 * 16 + 2 * 16  # conv0 + its BN
    in_width = 16
    for stage, width in enumerate((16 * k, 32 * k, 64 * k)):
        for block in range(n):
            preact = 0 if (stage, block) == (0, 0) else 2 * in_width  # res1.0 has no pre-activation
            count += preact + 9 * in_width * width + 2 * width + 9 * width * width
            in_width = width
    count += 2 * 64 * k + 64 * k * num_classes + num_classes  # bnlast + linear
    if side:
        count += 2 * 32 * k + 32 * k * num_classes + num_classes
    return count


def trainable(model):
    return sum(int(np.prod(w.shape)) for w in model.trainable_weights)


@pytest.mark.parametrize("n, num_classes, side", [(1, 10, True), (2, 100, False), (18, 10, True)])
def test_parameter_count_matches_the_architecture(n, num_classes, side):
    model = build_resnet(cifar_resnet(n, side_output=side), num_classes)
    assert trainable(model) == expected_trainable_params(n, num_classes, side)
    plain = build_resnet(cifar_resnet(n, gated=False, side_output=side), num_classes)
    assert trainable(plain) == trainable(model)  # the gate adds no trainable weight


def test_depth_block_names_and_gates():
    n = 3
    model = build_resnet(cifar_resnet(n), 10)
    convs = [l for l in model.layers if isinstance(l, keras.layers.Conv2D)]
    dense = [l for l in model.layers if isinstance(l, keras.layers.Dense) and l.name == "linear"]
    assert len(convs) + len(dense) == 6 * n + 2
    assert [g.block for g in gates_of(model)] == [f"res{s}.{k}" for s in (1, 2, 3) for k in range(n)]
    assert cifar_resnet(n).block_names() == [g.block for g in gates_of(model)]
    assert "res1.0_preact_bn" not in [l.name for l in model.layers]  # conv0's BN-ReLU serves it
    assert model.get_layer("res2.0_conv1").strides == (2, 2)


@pytest.mark.parametrize("gated, merge", [(True, "gate"), (False, "add")])
def test_side_head_taps_the_middle_block(gated, merge):
    assert cifar_resnet(18).side_head == (1, 9)  # res2.9: n // 2 = 9
    assert cifar_resnet(5).side_head == (1, 2)
    model = build_resnet(cifar_resnet(4, gated=gated), 10)
    assert model.get_layer("side_bn").input is model.get_layer(f"res2.2_{merge}").output


def test_outputs_and_shapes():
    model = build_resnet(cifar_resnet(1), 100)
    out = model(np.zeros((3, 32, 32, 3), np.float32))
    assert out["logits"].shape == (3, 100) and out["side_logits"].shape == (3, 100)
    assert set(build_resnet(cifar_resnet(1, side_output=False), 10).output) == {"logits"}


def test_downsampling_shortcut_is_pool_and_zero_pad():
    """With the residual branch zeroed, res2.0 outputs its shortcut: 2×2 average pool, channels padded 8+8."""
    model = build_resnet(cifar_resnet(1, gated=False, side_output=False), 10, pixel_scale=1 / 128)
    conv2 = model.get_layer("res2.0_conv2")
    conv2.kernel.assign(np.zeros(conv2.kernel.shape, np.float32))
    probe = keras.Model(model.input, [model.get_layer("res1.0_add").output, model.get_layer("res2.0_add").output])
    x, y = (t.numpy() for t in probe(np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype(np.float32)))
    pooled = x.reshape(2, 16, 2, 16, 2, 16).mean(axis=(2, 4))
    np.testing.assert_allclose(y[..., 8:24], pooled, rtol=1e-5, atol=1e-5)
    assert not y[..., :8].any() and not y[..., 24:].any()


def removed(architecture, *blocks):
    return dataclasses.replace(architecture, removed_blocks=blocks)


@pytest.mark.parametrize("kwargs, fragment", [
    (dict(stage_units=(2, 2)), r"stage_widths \[16, 32, 64\] and stage_units \[2, 2\] must name the same"),
    (dict(stage_units=(2, 0, 2)), r"stage_units\[1\] must be a whole number >= 1, got 0"),
    (dict(stage_widths=(16, 8, 64)), r"each stage must keep or widen its input by an even number of channels, "
                                     r"got \[16, 16, 8, 64\]"),
    (dict(shortcut="projection"), "shortcut must be one of"),
    (dict(removed_blocks=("res4.0",)), r"removed_blocks \['res4.0'\] are not blocks of this network"),
    (dict(side_head=(1, 2)), r"side_head \(1, 2\) is not the \[stage, block\] of a unit"),
    (dict(side_head=(1, 1), removed_blocks=("res2.1",)), r"side_head \(1, 1\) is not"),
])
def test_bad_architectures_are_refused_with_the_values(kwargs, fragment):
    with pytest.raises(ValueError, match=fragment):
        dataclasses.replace(cifar_resnet(2), **kwargs)


def test_pruned_architecture_names_and_counts():
    architecture = removed(cifar_resnet(3, side_output=False), "res2.0", "res2.1", "res2.2", "res3.0", "res3.2")
    assert architecture.gated_blocks == 4
    assert architecture.block_names() == ["res1.0", "res1.1", "res1.2", "res3.1"]
    assert architecture.units() == [(0, 0), (0, 1), (0, 2), (1, 0), (2, 0), (2, 1)]


@pytest.mark.parametrize("architecture", [cifar_resnet(3), removed(cifar_resnet(2, gated=False), "res2.0"),
                                          imagenet_resnet(101, side_output=False, image_shape=(64, 64, 3))])
def test_an_architecture_is_data_that_reads_back(architecture):
    raw = architecture.to_config()
    assert json.loads(json.dumps(raw)) == raw  # plain lists, dicts and scalars
    assert Architecture.from_config(raw) == architecture
    with pytest.raises(ValueError, match=r"unknown \['depth'\], missing \['stage_units'\]"):
        Architecture.from_config({**{k: v for k, v in raw.items() if k != "stage_units"}, "depth": 3})
    with pytest.raises(ValueError, match=r"stem keys: unknown \[\], missing \['kernel'\]"):
        Architecture.from_config({**raw, "stem": {"width": 16}})


def test_the_presets_are_the_original_families():
    assert cifar_resnet(5) == Architecture(Stem(16, 3), (16, 32, 64), (5, 5, 5), shortcut="pool_pad",
                                           side_head=(1, 2), naming="res", image_shape=(32, 32, 3))
    assert imagenet_resnet(50) == Architecture(
        Stem(64, 7, stride=2, max_pool=True, normalization="per_channel"), (64, 128, 256, 512), (3, 4, 6, 3),
        bottleneck=True, shortcut="conv", side_head=(2, 0), naming="group", image_shape=(224, 224, 3))


# The layer types of each part, in build order, written out from docs/original.md §3.
BASIC_BLOCK = ["FusedBatchNormalization", "Conv2D", "FusedBatchNormalization", "Conv2D"]  # preact, conv1 + BN, conv2


def layer_types(layers):
    return [type(layer).__name__ for layer in layers]


def test_network_parts_follow_the_architecture():
    architecture = removed(cifar_resnet(3, side_output=False), "res2.0", "res2.1", "res2.2", "res3.2")
    model = build_resnet(architecture, 10)
    parts = network_parts(model)
    units = [(0, 0), (0, 1), (0, 2), (1, 0), (2, 0), (2, 1)]
    assert sorted(key for key in parts if isinstance(key, tuple)) == units
    assert layer_types(parts["stem"]) == ["PixelNormalization", "Conv2D", "FusedBatchNormalization"]
    assert layer_types(parts["head"]) == ["FusedBatchNormalization", "Dense"]
    assert layer_types(parts[(0, 0)]) == BASIC_BLOCK[1:] + ["StrictIdentity"]  # res1.0: no pre-activation
    for unit in ((0, 1), (0, 2), (2, 0), (2, 1)):
        assert layer_types(parts[unit]) == BASIC_BLOCK + ["StrictIdentity"]
    assert parts[(1, 0)] == []  # a discarded res2.0: average pool and channel padding only
    # Every layer with weights belongs to exactly one part; the gates in network order.
    listed = [layer for layers in parts.values() for layer in layers]
    assert sorted(id(layer) for layer in listed) == sorted(id(layer) for layer in model.layers if layer.weights)
    assert [layers[-1] for unit, layers in parts.items() if unit in units and layers] == gates_of(model)


def test_network_parts_copy_a_block_into_another_position():
    """Unit k of stage s of one network into unit k' of a pruned one, by the parts map alone."""
    full = build_resnet(cifar_resnet(3, gated=False, side_output=False), 10)
    pruned = build_resnet(removed(cifar_resnet(3, gated=False, side_output=False), "res2.2"), 10)
    source, target = network_parts(full), network_parts(pruned)
    for src, dst in zip(source[(1, 2)], target[(1, 1)], strict=True):
        dst.set_weights(src.get_weights())
    np.testing.assert_array_equal(pruned.get_layer("res2.1_conv2").kernel.numpy(),
                                  full.get_layer("res2.2_conv2").kernel.numpy())
    with pytest.raises(ValueError, match="not built by build_resnet"):
        network_parts(keras.Sequential([keras.layers.Dense(2)]))


def test_imagenet_network_parts_with_a_discarded_first_block():
    architecture = dataclasses.replace(imagenet_resnet(50, side_output=False, image_shape=(64, 64, 3)),
                                       stage_units=(1, 2, 1, 1), removed_blocks=("group1/block0",))
    parts = network_parts(build_resnet(architecture, 10))
    assert layer_types(parts["stem"]) == ["PixelNormalization", "Conv2D", "FusedBatchNormalization"]
    # group0/block0 widens 64 -> 256 through a convshortcut; a discarded group1/block0 keeps its
    # both_preact BN and convshortcut; the others are BN-conv1-BN-conv2-BN-conv3.
    bottleneck = ["FusedBatchNormalization", "Conv2D"] * 3
    assert layer_types(parts[(0, 0)]) == ["Conv2D"] + bottleneck[1:] + ["StrictIdentity"]
    assert layer_types(parts[(1, 0)]) == ["FusedBatchNormalization", "Conv2D"]
    assert layer_types(parts[(1, 1)]) == bottleneck + ["StrictIdentity"]
    assert layer_types(parts[(2, 0)]) == ["FusedBatchNormalization", "Conv2D"] + bottleneck[1:] + ["StrictIdentity"]


def test_normalisation_is_built_in():
    """pixel_mean and pixel_scale go into the model: it takes raw pixels and computes (x − mean)·scale."""
    mean = np.random.default_rng(5).uniform(100, 150, (32, 32, 3)).astype(np.float32)
    model = build_resnet(cifar_resnet(1), 10, pixel_mean=mean, pixel_scale=1 / 128)
    images = np.random.default_rng(6).uniform(0, 255, (2, 32, 32, 3)).astype(np.float32)
    normalised = keras.Model(model.input, model.get_layer("preprocess").output)(images).numpy()
    np.testing.assert_allclose(normalised, (images - mean) / 128, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="does not broadcast"):
        build_resnet(cifar_resnet(1), 10, pixel_mean=np.zeros((16, 16, 3)))


def test_build_from_config():
    source = types.SimpleNamespace(family="cifar", num_classes=100, image_shape=(32, 32, 3),
                                   pixel_mean=np.full((32, 32, 3), 120.0, np.float32), pixel_scale=np.float32(0.5))
    config = ModelConfig(n=2, epsilon=1.5, gated=True, side_output=False, gate_ema_decay=0.9)
    model = build_from_config(config, source)
    assert len(gates_of(model)) == 6 and gate.epsilon_of(model) == 1.5
    assert {g.ema_decay for g in gates_of(model)} == {0.9}
    assert set(model.output) == {"logits"} and model.output["logits"].shape[-1] == 100
    preprocess = model.get_layer("preprocess")
    assert float(preprocess.mean.numpy()[3, 4, 1]) == 120.0 and float(preprocess.scale.numpy()) == 0.5
    plain = build_from_config(ModelConfig(n=1, gated=False), source)
    assert not gates_of(plain) and "side_logits" in plain.output


def test_architecture_for_each_family():
    assert architecture_for(ModelConfig(n=3), "cifar") == cifar_resnet(3)
    assert architecture_for(ModelConfig(n=3, gated=False, side_output=False), "cifar", (16, 16, 3)) == cifar_resnet(
        3, gated=False, side_output=False, image_shape=(16, 16, 3))
    assert architecture_for(ModelConfig(n=None, depth=50), "imagenet") == imagenet_resnet(50)
    with pytest.raises(ConfigError, match="model.depth is required"):
        architecture_for(ModelConfig(n=18), "imagenet")
    with pytest.raises(ConfigError, match="family must be one of"):
        architecture_for(ModelConfig(n=18), "mnist")
    with pytest.raises(ConfigError, match="depth must be one of"):
        architecture_for(ModelConfig(depth=42), "imagenet")
