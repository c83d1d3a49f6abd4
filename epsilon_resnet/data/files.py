"""Finding dataset files on disk, checking what was found (labels, option values), and the
errors that say what to put where.

Nothing is ever downloaded. tensorflow-datasets is only asked to read a folder it already
prepared (`<data_dir>/<name>/<version>/dataset_info.json`): given anything less it
retries HTTP downloads for minutes before failing.
"""
import os

import numpy as np

from epsilon_resnet.errors import DataError

DEFAULT_DATA_DIR = "~/tensorflow_datasets"  # where tensorflow-datasets prepares data by default


def resolve(data_dir):
    return os.path.abspath(os.path.expanduser(data_dir or DEFAULT_DATA_DIR))


def entry(data_dir, name):
    """`data_dir/name`, or `data_dir` itself when the caller passed the data folder directly."""
    if os.path.basename(os.path.normpath(data_dir)) == name:
        return data_dir
    return os.path.join(data_dir, name)


def not_found(dataset, data_dir, looked_at, what_to_put):
    lines = "\n".join(f"  {path}" for path in looked_at)
    return DataError(
        f"{dataset}: no data found (nothing is downloaded). Looked at:\n{lines}\n"
        f"Put {what_to_put} in {data_dir}, or pass the folder that holds them as the data directory.")


def _version_key(path):
    parts = os.path.basename(path).split(".")
    return tuple(int(p) for p in parts) if all(p.isdigit() for p in parts) else ()


def prepared_tfds_dir(data_dir, name):
    """The newest `<data_dir>/<name>/[<config>/]<version>` folder that tfds prepared, or None."""
    root = entry(data_dir, name)
    if not os.path.isdir(root):
        return None
    found = []
    for path, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if not d.startswith("incomplete")]  # tfds's unfinished preparations
        if "dataset_info.json" in files:
            found.append(path)
        if os.path.relpath(path, root).count(os.sep) >= 1:
            dirs.clear()  # versions sit at most two levels down
    return max(found, key=_version_key) if found else None


def load_tfds(builder_dir):
    import tensorflow_datasets as tfds  # slow import: only when a prepared folder exists

    return tfds.builder_from_directory(builder_dir)


def tfds_arrays(builder_dir, split):
    """A whole split of a prepared tfds folder as (uint8 images, labels) arrays."""
    import tensorflow_datasets as tfds

    split_data = tfds.as_numpy(load_tfds(builder_dir).as_dataset(split=split, batch_size=-1))
    return split_data["image"], split_data["label"]


def check_labels(labels, num_classes, where):
    labels = np.asarray(labels)
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataError(f"{where}: labels must lie in 0..{num_classes - 1}, found {labels.min()}..{labels.max()}")
    return labels.astype(np.int32)


def check_positive(dataset, **options):
    """Each named option must be a whole number >= 1 (an image size, a count)."""
    for option, value in options.items():
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise DataError(f"{dataset}: {option}={value!r} must be a whole number >= 1")
