"""Batch normalization on TensorFlow's fused kernel, as tensorpack's BatchNorm was.

Keras 3's `BatchNormalization` runs on the TensorFlow backend as separate elementwise ops
(moments, then normalise), and so does its gradient; `FusedBatchNormV3` does either in one
kernel (docs/tensorflow.md, batch normalization). This layer is Keras' layer with the same
weights, configuration and semantics (momentum, ε, float32 statistics under mixed precision),
computed by the fused kernel, except that its moving variance averages the kernel's unbiased
batch variance, as tensorpack 0.2.0's did (docs/original.md §11); Keras' layer averages the
biased one.
"""
import keras
import tensorflow as tf

from epsilon_resnet.structures import BATCH_NORMS

# tensorpack's BatchNorm momentum, and the ε the original ran with: tensorpack passed 1e-5, which
# TF1's fused kernel raised to its minimum 1.001e-5 (docs/original.md §11).
MOMENTUM, EPSILON = 0.9, 1.001e-5


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
            # The kernel returns the batch variance with Bessel's correction (×n/(n−1)), and
            # tensorpack averaged it as it came.
            self.moving_mean.assign(self.moving_mean * self.momentum + batch_mean * (1.0 - self.momentum))
            self.moving_variance.assign(self.moving_variance * self.momentum + batch_variance * (1.0 - self.momentum))
        return tf.cast(y, self.compute_dtype)


def layer(kind, axis, name):
    """The network's batch norm of this `kind` (one of BATCH_NORMS) over channel `axis`."""
    if kind not in BATCH_NORMS:
        raise ValueError(f"batch_norm must be one of {BATCH_NORMS}, got {kind!r}")
    layer_class = FusedBatchNormalization if kind == "fused" else keras.layers.BatchNormalization
    return layer_class(axis=axis, momentum=MOMENTUM, epsilon=EPSILON, name=name)


def kind_of(model):
    """The batch-norm kind (one of BATCH_NORMS) `model` was built with."""
    return "fused" if any(isinstance(layer, FusedBatchNormalization) for layer in model.layers) else "keras"
