"""The training objective of docs/original.md §4 against NumPy: the step-scheduled L2 weight
decay over convolution and dense kernels only, and the per-replica loss shares."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from epsilon_resnet import losses
from epsilon_resnet.networks import build_resnet, kernels
from epsilon_resnet.structures import cifar_resnet


@pytest.mark.parametrize("step, expected", [(0, 2e-4), (479999, 2e-4), (480000, 4e-5), (959999, 4e-5),
                                            (960000, 8e-6), (1500000, 2e-4 * 0.2 ** 3)])
def test_weight_decay_coefficient_steps_down_by_5x_every_480000_steps(step, expected):
    value = losses.weight_decay_coefficient(tf.constant(step, tf.int64), 0.0002, 0.2, 480000)
    assert float(value) == pytest.approx(expected, rel=1e-6)


def test_weight_decay_covers_conv_and_dense_kernels_only():
    model = build_resnet(cifar_resnet(1, gated=True), 10, epsilon=1.0)
    rng = np.random.default_rng(0)
    for weight in model.weights:  # every weight non-zero, so a bias or BN weight in the sum would show
        weight.assign(rng.normal(size=weight.shape).astype(np.float32))
    expected = 0.0
    for layer in model.layers:
        if isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense)):
            expected += 0.5 * np.sum(np.square(layer.kernel.numpy().astype(np.float64)))
    selected = kernels(model)
    assert len(selected) == sum(isinstance(l, (keras.layers.Conv2D, keras.layers.Dense)) for l in model.layers)
    assert all("bias" not in w.path and "gamma" not in w.path for w in selected)
    cost = losses.weight_decay_cost(selected, tf.constant(0.0002))
    assert float(cost) == pytest.approx(0.0002 * expected, rel=1e-5)


def test_classification_losses_are_shares_of_the_global_batch():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(4, 10)).astype(np.float32)
    side = rng.normal(size=(4, 10)).astype(np.float32)
    labels = np.array([0, 3, 3, 9], np.int32)

    def ce(z):
        z = z.astype(np.float64) - z.max(axis=1, keepdims=True)
        return -(z[np.arange(4), labels] - np.log(np.exp(z).sum(axis=1)))

    loss, stats = losses.classification_losses({"logits": logits, "side_logits": side}, labels, 8, 0.1)
    assert float(loss) == pytest.approx((ce(logits).sum() + 0.1 * ce(side).sum()) / 8, rel=1e-5)
    wrong = (logits.argmax(axis=1) != labels).sum()
    assert float(stats["train_error"]) == pytest.approx(wrong / 8)
    assert float(stats["train_error_side"]) == pytest.approx((side.argmax(axis=1) != labels).sum() / 8)
