"""ImageNet (ILSVRC-2012) from a folder of JPEGs or a folder tensorflow-datasets prepared.

The folder form is `train/<wnid>/*.JPEG` and `val/<wnid>/*.JPEG`; class k is the k-th
train wnid in sorted order (the order tensorflow-datasets uses too). The validation images
are evaluated in ILSVRC2012 image-id order (ILSVRC2012_val_00000001.JPEG, ...), the val.txt
order the original read, which mixes the classes in every batch; when the files are not
named so, in a fixed shuffled order (docs/original.md §10: under the per-batch gate a batch's
composition decides which blocks close). Images are decoded
inside tf.data. A file that does not decode is skipped with a warning instead of ending an
epoch hours in: ImageNet ships a few odd files (a PNG named .JPEG, CMYK JPEGs), which
tf.io.decode_image reads, but a damaged copy would otherwise stop the run.
"""
import os
import re

import numpy as np
import tensorflow as tf

from epsilon_resnet.data import augment, files
from epsilon_resnet.data.source import AUTOTUNE, IMAGENET_MEAN, IMAGENET_SCALE, DataSource, IndexedSource, Shard
from epsilon_resnet.errors import DataError

IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png")
TFDS_NAME = "imagenet2012"
VAL_IMAGE_ID = re.compile(r"ILSVRC2012_val_(\d+)\.\w+", re.IGNORECASE)
VAL_ORDER_SEED = 0  # the fixed shuffle of validation files not named by their image id
SHUFFLE_BUFFER = 10_000  # encoded images (~110 kB each) shuffled after tfds's file-level shuffle
LAYOUT = ("train/<wnid>/*.JPEG and val/<wnid>/*.JPEG (one folder per class named by its WordNet id, "
          "e.g. n01440764, the same ids in both)")


def decode(contents):
    """Any JPEG (RGB, grayscale or CMYK), or a PNG, as uint8 HxWx3."""
    return tf.io.decode_image(contents, channels=3, expand_animations=False)


def validation_order(paths):
    """Indices putting validation image paths in image-id order if every file is named by its
    ILSVRC2012 id, else in a fixed shuffled order, so that a batch mixes classes either way."""
    ids = [VAL_IMAGE_ID.fullmatch(os.path.basename(path)) for path in paths]
    if all(ids):
        return np.argsort([int(match.group(1)) for match in ids], kind="stable")
    return np.random.default_rng(VAL_ORDER_SEED).permutation(len(paths))


def list_classes(split_dir):
    """{wnid: sorted image paths} for every class folder of split_dir."""
    classes = {}
    for entry in sorted(os.scandir(split_dir), key=lambda e: e.name):
        if entry.is_dir():
            classes[entry.name] = sorted(f.path for f in os.scandir(entry.path)
                                         if f.is_file() and f.name.lower().endswith(IMAGE_EXTENSIONS))
    return classes


class ImageFolderSource(IndexedSource):
    may_fail = True

    def __init__(self, data_dir, image_size):
        train_dir, val_dir = os.path.join(data_dir, "train"), os.path.join(data_dir, "val")
        if not os.path.isdir(val_dir):
            raise DataError(f"imagenet: {val_dir} is missing: put the validation images in {LAYOUT}")
        train, val = list_classes(train_dir), list_classes(val_dir)
        for split_dir, classes in ((train_dir, train), (val_dir, val)):
            if not any(classes.values()):
                raise DataError(f"imagenet: no images in {split_dir}: put {LAYOUT} in {data_dir}")
        unknown = sorted(set(val) - set(train))
        if unknown:
            raise DataError(f"imagenet: {val_dir} has class folders that {train_dir} lacks: {', '.join(unknown[:10])}"
                            f"{' ...' if len(unknown) > 10 else ''}; class ids come from the train folders")
        class_index = {wnid: k for k, wnid in enumerate(train)}
        columns = {"train": self._table(train, class_index), "eval": self._table(val, class_index, validation_order)}
        super().__init__("imagenet", len(train), (image_size, image_size, 3), len(columns["train"][0]),
                         len(columns["eval"][0]), IMAGENET_MEAN, IMAGENET_SCALE, augment.imagenet_train(image_size),
                         augment.imagenet_eval(image_size), columns=columns)

    @staticmethod
    def _table(classes, class_index, order=None):
        """(paths, labels) class folder by class folder, or in the order `order(paths)` gives."""
        paths = [path for wnid in classes for path in classes[wnid]]
        labels = np.array([class_index[wnid] for wnid in classes for _ in classes[wnid]], np.int32)
        indices = order(paths) if order else np.arange(len(paths))
        return np.array([os.fsencode(paths[i]) for i in indices], dtype=object), labels[indices]

    def _example(self, path, label):
        return decode(tf.io.read_file(path)), label


class TfdsImageNetSource(DataSource):
    """imagenet2012 as tensorflow-datasets prepared it: streamed from its record files."""

    def __init__(self, builder_dir, image_size):
        self._builder = files.load_tfds(builder_dir)
        info = self._builder.info
        super().__init__("imagenet", info.features["label"].num_classes, (image_size, image_size, 3),
                         info.splits["train"].num_examples, info.splits["validation"].num_examples,
                         IMAGENET_MEAN, IMAGENET_SCALE, augment.imagenet_train(image_size),
                         augment.imagenet_eval(image_size))

    def _records(self, split, seed=None, shard=Shard()):
        import tensorflow_datasets as tfds

        read_config = tfds.ReadConfig(shuffle_seed=seed, input_context=tf.distribute.InputContext(
            num_input_pipelines=shard.count, input_pipeline_id=shard.index))
        return self._builder.as_dataset(split=split, shuffle_files=seed is not None, read_config=read_config,
                                        decoders={"image": tfds.decode.SkipDecoding()})

    @staticmethod
    def _decoded(records):
        return records.map(lambda record: (decode(record["image"]), record["label"]),
                           num_parallel_calls=AUTOTUNE).ignore_errors(log_warning=True)

    def _train_examples(self, seed, shard):
        return self._decoded(self._records("train", seed, shard).repeat().shuffle(SHUFFLE_BUFFER, seed=seed))

    def _eval_examples(self):
        # In the order tensorflow-datasets stored them (shuffled when it prepared the split):
        # batches mix classes, but the order is not the image ids' (docs/differences.md).
        return self._decoded(self._records("validation"))


def imagenet(data_dir=None, image_size=224):
    """image_size: the side of the square training and evaluation crops (224 in the paper)."""
    files.check_positive("imagenet", image_size=image_size)
    data_dir = files.resolve(data_dir)
    if os.path.isdir(os.path.join(data_dir, "train")):
        return ImageFolderSource(data_dir, image_size)
    builder_dir = files.prepared_tfds_dir(data_dir, TFDS_NAME)
    if builder_dir:
        return TfdsImageNetSource(builder_dir, image_size)
    raise files.not_found("imagenet", data_dir, [
        os.path.join(data_dir, "train") + os.sep, os.path.join(data_dir, "val") + os.sep,
        os.path.join(files.entry(data_dir, TFDS_NAME), "<version>", "dataset_info.json")],
        f"{LAYOUT}, or a folder prepared by tensorflow-datasets ({TFDS_NAME}/<version>/)")
