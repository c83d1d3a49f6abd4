"""The ImageNet pre-activation ResNets (docs/original.md §2-3): every depth, parameter counts
against the published ResNets, the corrected basic-block shortcut, the side head's position, NCHW."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from epsilon_resnet.gate import epsilon_of, gates_of
from epsilon_resnet.networks import build_resnet
from epsilon_resnet.structures import cifar_resnet, imagenet_resnet

# Written out from the ResNet paper (He et al. 2016, Table 1), not read from networks.py.
BLOCKS = {18: (False, (2, 2, 2, 2)), 34: (False, (3, 4, 6, 3)), 50: (True, (3, 4, 6, 3)),
          101: (True, (3, 4, 23, 3)), 152: (True, (3, 8, 36, 3))}
WIDTHS = (64, 128, 256, 512)
# sum(p.numel() for p in torchvision.models.resnet<depth>().parameters()), 1000 classes: the
# widely published counts of the original (post-activation) ResNets. They count conv kernels
# (no biases), batch-norm γ and β (running statistics are buffers) and the classifier.
TORCHVISION_PARAMS = {18: 11_689_512, 34: 21_797_672, 50: 25_557_032, 101: 44_549_160, 152: 60_192_808}
# The side head taps group2/block{P}, P = Σdefs//2 − (defs[0]+defs[1]) − 1 (Python integer division):
# 101: 33//2 - 7 - 1 = 8; 152: 50//2 - 11 - 1 = 13; 34/50: 16//2 - 7 - 1 = 0. For ResNet-18,
# 8//2 - 4 - 1 = -1 (the original crashed): the project's choice, group2/block0.
SIDE_BLOCK = {18: 0, 34: 0, 50: 0, 101: 8, 152: 13}


def torchvision_bn_widths(depth):
    """Channels of every BN of torchvision's ResNet: the stem's bn1, one after every conv of a
    block, and one in each downsample shortcut (1×1 conv + BN, where stride or width changes)."""
    bottleneck, blocks = BLOCKS[depth]
    widths, in_width = [64], 64
    for group, (count, width) in enumerate(zip(blocks, WIDTHS)):
        out_width = 4 * width if bottleneck else width
        for block in range(count):
            widths += [width, width, out_width] if bottleneck else [width, width]
            if block == 0 and (group > 0 or in_width != out_width):
                widths.append(out_width)
            in_width = out_width
    return widths


def preact_bn_widths(depth):
    """Channels of every BN of docs/original.md §3's pre-activation ResNet: the stem's, a pre-activation BN on
    each block's input (group0/block0 reuses the stem's), one after every branch conv but the last,
    none in shortcuts, and bnlast before the global pooling."""
    bottleneck, blocks = BLOCKS[depth]
    widths, in_width = [64], 64
    for group, (count, width) in enumerate(zip(blocks, WIDTHS)):
        for block in range(count):
            if (group, block) != (0, 0):
                widths.append(in_width)
            widths += [width, width] if bottleneck else [width]
            in_width = 4 * width if bottleneck else width
    return widths + [in_width]


def expected_params(depth):
    """Same convs and classifier as torchvision's; only the BN layers (2 parameters a channel) differ."""
    return TORCHVISION_PARAMS[depth] - 2 * sum(torchvision_bn_widths(depth)) + 2 * sum(preact_bn_widths(depth))


def trainable_shapes(model, skip_layers=()):
    skipped = {id(w) for name in skip_layers for w in model.get_layer(name).weights}
    return sorted((w.path, tuple(w.shape)) for w in model.trainable_weights if id(w) not in skipped)


@pytest.mark.parametrize("depth", sorted(BLOCKS))
def test_every_depth_builds_with_the_published_parameter_count_and_side_head(depth):
    plain = build_resnet(imagenet_resnet(depth, gated=False, side_output=False), 1000)
    assert plain.count_params() - sum(int(np.prod(w.shape)) for w in plain.non_trainable_weights) \
        == expected_params(depth)
    assert not gates_of(plain) and epsilon_of(plain) is None

    gated = build_resnet(imagenet_resnet(depth), 1000, epsilon=2.0)
    # The gate adds no trainable weight: the same trainable tensors once the side head is left out.
    assert trainable_shapes(gated, ("side_bn", "side_linear")) == trainable_shapes(plain)
    blocks = sum(BLOCKS[depth][1])
    assert len(gates_of(gated)) == blocks
    assert [g.block for g in gates_of(gated)] == [f"group{g}/block{k}" for g, count in enumerate(BLOCKS[depth][1])
                                                  for k in range(count)]
    assert epsilon_of(gated) == 2.0

    assert imagenet_resnet(depth).side_head == (2, SIDE_BLOCK[depth])
    assert gated.get_layer("side_bn").input is gated.get_layer(f"group2_block{SIDE_BLOCK[depth]}_gate").output


@pytest.mark.parametrize("depth", [18, 34])
def test_basic_block_shortcut_has_the_block_width(depth):
    model = build_resnet(imagenet_resnet(depth, side_output=False, image_shape=(64, 64, 3)), 1000)
    names = {layer.name for layer in model.layers}
    assert "group0_block0_convshortcut" not in names  # 64 -> 64 channels, stride 1: identity
    for group in (1, 2, 3):
        kernel = model.get_layer(f"group{group}_block0_convshortcut").kernel
        assert tuple(kernel.shape) == (1, 1, WIDTHS[group - 1], WIDTHS[group])  # not 4x (the original's bug)
        assert model.get_layer(f"group{group}_block0_convshortcut").strides == (2, 2)
    out = model(np.zeros((2, 64, 64, 3), np.float32))
    assert out["logits"].shape == (2, 1000)


def test_bottleneck_group0_widens_through_a_convshortcut():
    model = build_resnet(imagenet_resnet(50, side_output=False, image_shape=(64, 64, 3)), 10)
    assert tuple(model.get_layer("group0_block0_convshortcut").kernel.shape) == (1, 1, 64, 256)
    assert model.get_layer("group0_block0_convshortcut").strides == (1, 1)
    assert model.get_layer("group1_block0_conv2").strides == (2, 2)  # stride on the 3x3 conv
    assert model(np.zeros((1, 64, 64, 3), np.float32))["logits"].shape == (1, 10)


def cpu_runs_nchw_convolutions():
    """TensorFlow's stock CPU Conv2D rejects NCHW; oneDNN builds (x86 Linux default) accept it."""
    try:
        tf.nn.conv2d(tf.zeros((1, 1, 2, 2)), tf.zeros((1, 1, 1, 1)), 1, "SAME", data_format="NCHW")
        return True
    except (tf.errors.UnimplementedError, tf.errors.InvalidArgumentError):
        return False


@pytest.mark.parametrize("architecture", [imagenet_resnet(18, image_shape=(64, 64, 3)), cifar_resnet(1)],
                         ids=["imagenet18", "cifar_n1"])
def test_channels_first_computes_what_channels_last_computes(architecture):
    build = dict(epsilon=0.05, pixel_mean=127.5, pixel_scale=1 / 64)
    nhwc = build_resnet(architecture, 10, **build)
    nchw = build_resnet(architecture, 10, data_format="channels_first", **build)
    assert nchw.input.shape[1:] == architecture.image_shape  # the images stay NHWC; the network transposes them
    assert nchw.get_layer("to_channels_first").output.shape[1] == 3
    assert all(l.axis in (1, [1]) for l in nchw.layers if isinstance(l, keras.layers.BatchNormalization))
    # Same weight shapes in both layouts, so checkpoints move between them.
    assert [(w.path, tuple(w.shape)) for w in nhwc.weights] == [(w.path, tuple(w.shape)) for w in nchw.weights]
    if not cpu_runs_nchw_convolutions():
        pytest.skip("this TensorFlow's CPU convolutions reject NCHW (no oneDNN)")
    rng = np.random.default_rng(0)
    for layer in nhwc.layers:
        if isinstance(layer, keras.layers.BatchNormalization):  # per-channel statistics expose a wrong axis
            width = layer.gamma.shape[0]
            layer.set_weights([rng.uniform(0.5, 1.5, width), rng.uniform(-0.2, 0.2, width),
                               rng.uniform(-0.2, 0.2, width), rng.uniform(0.5, 1.5, width)])
        nchw.get_layer(layer.name).set_weights(layer.get_weights())  # He-initialised kernels keep logits finite
    images = rng.uniform(0, 255, (2, *architecture.image_shape)).astype(np.float32)
    expected, got = nhwc(images, training=False), nchw(images, training=False)
    for key in ("logits", "side_logits"):
        assert np.isfinite(expected[key]).all() and np.ptp(expected[key].numpy()) > 1e-3  # something to compare
        np.testing.assert_allclose(got[key], expected[key], rtol=1e-4, atol=1e-4 * np.abs(expected[key]).max())


def test_unknown_data_format_is_refused():
    with pytest.raises(ValueError, match="data_format must be one of"):
        build_resnet(cifar_resnet(1), 10, data_format="NCHW")
