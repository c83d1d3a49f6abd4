"""Tiny datasets written in the real on-disk formats, so tests read them the way real data is read.

Each writer is deterministic in its arguments: `cifar_splits(...)` gives back the exact
arrays that `write_cifar*_...(...)` with the same arguments wrote.
"""
import contextlib
import os
import pickle
import shutil
import tarfile
from unittest import mock

import cv2
import numpy as np
import scipy.io

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def cifar_splits(num_train, num_test, num_classes, seed):
    """((train_images, train_labels), (test_images, test_labels)): random pixels, every class present."""
    rng = np.random.default_rng(seed)

    def split(count):
        images = rng.integers(0, 256, (count, 32, 32, 3), dtype=np.uint8)
        return images, rng.permutation(np.arange(count) % num_classes).astype(np.int64)

    return split(num_train), split(num_test)


def _rows(images):
    """(N, 32, 32, 3) -> (N, 3072) rows of the R, G, B planes, as the CIFAR files store them."""
    return images.transpose(0, 3, 1, 2).reshape(len(images), -1)


def _pickle(path, entry):
    with open(path, "wb") as f:
        pickle.dump(entry, f, protocol=2)


def write_cifar10_python(dir, num_train=30, num_test=10, seed=0):
    """Write dir/cifar-10-batches-py (data_batch_1..5, test_batch, batches.meta); return dir."""
    (train_images, train_labels), (test_images, test_labels) = cifar_splits(num_train, num_test, 10, seed)
    root = os.path.join(dir, "cifar-10-batches-py")
    os.makedirs(root, exist_ok=True)
    batches = np.array_split(np.arange(num_train), 5)
    for k, idx in enumerate(batches, 1):
        _pickle(os.path.join(root, f"data_batch_{k}"),
                {b"batch_label": f"training batch {k} of 5".encode(), b"labels": train_labels[idx].tolist(),
                 b"data": _rows(train_images[idx]), b"filenames": [b"img%d.png" % i for i in idx]})
    _pickle(os.path.join(root, "test_batch"),
            {b"batch_label": b"testing batch 1 of 1", b"labels": test_labels.tolist(), b"data": _rows(test_images),
             b"filenames": [b"img%d.png" % i for i in range(num_test)]})
    _pickle(os.path.join(root, "batches.meta"),
            {b"label_names": [c.encode() for c in CIFAR10_CLASSES], b"num_cases_per_batch": len(batches[0]),
             b"num_vis": 3072})
    return dir


def _records(path, label_columns, images):
    with open(path, "wb") as f:
        f.write(np.concatenate([*(np.asarray(c, np.uint8)[:, None] for c in label_columns), _rows(images)], 1).tobytes())


def write_cifar10_binary(dir, num_train=30, num_test=10, seed=0):
    """Write dir/cifar-10-batches-bin (data_batch_1..5.bin, test_batch.bin, batches.meta.txt); return dir."""
    (train_images, train_labels), (test_images, test_labels) = cifar_splits(num_train, num_test, 10, seed)
    root = os.path.join(dir, "cifar-10-batches-bin")
    os.makedirs(root, exist_ok=True)
    for k, idx in enumerate(np.array_split(np.arange(num_train), 5), 1):
        _records(os.path.join(root, f"data_batch_{k}.bin"), [train_labels[idx]], train_images[idx])
    _records(os.path.join(root, "test_batch.bin"), [test_labels], test_images)
    with open(os.path.join(root, "batches.meta.txt"), "w") as f:
        f.write("\n".join(CIFAR10_CLASSES) + "\n")
    return dir


def write_cifar100_python(dir, num_train=200, num_test=100, seed=0):
    """Write dir/cifar-100-python (train, test, meta); coarse label = fine // 5; return dir."""
    (train_images, train_labels), (test_images, test_labels) = cifar_splits(num_train, num_test, 100, seed)
    root = os.path.join(dir, "cifar-100-python")
    os.makedirs(root, exist_ok=True)
    for name, images, labels in (("train", train_images, train_labels), ("test", test_images, test_labels)):
        _pickle(os.path.join(root, name), {b"data": _rows(images), b"fine_labels": labels.tolist(),
                                           b"coarse_labels": (labels // 5).tolist(), b"batch_label": name.encode()})
    _pickle(os.path.join(root, "meta"), {b"fine_label_names": [b"c%d" % i for i in range(100)],
                                         b"coarse_label_names": [b"s%d" % i for i in range(20)]})
    return dir


def write_cifar100_binary(dir, num_train=200, num_test=100, seed=0):
    """Write dir/cifar-100-binary (train.bin, test.bin: coarse byte, fine byte, pixels); return dir."""
    (train_images, train_labels), (test_images, test_labels) = cifar_splits(num_train, num_test, 100, seed)
    root = os.path.join(dir, "cifar-100-binary")
    os.makedirs(root, exist_ok=True)
    for name, images, labels in (("train", train_images, train_labels), ("test", test_images, test_labels)):
        _records(os.path.join(root, f"{name}.bin"), [labels // 5, labels], images)
    for name, count in (("fine_label_names.txt", 100), ("coarse_label_names.txt", 20)):
        with open(os.path.join(root, name), "w") as f:
            f.write("\n".join(f"c{i}" for i in range(count)) + "\n")
    return dir


def tar_folder(dir, folder, tarball):
    """Replace dir/folder by dir/tarball (gzipped, folder at the archive's top); return dir."""
    with tarfile.open(os.path.join(dir, tarball), "w:gz") as tar:
        tar.add(os.path.join(dir, folder), arcname=folder)
    shutil.rmtree(os.path.join(dir, folder))
    return dir


@contextlib.contextmanager
def _unverified_manual_files():
    # tfds checks manually placed files against the real datasets' sha256; tiny copies can't match.
    from tensorflow_datasets.core.download import download_manager

    with mock.patch.object(download_manager.DownloadManager, "_register_or_validate_checksums",
                           lambda self, url, url_info, path: None):
        yield


def prepare_tfds(data_dir, name, manual_dir):
    """Let tensorflow-datasets prepare `name` in data_dir from the files in manual_dir, offline."""
    import tensorflow_datasets as tfds

    config = tfds.download.DownloadConfig(manual_dir=manual_dir, try_download_gcs=False)
    with _unverified_manual_files():
        tfds.builder(name, data_dir=data_dir).download_and_prepare(download_config=config)
    return data_dir


def write_svhn_mat(path, images, labels):
    """SVHN's .mat form: X is 32 x 32 x 3 x N, y is N x 1 with digit 0 stored as 10."""
    labels = np.asarray(labels).reshape(-1, 1)
    scipy.io.savemat(path, {"X": np.ascontiguousarray(images.transpose(1, 2, 3, 0)),
                            "y": np.where(labels == 0, 10, labels).astype(np.uint8)})


def write_image(path, image, ext=".JPEG"):
    """Write an RGB uint8 image encoded as `ext` (".JPEG" or ".png") to path, whatever path's name."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    ok, data = cv2.imencode(ext.lower(), np.ascontiguousarray(image[:, :, ::-1]))
    assert ok
    with open(path, "wb") as f:
        f.write(data.tobytes())


def smooth_image(height, width, seed):
    """A random but smooth RGB image, so JPEG keeps it close to what was written."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
    return cv2.resize(small, (width, height), interpolation=cv2.INTER_LINEAR)
