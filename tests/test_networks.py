"""The CIFAR pre-activation ResNet (SPEC §3): structure, names, exact parameter counts."""
import keras
import numpy as np
import pytest

from epsilon_resnet.gate import gates_of
from epsilon_resnet.networks import Structure, build_resnet, cifar_structure, side_position


def expected_trainable_params(n, num_classes, side):
    """Count SPEC §3's CIFAR network by hand: 3×3 convs without bias, BN γ/β, dense with bias."""
    count = 3 * 3 * 3 * 16 + 2 * 16  # conv0 + its BN
    in_width = 16
    for stage, width in enumerate((16, 32, 64)):
        for block in range(n):
            preact = 0 if (stage, block) == (0, 0) else 2 * in_width  # res1.0 has no pre-activation
            count += preact + 9 * in_width * width + 2 * width + 9 * width * width
            in_width = width
    count += 2 * 64 + 64 * num_classes + num_classes  # bnlast + linear
    if side:
        count += 2 * 32 + 32 * num_classes + num_classes
    return count


def trainable(model):
    return sum(int(np.prod(w.shape)) for w in model.trainable_weights)


@pytest.mark.parametrize("n, num_classes, side", [(1, 10, True), (2, 100, False), (18, 10, True)])
def test_parameter_count_matches_the_architecture(n, num_classes, side):
    model = build_resnet(cifar_structure(n), num_classes, side_output=side)
    assert trainable(model) == expected_trainable_params(n, num_classes, side)
    plain = build_resnet(cifar_structure(n), num_classes, gated=False, side_output=side)
    assert trainable(plain) == trainable(model)  # the gate adds no trainable weight


def test_depth_block_names_and_gates():
    n = 3
    model = build_resnet(cifar_structure(n), 10)
    convs = [l for l in model.layers if isinstance(l, keras.layers.Conv2D)]
    dense = [l for l in model.layers if isinstance(l, keras.layers.Dense) and l.name == "linear"]
    assert len(convs) + len(dense) == 6 * n + 2
    assert [g.block for g in gates_of(model)] == [f"res{s}.{k}" for s in (1, 2, 3) for k in range(n)]
    assert cifar_structure(n).block_names() == [g.block for g in gates_of(model)]
    assert "res1.0_preact_bn" not in [l.name for l in model.layers]  # conv0's BN-ReLU serves it
    assert model.get_layer("res2.0_conv1").strides == (2, 2)


def test_side_head_taps_the_middle_block():
    assert side_position(cifar_structure(18)) == (1, 9)  # res2.9
    model = build_resnet(cifar_structure(4), 10)
    side_input = model.get_layer("side_bn").input
    assert side_input is model.get_layer("res2.2_add").output


def test_outputs_and_shapes():
    model = build_resnet(cifar_structure(1), 100)
    out = model(np.zeros((3, 32, 32, 3), np.float32))
    assert out["logits"].shape == (3, 100) and out["side_logits"].shape == (3, 100)
    assert set(build_resnet(cifar_structure(1), 10, side_output=False).output) == {"logits"}


def test_downsampling_shortcut_is_pool_and_zero_pad():
    """With the residual branch zeroed, res2.0 outputs its shortcut: 2×2 average pool, channels padded 8+8."""
    model = build_resnet(cifar_structure(1), 10, gated=False, side_output=False)
    conv2 = model.get_layer("res2.0_conv2")
    conv2.kernel.assign(np.zeros(conv2.kernel.shape, np.float32))
    probe = keras.Model(model.input, [model.get_layer("res1.0_add").output, model.get_layer("res2.0_add").output])
    x, y = (t.numpy() for t in probe(np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype(np.float32)))
    pooled = x.reshape(2, 16, 2, 16, 2, 16).mean(axis=(2, 4))
    np.testing.assert_allclose(y[..., 8:24], pooled, rtol=1e-5, atol=1e-5)
    assert not y[..., :8].any() and not y[..., 24:].any()


@pytest.mark.parametrize("kwargs, fragment", [
    (dict(family="cifar", stage_units=(2, 2), first_block_kept=(True, True)), "has 3 stages"),
    (dict(family="cifar", stage_units=(2, 0, 2), first_block_kept=(True,) * 3), "at least its first unit"),
    (dict(family="mnist", stage_units=(1,), first_block_kept=(True,)), "family must be one of"),
    (dict(family="cifar", stage_units=(1, 1, 1), first_block_kept=(True,) * 3, bottleneck=True), "basic blocks"),
])
def test_bad_structures_are_refused_with_the_values(kwargs, fragment):
    with pytest.raises(ValueError, match=fragment):
        Structure(**kwargs)


def test_pruned_structure_names_and_counts():
    structure = Structure("cifar", (3, 1, 2), (True, False, False))
    assert structure.gated_blocks == 4
    assert structure.block_names() == ["res1.0", "res1.1", "res1.2", "res3.1"]
