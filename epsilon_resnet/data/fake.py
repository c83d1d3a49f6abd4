"""Random ImageNet-shaped data, to benchmark or test the training loop without a dataset.

Example i is the same random image and label in every run (the original's --fake fed
fixed random arrays), the seed only changes their order; no augmentation, so the input
pipeline costs next to nothing. The evaluation set is small by default: evaluating
ImageNet's 50,000 validation images after a two-step `--fake` run takes a CPU the better
part of an hour, and random labels make its error meaningless anyway (pass
num_eval=50000 to time a full evaluation).
"""
import tensorflow as tf

from epsilon_resnet.data import files
from epsilon_resnet.data.source import IMAGENET_MEAN, IMAGENET_SCALE, IndexedSource

SPLIT_KEYS = {"train": 0, "eval": 1}
NUM_TRAIN = 1281167  # ImageNet's training images: one epoch is as many steps as the real one
NUM_EVAL = 512


class FakeImageNetSource(IndexedSource):

    def __init__(self, image_size=224, num_classes=1000, num_train=NUM_TRAIN, num_eval=NUM_EVAL):
        super().__init__("fake-imagenet", num_classes, (image_size, image_size, 3), num_train, num_eval,
                         IMAGENET_MEAN, IMAGENET_SCALE)

    def _loader(self, split):
        def example(index):
            key = tf.random.experimental.stateless_fold_in(tf.constant([SPLIT_KEYS[split], 0], tf.int64), index)
            image_key, label_key = tf.unstack(tf.random.experimental.stateless_split(key, num=2))
            image = tf.random.stateless_uniform(self.image_shape, image_key, 0, 256, dtype=tf.int32)
            label = tf.random.stateless_uniform([], label_key, 0, self.num_classes, dtype=tf.int32)
            return tf.cast(image, tf.uint8), label
        return example


def fake_imagenet(data_dir=None, image_size=224, num_classes=1000, num_train=NUM_TRAIN, num_eval=NUM_EVAL):
    """data_dir is ignored: there is nothing to read."""
    files.check_positive("fake-imagenet", image_size=image_size, num_classes=num_classes, num_train=num_train,
                         num_eval=num_eval)
    return FakeImageNetSource(image_size, num_classes, num_train, num_eval)
