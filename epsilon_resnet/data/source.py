"""The DataSource contract and the input pipeline that every dataset shares.

A source only says how to fetch one raw example (an image and its label); this module
turns that into the training stream (sharded, reshuffled every epoch, augmented, batched)
and the evaluation stream. Every random choice is a stateless op keyed by the run seed, the
input pipeline and the element's position in the stream, so a seed fixes the whole stream
whatever the parallelism, and no global TensorFlow seed is involved.
"""
import dataclasses
import random

import numpy as np
import tensorflow as tf

from epsilon_resnet.data import augment, holdout
from epsilon_resnet.errors import DataError

AUTOTUNE = tf.data.AUTOTUNE
# Per-channel RGB statistics of ImageNet in 0..1 units, the usual normalisation.
IMAGENET_MEAN = np.float32(255) * np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_SCALE = np.float32(1) / (np.float32(255) * np.array([0.229, 0.224, 0.225], np.float32))
# Key streams, so shuffling and augmentation never draw from the same random numbers.
SHUFFLE_STREAM, AUGMENT_STREAM = 0, 1


@dataclasses.dataclass(frozen=True)
class Shard:
    """Which part of the data one input pipeline reads: examples index, index + count, ..."""
    index: int = 0
    count: int = 1

    @classmethod
    def of(cls, input_context):
        if input_context is None:
            return cls()
        return cls(input_context.input_pipeline_id, input_context.num_input_pipelines)


class DataSource:
    """One dataset: its shape facts, its normalisation constants and its two pipelines.

    Images come out as float32 in raw 0..255 pixel units: the network subtracts
    `pixel_mean` and multiplies by `pixel_scale` itself, so a saved model carries its own
    normalisation. `family` ("cifar" or "imagenet") is set by `data.get_source` from
    `data.DATASETS`; a source built directly passes it. Subclasses provide
    `_train_examples` and `_eval_examples`.
    """

    def __init__(self, name, num_classes, image_shape, num_train, num_eval, pixel_mean, pixel_scale,
                 train_augment=(), eval_preprocess=(), family=None):
        self.name = name
        self.family = family
        self.num_classes = int(num_classes)
        self.image_shape = tuple(int(d) for d in image_shape)
        self.num_train = int(num_train)
        self.num_eval = int(num_eval)
        self.pixel_mean = np.asarray(pixel_mean, np.float32)
        self.pixel_scale = np.asarray(pixel_scale, np.float32)
        self.train_augment = tuple(train_augment)      # ops f(image, seed) -> image, in order
        self.eval_preprocess = tuple(eval_preprocess)  # ops f(image) -> image, in order

    def __repr__(self):
        return (f"{type(self).__name__}(name={self.name!r}, num_classes={self.num_classes}, "
                f"image_shape={self.image_shape}, num_train={self.num_train}, num_eval={self.num_eval})")

    def train_dataset(self, batch_size, seed=None, input_context=None, start_step=0):
        """Endless augmented batches of (float32 images, int32 labels) for one input pipeline.

        `start_step` global steps of `batch_size` are taken as done: the stream starts where
        a run that trained that many steps left it (so a resumed run sees the same batches
        as one that never stopped), without loading or augmenting the skipped examples.
        """
        if seed is None:
            seed = random.SystemRandom().randrange(2 ** 31)
        shard = Shard.of(input_context)
        start = start_step * batch_size // shard.count  # this pipeline's share of the examples already used
        if input_context is not None:
            batch_size = input_context.get_per_replica_batch_size(batch_size)
        augment_key = tf.constant([seed, AUGMENT_STREAM], tf.int64)
        augment_key = tf.random.experimental.stateless_fold_in(augment_key, shard.index)

        def augmented(position, example):
            image, label = example
            key = tf.random.experimental.stateless_fold_in(augment_key, position)
            return augment.apply_random(self.train_augment, tf.cast(image, tf.float32), key), label

        dataset = self._train_examples_from(seed, shard, start).enumerate(start)
        dataset = _finish(dataset.map(augmented, num_parallel_calls=AUTOTUNE), batch_size, drop_remainder=True)
        if input_context is not None:  # already sharded here: tf.distribute must not shard again
            options = tf.data.Options()
            options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
            dataset = dataset.with_options(options)
        return dataset

    def eval_dataset(self, batch_size):
        """Every evaluation example once, in a fixed order, in batches (the last may be short)."""
        dataset = self._eval_examples().map(self._eval_preprocessed, num_parallel_calls=AUTOTUNE)
        return _finish(dataset, batch_size, drop_remainder=False)

    def training_sample(self, count, batch_size, seed=0):
        """(indices, batches) of `count` training images (all, if there are fewer), not augmented
        but preprocessed as for evaluation: a seeded sample of the images this source trains
        on, so never a test or held-out image (to calibrate an int8 model, say). indices: their
        positions, sorted, among the training examples (without the held-out ones)."""
        indices = np.sort(np.random.default_rng(seed).choice(self.num_train, min(count, self.num_train),
                                                             replace=False))
        dataset = self._train_examples_at(indices).map(self._eval_preprocessed, num_parallel_calls=AUTOTUNE)
        return indices, _finish(dataset, batch_size, drop_remainder=False)

    def _eval_preprocessed(self, image, label):
        return augment.apply_fixed(self.eval_preprocess, tf.cast(image, tf.float32)), label

    def _train_examples_at(self, indices):
        """The training examples at these positions, in that order."""
        raise DataError(f"{self.name}: this form of the dataset cannot fetch training images by position "
                        f"(a record stream); use its folder form")

    def _train_examples(self, seed, shard):
        """Endless (image, label) stream of this shard, reshuffled every epoch."""
        raise NotImplementedError

    def _train_examples_from(self, seed, shard, start):
        """That stream from its example `start` on.

        A stream that cannot seek (tfds records behind a shuffle buffer) would have to read
        and decode every skipped example; it starts afresh instead, from a seed derived from
        (seed, start): still reproducible, but not the batches an uninterrupted run saw.
        IndexedSource seeks exactly.
        """
        if start:
            seed = int(np.random.SeedSequence([seed, start]).generate_state(1)[0] % 2 ** 31)
        return self._train_examples(seed, shard)

    def _eval_examples(self):
        """Finite (image, label) stream in a fixed order."""
        raise NotImplementedError


def _finish(dataset, batch_size, drop_remainder):
    dataset = dataset.map(lambda image, label: (tf.ensure_shape(image, [None, None, 3]), tf.cast(label, tf.int32)))
    return dataset.batch(batch_size, drop_remainder=drop_remainder).prefetch(AUTOTUNE)


def shuffled_indices(num_examples, seed, shard, start=0):
    """This shard's example indices, each epoch in a fresh seeded order, forever, from position `start`.

    Shuffling indices instead of examples gives a full shuffle (not a buffer's partial
    one) at the cost of a few bytes per example, and lets a resumed run seek: whole
    epochs are jumped over, and only the indices of the current one are skipped.
    """
    indices = tf.range(shard.index, num_examples, shard.count, dtype=tf.int64)
    if indices.shape[0] == 0:
        raise DataError(f"input pipeline {shard.index} of {shard.count} gets none of the {num_examples} "
                        f"training examples: use fewer input pipelines (GPUs or hosts) than examples")
    key = tf.constant([seed, SHUFFLE_STREAM], tf.int64)

    def epoch_order(epoch):
        order = tf.random.experimental.stateless_shuffle(
            indices, seed=tf.random.experimental.stateless_fold_in(key, epoch))
        return tf.data.Dataset.from_tensor_slices(order)

    first_epoch, offset = divmod(start, int(indices.shape[0]))
    return tf.data.Dataset.counter(first_epoch).flat_map(epoch_order).skip(offset)


class IndexedSource(DataSource):
    """A source whose examples can be fetched by index.

    `columns` maps "train" and "eval" to equal-length arrays (e.g. images and labels, or
    file paths and labels); example i is `_example(*row i of each column)`.
    """

    may_fail = False  # True where an example is a file that may not decode: skip it, with a warning

    def __init__(self, *args, columns=None, **kwargs):
        super().__init__(*args, **kwargs)
        self._columns = columns or {}
        self._tensors = {}

    def _split_tensors(self, split):
        # Made once, eagerly (a tensor made while tracing a map function would be baked into
        # the graph) and in host memory (tf.data runs on the CPU even when a GPU is the default).
        if split not in self._tensors:
            with tf.init_scope(), tf.device("/cpu:0"):
                self._tensors[split] = tuple(tf.constant(column) for column in self._columns[split])
        return self._tensors[split]

    def _loader(self, split):
        """A function from an index tensor to that example of split "train" or "eval"."""
        columns = self._split_tensors(split)
        return lambda index: self._example(*(tf.gather(column, index) for column in columns))

    def _example(self, *row):
        return row

    def _train_examples_from(self, seed, shard, start):
        return self._loaded("train", shuffled_indices(self.num_train, seed, shard, start))

    def _eval_examples(self):
        return self._loaded("eval", tf.data.Dataset.range(self.num_eval))

    def _train_examples_at(self, indices):
        return self._loaded("train", tf.data.Dataset.from_tensor_slices(np.asarray(indices, np.int64)))

    def _loaded(self, split, indices):
        dataset = indices.map(self._loader(split), num_parallel_calls=AUTOTUNE)
        # The warning goes to TensorFlow's C++ log (hidden at TF_CPP_MIN_LOG_LEVEL >= 2).
        return dataset.ignore_errors(log_warning=True) if self.may_fail else dataset


class ArraySource(IndexedSource):
    """A dataset small enough to hold in memory as uint8 arrays (CIFAR, SVHN).

    With `holdout_count` > 0, that many training images (a fixed choice, see holdout.py) become
    the evaluation set instead of `test`, and training uses the rest. pixel_mean is the
    per-pixel mean of the images trained on and pixel_scale 1/128, as in the original
    CIFAR/SVHN networks (docs/original.md §6; the original's mean also took in the test
    images).
    """

    def __init__(self, name, num_classes, train, test, train_augment, holdout_count=0, family=None):
        train, evaluation = holdout.split(train, test, holdout_count, name)
        (train_images, train_labels), (eval_images, eval_labels) = train, evaluation
        super().__init__(name, num_classes, train_images.shape[1:], len(train_images), len(eval_images),
                         pixel_mean=train_images.mean(axis=0, dtype=np.float64).astype(np.float32),
                         pixel_scale=np.float32(1 / 128), train_augment=train_augment, family=family,
                         columns={"train": (train_images, np.asarray(train_labels, np.int32)),
                                  "eval": (eval_images, np.asarray(eval_labels, np.int32))})
