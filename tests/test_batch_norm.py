"""The fused batch norm against Keras' own layer: outputs, gradients and moving statistics
equal to float tolerance, in NHWC and NCHW, float32 and mixed float16; serialisable; the
networks built with either restore each other's checkpoints."""
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
        for name in ("moving_mean", "moving_variance"):
            assert getattr(fused, name).dtype == "float32"
            np.testing.assert_allclose(getattr(fused, name), getattr(keras_layer, name), rtol=1e-5, err_msg=name)
    assert not np.allclose(keras_layer.moving_variance, 1.0)
    np.testing.assert_allclose(layers[1](x, training=False), layers[0](x, training=False), rtol=tolerance,
                               atol=tolerance)


def test_moving_statistics_follow_momentum_and_the_biased_variance():
    x = np.arange(2 * 3 * 1 * 2, dtype=np.float32).reshape(2, 3, 1, 2) ** 1.5
    layer = batch_norm.layer("fused", -1, "bn")
    layer(tf.constant(x), training=True)
    per_channel = x.reshape(-1, 2)
    np.testing.assert_allclose(layer.moving_mean, 0.1 * per_channel.mean(0), rtol=1e-6)
    np.testing.assert_allclose(layer.moving_variance, 0.9 + 0.1 * per_channel.var(0), rtol=1e-6)
    assert (layer.momentum, layer.epsilon) == (0.9, 1e-5)


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
