#!/usr/bin/env python3
"""Write a small class-balanced CIFAR-10 sample in the official python-version layout.

The sample is what the README quickstart trains on (data/cifar10-sample): a real
CIFAR-10 subset small enough to commit. It keeps the official layout (data_batch_1..5,
test_batch, batches.meta under cifar-10-batches-py/) so that it is read by exactly the code
that reads the full dataset.

    python scripts/make_cifar10_sample.py --src /tmp/cifar10full --out data/cifar10-sample

--src is a folder holding cifar-10-batches-py/ (or that folder itself), e.g. the output of
shared/data/cifar10/make_cifar10.py. Needs only numpy.
"""
import argparse
import os
import pickle

import numpy as np

FOLDER = "cifar-10-batches-py"
TRAIN_BATCHES = [f"data_batch_{k}" for k in range(1, 6)]


def read_batches(folder, names):
    data, labels, filenames = [], [], []
    for name in names:
        with open(os.path.join(folder, name), "rb") as f:
            batch = pickle.load(f, encoding="bytes")
        data.append(np.asarray(batch[b"data"], np.uint8))
        labels += list(batch[b"labels"])
        filenames += list(batch.get(b"filenames", [b""] * len(batch[b"labels"])))
    return np.concatenate(data), np.array(labels), filenames


def balanced_choice(labels, per_class, rng):
    """`per_class` random indices of every class, in a shuffled order."""
    chosen = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        if len(members) < per_class:
            raise SystemExit(f"class {label} has {len(members)} images, fewer than the {per_class} asked for")
        chosen.append(rng.choice(members, per_class, replace=False))
    return rng.permutation(np.concatenate(chosen))


def write_batch(path, batch_label, data, labels, filenames, idx):
    entry = {b"batch_label": batch_label.encode(), b"labels": [int(labels[i]) for i in idx],
             b"data": data[idx], b"filenames": [filenames[i] for i in idx]}
    with open(path, "wb") as f:
        pickle.dump(entry, f, protocol=2)  # the official files' protocol


def main(argv=None):
    parser = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.split("\n")[0])
    parser.add_argument("--src", required=True, help=f"folder holding {FOLDER}/ (the full dataset)")
    parser.add_argument("--out", required=True, help=f"folder to write {FOLDER}/ into")
    parser.add_argument("--train-per-class", type=int, default=50)
    parser.add_argument("--test-per-class", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    src = args.src if os.path.basename(os.path.normpath(args.src)) == FOLDER else os.path.join(args.src, FOLDER)
    out = os.path.join(args.out, FOLDER)
    os.makedirs(out, exist_ok=True)
    rng = np.random.default_rng(args.seed)

    data, labels, filenames = read_batches(src, TRAIN_BATCHES)
    order = balanced_choice(labels, args.train_per_class, rng)
    for k, idx in enumerate(np.array_split(order, len(TRAIN_BATCHES)), 1):
        write_batch(os.path.join(out, f"data_batch_{k}"), f"training batch {k} of 5", data, labels, filenames, idx)
    data, labels, filenames = read_batches(src, ["test_batch"])
    write_batch(os.path.join(out, "test_batch"), "testing batch 1 of 1", data, labels, filenames,
                balanced_choice(labels, args.test_per_class, rng))

    with open(os.path.join(src, "batches.meta"), "rb") as f:
        meta = pickle.load(f, encoding="bytes")
    meta[b"num_cases_per_batch"] = len(order) // len(TRAIN_BATCHES)
    with open(os.path.join(out, "batches.meta"), "wb") as f:
        pickle.dump(meta, f, protocol=2)
    print("wrote", out)


if __name__ == "__main__":
    main()
