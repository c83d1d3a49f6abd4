"""Process-wide TensorFlow settings a run asks for: numeric precision, seeds, determinism.

They are global to the process, so they are set once, before any model is built, by the
entry point of a run, not by the objects that train.
"""
import keras
import tensorflow as tf


def configure(train_config):
    """Apply a TrainConfig's precision, seed and deterministic settings to this process."""
    keras.mixed_precision.set_global_policy(train_config.precision)
    if train_config.seed is not None:
        keras.utils.set_random_seed(train_config.seed)
    if train_config.deterministic:
        tf.config.experimental.enable_op_determinism()
