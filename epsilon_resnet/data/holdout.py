"""A fixed validation split of the training images, for choosing ε (and anything else one
tunes) without looking at the test set. Off by default: the paper trains on every training
image and reports the test set (docs/original.md §6).

Which images: the `count` training images whose pixels have the smallest BLAKE2b hashes.
That is a pseudo-random sample (so spread over the classes, and for SVHN over train and
extra), fixed by the images alone: the same for every run and seed, and the same whether
the data was read from the pickles, the binary records or a tensorflow-datasets folder,
which store the images in different orders (a seeded permutation of positions, or "the last
5,000", would pick different images from each form; the last 5,000 of SVHN are all extra).
"""
import hashlib

import numpy as np

from epsilon_resnet.errors import DataError


def check_count(count, num_train, dataset):
    """`count` must be a whole number with at least one training image left over."""
    if isinstance(count, bool) or not isinstance(count, (int, np.integer)):
        raise DataError(f"{dataset}: holdout={count!r} must be a whole number of training images "
                        f"(0 = off, e.g. 5000)")
    if not 0 <= count < num_train:
        raise DataError(f"{dataset}: holdout={count} must lie in 0..{num_train - 1}: it is how many of the "
                        f"{num_train} training images become the evaluation set, and training needs the rest")


def held_out(images, count):
    """A boolean mask of the `count` images (N, ...) uint8 with the smallest pixel hashes."""
    keys = np.array([int.from_bytes(hashlib.blake2b(image.tobytes(), digest_size=8).digest(), "big")
                     for image in images], np.uint64)
    mask = np.zeros(len(images), bool)
    mask[np.argsort(keys, kind="stable")[:count]] = True
    return mask


def split(train, test, count, dataset):
    """(training set, evaluation set): `train` without the held-out images and those images,
    in their training-set order; or (train, test) unchanged when count is 0."""
    images, labels = train
    check_count(count, len(images), dataset)
    if count == 0:
        return train, test
    mask = held_out(images, count)
    return (images[~mask], labels[~mask]), (images[mask], labels[mask])
