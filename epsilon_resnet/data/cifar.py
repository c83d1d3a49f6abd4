"""CIFAR-10 and CIFAR-100 from any of the forms they are distributed in.

The python pickles and the binary records, each as the extracted folder or the original
tarball (read in place, in one pass), or a folder tensorflow-datasets prepared. Train on
all 50,000 training images, evaluate on the 10,000 test images (docs/original.md §6); or,
with the option `holdout=K`, train on 50,000 - K and evaluate on a fixed K of them.
"""
import dataclasses
import errno
import functools
import io
import os
import pickle
import tarfile
import zlib

import numpy as np

from epsilon_resnet.data import augment, files
from epsilon_resnet.data.source import ArraySource
from epsilon_resnet.errors import DataError

PIXELS = 32 * 32 * 3


def parse_pickle(data, where, label_key):
    """A python-version batch: a pickled dict with b'data' (N x 3072, R, G, B planes) and labels."""
    expected = f"a pickled dict with b'data' (N x {PIXELS} uint8) and {label_key!r} (N labels)"
    try:
        batch = pickle.load(io.BytesIO(data), encoding="bytes")
    except Exception as error:  # truncated or not a pickle: EOFError, UnpicklingError, ...
        raise DataError(f"{where}: cannot unpickle ({error!r}); expected {expected}") from error
    if not isinstance(batch, dict) or b"data" not in batch or label_key not in batch:
        raise DataError(f"{where}: expected {expected}")
    pixels, labels = np.asarray(batch[b"data"]), np.asarray(batch[label_key])
    if pixels.dtype != np.uint8 or pixels.ndim != 2 or pixels.shape[1] != PIXELS or len(labels) != len(pixels):
        raise DataError(f"{where}: b'data' is {pixels.dtype} {pixels.shape} with {len(labels)} labels; "
                        f"expected {expected}")
    return to_images(pixels), labels


def parse_records(data, where, label_bytes):
    """A binary-version file: records of `label_bytes` label bytes (the last one is used) + 3072 pixels."""
    record = label_bytes + PIXELS
    if len(data) % record:
        raise DataError(f"{where}: {len(data)} bytes is not a whole number of {record}-byte records "
                        f"({label_bytes} label byte(s) + {PIXELS} pixel bytes each)")
    records = np.frombuffer(data, np.uint8).reshape(-1, record)
    return to_images(records[:, label_bytes:]), records[:, label_bytes - 1]


def to_images(pixels):
    """(N, 3072) rows of R, G, B planes -> (N, 32, 32, 3)."""
    return np.ascontiguousarray(pixels.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))


@dataclasses.dataclass(frozen=True)
class Layout:
    """One on-disk form: the extracted folder, the tarball holding it, and how to parse its files."""
    folder: str
    tarball: str
    train_files: tuple
    test_files: tuple
    parse: object  # (bytes, where) -> (images, labels)


@dataclasses.dataclass(frozen=True)
class Cifar:
    name: str
    num_classes: int
    layouts: tuple
    tfds_name: str


def _batches(prefix, count, suffix=""):
    return tuple(f"{prefix}{i}{suffix}" for i in range(1, count + 1))


CIFAR10 = Cifar("cifar10", 10, (
    Layout("cifar-10-batches-py", "cifar-10-python.tar.gz", _batches("data_batch_", 5), ("test_batch",),
           functools.partial(parse_pickle, label_key=b"labels")),
    Layout("cifar-10-batches-bin", "cifar-10-binary.tar.gz", _batches("data_batch_", 5, ".bin"), ("test_batch.bin",),
           functools.partial(parse_records, label_bytes=1)),
), tfds_name="cifar10")

CIFAR100 = Cifar("cifar100", 100, (
    Layout("cifar-100-python", "cifar-100-python.tar.gz", ("train",), ("test",),
           functools.partial(parse_pickle, label_key=b"fine_labels")),
    Layout("cifar-100-binary", "cifar-100-binary.tar.gz", ("train.bin",), ("test.bin",),  # coarse, fine label bytes
           functools.partial(parse_records, label_bytes=2)),
), tfds_name="cifar100")


def read_folder(folder, names):
    if not os.access(folder, os.R_OK | os.X_OK):  # else its files would look missing
        raise PermissionError(errno.EACCES, "Permission denied", folder)
    found = {}
    for name in names:
        path = os.path.join(folder, name)
        if not os.path.isfile(path):
            raise DataError(f"{path} is missing: {folder} must hold {', '.join(names)}")
        with open(path, "rb") as f:
            found[name] = (f.read(), path)
    return found


def read_tarball(tarball, folder, names):
    """The named files of `folder` inside the tarball, read in one pass over the stream."""
    wanted = {f"{folder}/{name}": name for name in names}
    found = {}
    try:
        with tarfile.open(tarball) as tar:
            for member in tar:
                name = wanted.get(os.path.normpath(member.name))
                if name and member.isfile():
                    found[name] = (tar.extractfile(member).read(), f"{tarball}:{member.name}")
    except (tarfile.TarError, EOFError, OSError, zlib.error) as error:
        raise DataError(f"{tarball}: unreadable tarball ({error!r}); expected the {folder}/ folder, gzipped") from error
    missing = [f"{folder}/{name}" for name in names if name not in found]
    if missing:
        raise DataError(f"{tarball}: lacks {', '.join(missing)}")
    return found


def _split(layout, found, names):
    parts = [layout.parse(*found[name]) for name in names]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def _arrays(cifar, data_dir):
    """(train, test) as ((images, labels), (images, labels)), and where they came from."""
    looked_at = []
    for layout in cifar.layouts:
        names = layout.train_files + layout.test_files
        folder, tarball = files.entry(data_dir, layout.folder), files.entry(data_dir, layout.tarball)
        looked_at += [folder + os.sep, tarball]
        if os.path.isdir(folder):
            where, found = folder, read_folder(folder, names)
        elif os.path.isfile(tarball):
            where, found = tarball, read_tarball(tarball, layout.folder, names)
        else:
            continue
        return _split(layout, found, layout.train_files), _split(layout, found, layout.test_files), where
    builder_dir = files.prepared_tfds_dir(data_dir, cifar.tfds_name)
    looked_at.append(os.path.join(files.entry(data_dir, cifar.tfds_name), "<version>", "dataset_info.json"))
    if builder_dir:
        return files.tfds_arrays(builder_dir, "train"), files.tfds_arrays(builder_dir, "test"), builder_dir
    python, binary = cifar.layouts
    raise files.not_found(
        cifar.name, data_dir, looked_at,
        f"{python.tarball} or the extracted {python.folder}/ folder ({', '.join(python.train_files + python.test_files)}); "
        f"or the binary version, {binary.tarball} or {binary.folder}/; "
        f"or a folder prepared by tensorflow-datasets ({cifar.tfds_name}/<version>/)")


def load(cifar, data_dir=None, holdout=0):
    data_dir = files.resolve(data_dir)
    (train_images, train_labels), (test_images, test_labels), where = _arrays(cifar, data_dir)
    train = (train_images, files.check_labels(train_labels, cifar.num_classes, where))
    test = (test_images, files.check_labels(test_labels, cifar.num_classes, where))
    return ArraySource(cifar.name, cifar.num_classes, train, test, augment.CIFAR_TRAIN, holdout)


def cifar10(data_dir=None, holdout=0):
    """holdout: how many training images to hold out as the evaluation set (0: the test set)."""
    return load(CIFAR10, data_dir, holdout)


def cifar100(data_dir=None, holdout=0):
    """holdout: how many training images to hold out as the evaluation set (0: the test set)."""
    return load(CIFAR100, data_dir, holdout)
