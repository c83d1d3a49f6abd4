"""The fused batch norm against Keras' own layer: outputs, gradients and moving means equal to
float tolerance, in NHWC and NCHW, float32 and mixed float16; the moving variance of each
against a NumPy trace (the fused layer averages the unbiased batch variance, as tensorpack did;
Keras' layer the biased one); ε 1.001e-5; serialisable; the networks built with either restore
each other's checkpoints."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from epsilon_resnet import batch_norm
from epsilon_resnet.batch_norm import FusedBatchNormalization
from epsilon_resnet.networks import build_resnet
from epsilon_resnet.structures import cifar_resnet


@pytest.fixture
def policy(request):
    keras.mixed_precision.set_global_policy(request.param)
    yield request.param
    keras.mixed_precision.set_global_policy("float32")


def twin_layers(axis, shape, rng):
    """Keras' layer and the fused one, built with the same random scale and offset."""
    layers = batch_norm.layer("keras", axis, "keras_bn"), batch_norm.layer("fused", axis, "fused_bn")
    scale, offset = rng.normal(1, 0.2, shape[axis]), rng.normal(0, 0.2, shape[axis])
    for layer in layers:
        layer.build(shape)
        layer.gamma.assign(scale.astype(np.float32))
        layer.beta.assign(offset.astype(np.float32))
    return layers


@pytest.mark.parametrize("policy", ["float32", "mixed_float16"], indirect=True)
@pytest.mark.parametrize("axis, shape", [(-1, (8, 6, 5, 4)), (1, (8, 4, 6, 5))], ids=["NHWC", "NCHW"])
def test_training_and_inference_equal_keras_layer(policy, axis, shape):
    rng = np.random.default_rng(0)
    layers = twin_layers(axis, shape, rng)
    tolerance = 1e-5 if policy == "float32" else 2e-3
    for _ in range(3):  # three training steps move the statistics away from their start
        x = tf.constant(rng.normal(2, 3, shape), tf.float32)
        outputs, gradients = [], []
        for layer in layers:
            with tf.GradientTape() as tape:
                tape.watch(x)
                y = layer(x, training=True)
                loss = tf.reduce_sum(tf.cast(y, tf.float32) * tf.cos(x))
            outputs.append(y)
            gradients.append(tape.gradient(loss, [x, layer.gamma, layer.beta]))
        keras_layer, fused = layers
        assert outputs[1].dtype == outputs[0].dtype == keras.mixed_precision.global_policy().compute_dtype
        np.testing.assert_allclose(outputs[1], outputs[0], rtol=tolerance, atol=tolerance)
        for fused_gradient, keras_gradient in zip(gradients[1], gradients[0]):
            np.testing.assert_allclose(fused_gradient, keras_gradient, rtol=tolerance, atol=tolerance * 10)
        assert fused.moving_mean.dtype == fused.moving_variance.dtype == "float32"
        np.testing.assert_allclose(fused.moving_mean, keras_layer.moving_mean, rtol=1e-5)
    assert not np.allclose(keras_layer.moving_variance, 1.0)
    fused.moving_variance.assign(keras_layer.moving_variance)  # the same statistics: the same inference
    np.testing.assert_allclose(layers[1](x, training=False), layers[0](x, training=False), rtol=tolerance,
                               atol=tolerance)


@pytest.mark.parametrize("kind, ddof", [("fused", 1), ("keras", 0)])
def test_moving_statistics_follow_a_numpy_trace(kind, ddof):
    """Three training steps: moving mean and variance from 0 and 1 with momentum 0.9, the fused
    layer averaging the unbiased batch variance (n = 2·3·5 = 30 values per channel), Keras'
    layer the biased one; then inference with those statistics and ε = 1.001e-5."""
    rng = np.random.default_rng(3)
    layer = batch_norm.layer(kind, -1, "bn")
    mean, variance = np.zeros(2), np.ones(2)
    for step in range(3):
        x = rng.normal(step, 1 + step, (2, 3, 5, 2)).astype(np.float32)
        y = layer(tf.constant(x), training=True)
        per_channel = x.reshape(-1, 2).astype(np.float64)
        mean = 0.9 * mean + 0.1 * per_channel.mean(0)
        variance = 0.9 * variance + 0.1 * per_channel.var(0, ddof=ddof)
        normalised = (per_channel - per_channel.mean(0)) / np.sqrt(per_channel.var(0) + 1.001e-5)
        np.testing.assert_allclose(np.reshape(y, (-1, 2)), normalised, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(layer.moving_mean, mean, rtol=1e-6)
    np.testing.assert_allclose(layer.moving_variance, variance, rtol=1e-6)
    assert (layer.momentum, layer.epsilon) == (0.9, 1.001e-5)
    # ε weighs in where the variance is tiny: a moving variance of 0 divides by sqrt(ε) alone.
    layer.moving_variance.assign(np.zeros(2, np.float32))
    np.testing.assert_allclose(np.reshape(layer(tf.constant(x), training=False), (-1, 2)),
                               (per_channel - mean) / np.sqrt(1.001e-5), rtol=2e-6, atol=1e-3)


def test_the_layer_serialises_and_refuses_what_the_kernel_cannot_take(tmp_path):
    model = keras.Sequential([keras.Input((4, 4, 3)), batch_norm.layer("fused", -1, "bn")])
    model.layers[0].moving_mean.assign([1.0, 2.0, 3.0])
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    assert type(loaded.layers[0]) is FusedBatchNormalization and loaded.layers[0].axis in (-1, 3)
    np.testing.assert_array_equal(loaded.layers[0].moving_mean, [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="4-D inputs"):
        FusedBatchNormalization()(tf.zeros((2, 3)))
    with pytest.raises(ValueError, match="batch_norm must be one of"):
        batch_norm.layer("sync", -1, "bn")


def test_networks_of_either_kind_restore_each_others_checkpoints(tmp_path):
    images = np.random.default_rng(1).integers(0, 256, (4, 32, 32, 3)).astype(np.float32)
    networks = {kind: build_resnet(cifar_resnet(1), 10, epsilon=1.0, batch_norm_kind=kind)
                for kind in ("keras", "fused")}
    keras_net, fused_net = networks["keras"], networks["fused"]
    for _ in range(2):
        keras_net(images, training=True)  # moves the batch-norm statistics and the gates' averages
    assert batch_norm.kind_of(keras_net) == "keras" and batch_norm.kind_of(fused_net) == "fused"
    path = tf.train.Checkpoint(model=keras_net).write(str(tmp_path / "ckpt"))
    tf.train.Checkpoint(model=fused_net).read(path).assert_consumed()
    np.testing.assert_allclose(fused_net(images)["logits"], keras_net(images)["logits"], rtol=1e-4, atol=1e-4)
