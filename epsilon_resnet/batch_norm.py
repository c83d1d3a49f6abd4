"""Batch normalization on TensorFlow's fused kernel, as tensorpack's BatchNorm was.

Keras 3's `BatchNormalization` runs on the TensorFlow backend as separate elementwise ops
(moments, then normalise), and so does its gradient; `FusedBatchNormV3` does either in one
kernel (docs/tensorflow.md, batch normalization). This layer is Keras' layer with the same
weights, configuration and semantics (momentum, ε, biased batch variance in the moving
average, float32 statistics under mixed precision), computed by the fused kernel.
"""
import keras
import tensorflow as tf

from epsilon_resnet.structures import BATCH_NORMS

MOMENTUM, EPSILON = 0.9, 1e-5  # tensorpack's BatchNorm defaults, which the original trained with.


@keras.saving.register_keras_serializable(package="epsilon_resnet")
class FusedBatchNormalization(keras.layers.BatchNormalization):
    """Keras' BatchNormalization (4-D inputs, channel axis 1 or -1) on the fused kernel."""

    def build(self, input_shape):
        if len(input_shape) != 4 or self.axis not in (1, 3, -1, -3):
            raise ValueError(f"FusedBatchNormalization takes 4-D inputs normalised over channel axis 1 or -1, got shape "
                             f"{tuple(input_shape)} and axis {self.axis}")
        super().build(input_shape)

    def call(self, inputs, training=None, mask=None):
        # The kernel takes float16 or float32 images with float32 statistics, and computes in float32.
        x = inputs if inputs.dtype in (tf.float16, tf.float32) else tf.cast(inputs, tf.float32)
        layout = "NCHW" if self.axis in (1, -3) else "NHWC"
        train = bool(training and self.trainable)
        mean, variance = ((tf.constant([], tf.float32),) * 2 if train else
                          (tf.convert_to_tensor(self.moving_mean), tf.convert_to_tensor(self.moving_variance)))
        y, batch_mean, batch_variance, _, _, _ = tf.raw_ops.FusedBatchNormV3(
            x=x, scale=tf.convert_to_tensor(self.gamma), offset=tf.convert_to_tensor(self.beta), mean=mean,
            variance=variance, epsilon=self.epsilon, exponential_avg_factor=1.0, data_format=layout,
            is_training=train)
        if train:
            self._update_moving_statistics(x, batch_mean, batch_variance)
        return tf.cast(y, self.compute_dtype)

    def _update_moving_statistics(self, x, batch_mean, batch_variance):
        # The kernel returns the batch variance with Bessel's correction; Keras' layer averages
        # the biased one, and so does this layer.
        shape = tf.shape(x)
        count = tf.cast(tf.reduce_prod(shape) // shape[self.axis], tf.float32)
        biased = batch_variance * (count - 1.0) / count
        self.moving_mean.assign(self.moving_mean * self.momentum + batch_mean * (1.0 - self.momentum))
        self.moving_variance.assign(self.moving_variance * self.momentum + biased * (1.0 - self.momentum))


def layer(kind, axis, name):
    """The network's batch norm of this `kind` (one of BATCH_NORMS) over channel `axis`."""
    if kind not in BATCH_NORMS:
        raise ValueError(f"batch_norm must be one of {BATCH_NORMS}, got {kind!r}")
    layer_class = FusedBatchNormalization if kind == "fused" else keras.layers.BatchNormalization
    return layer_class(axis=axis, momentum=MOMENTUM, epsilon=EPSILON, name=name)


def kind_of(model):
    """The batch-norm kind (one of BATCH_NORMS) `model` was built with."""
    return "fused" if any(isinstance(layer, FusedBatchNormalization) for layer in model.layers) else "keras"
