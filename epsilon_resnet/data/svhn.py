"""SVHN (cropped digits) from its .mat files or a folder tensorflow-datasets prepared.

Train on train + extra (604,388 images) as the original did, evaluate on test (26,032)
(docs/original.md §6); or, with the option `holdout=K`, hold out a fixed K of the training
images as the evaluation set and train on the rest.
"""
import os

import numpy as np
import scipy.io

from epsilon_resnet.data import augment, files
from epsilon_resnet.data.source import ArraySource
from epsilon_resnet.errors import DataError

MAT_FILES = {"train": "train_32x32.mat", "extra": "extra_32x32.mat", "test": "test_32x32.mat"}
TFDS_NAME = "svhn_cropped"


def read_mat(path):
    """(images (N, 32, 32, 3) uint8, labels 0..9): the files store digit 0 as label 10."""
    expected = "a MATLAB file with X (32 x 32 x 3 x N uint8) and y (N x 1 labels 1..10)"
    try:
        mat = scipy.io.loadmat(path)
    except Exception as error:  # truncated or not a .mat file
        raise DataError(f"{path}: cannot read ({error!r}); expected {expected}") from error
    images, labels = mat.get("X"), mat.get("y")
    if (images is None or labels is None or images.dtype != np.uint8 or images.shape[:3] != (32, 32, 3)
            or labels.size != images.shape[3]):
        shapes = {key: getattr(mat.get(key), "shape", None) for key in ("X", "y")}
        raise DataError(f"{path}: found {shapes}; expected {expected}")
    labels = labels.reshape(-1)
    return np.ascontiguousarray(images.transpose(3, 0, 1, 2)), files.check_labels(np.where(labels == 10, 0, labels), 10, path)


def _arrays(data_dir, train_splits):
    paths = {split: files.entry(data_dir, MAT_FILES[split]) for split in (*train_splits, "test")}
    if all(os.path.isfile(path) for path in paths.values()):
        return [read_mat(paths[split]) for split in train_splits], read_mat(paths["test"])
    builder_dir = files.prepared_tfds_dir(data_dir, TFDS_NAME)
    if builder_dir:
        return [files.tfds_arrays(builder_dir, split) for split in train_splits], files.tfds_arrays(builder_dir, "test")
    tfds_dir = os.path.join(files.entry(data_dir, TFDS_NAME), "<version>", "dataset_info.json")
    raise files.not_found(
        "svhn", data_dir, [*paths.values(), tfds_dir],
        f"{', '.join(MAT_FILES[split] for split in paths)} (to train without extra_32x32.mat: "
        f"data.options.use_extra: false in the config, use_extra=False in code), "
        f"or a folder prepared by tensorflow-datasets ({TFDS_NAME}/<version>/)")


def svhn(data_dir=None, use_extra=True, holdout=0):
    """use_extra: train on train + extra (the original) or train only; holdout: how many
    training images to hold out as the evaluation set (0: the test set)."""
    if not isinstance(use_extra, bool):
        raise DataError(f"svhn: use_extra={use_extra!r} must be true (train + extra, the original) or false")
    train_parts, test = _arrays(files.resolve(data_dir), ("train", "extra") if use_extra else ("train",))
    train = (np.concatenate([images for images, _ in train_parts]), np.concatenate([labels for _, labels in train_parts]))
    return ArraySource("svhn", 10, train, test, augment.SVHN_TRAIN, holdout)
