"""Input pipeline throughput: (a) the CIFAR training pipeline against the ResNet-110 training
rate, (b) the ImageNet training pipeline on real-size JPEGs, per core.

(a) Target: pipeline images/s >= 20x training images/s, i.e. feeding the network takes at most
~5% of the CPU it trains on. The pipeline is `DataSource.train_dataset` (index shuffle,
pad/crop/flip augmentation, batching) read from a cifar-10-batches-py folder; the training
rate is the project's compiled training step on a fixed batch. Blocks of each alternate.
While a training block runs, the pipeline's prefetch buffer refills, so each pipeline block
starts with up to a few ready batches: an optimistic bias of at most buffer/--batches.
(b) No target: images/s of `imagenet` ImageFolderSource's training stream (decode, random
resized crop to 224, colour jitter, flip) and images/s per core. Unless --imagenet-data is
given, a temporary train/<wnid>/*.JPEG folder of --jpegs smooth-noise 500x375 JPEGs is made
with OpenCV; its files sit in the page cache, so this measures decoding and augmentation,
not the disk.

    python -m benchmarks.input_pipeline [--cifar-data DIR] [--imagenet-data DIR] [--repeats 5]
"""
import argparse
import os
import statistics
import sys
import tempfile

from benchmarks import common  # first: it quietens TensorFlow's C++ log

import cv2
import numpy as np

from epsilon_resnet import data

NAME, TARGET = "input_pipeline", 20.0
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FULL_CIFAR, SAMPLE_CIFAR = "/tmp/cifar10full", os.path.join(REPO, "data", "cifar10-sample")


def write_jpegs(folder, count, classes=10, size=(500, 375), seed=0):
    """count training JPEGs in `classes` class folders, plus one per class in val/ (the source needs it).

    Smooth colour noise (random 16x12 pixels, bicubic upscaled, a little fine grain) compresses
    like a photograph rather than like white noise or a flat colour.
    """
    rng = np.random.default_rng(seed)
    for index in range(count + classes):
        split, wnid = ("train", index % classes) if index < count else ("val", index - count)
        coarse = rng.uniform(0, 255, (12, 16, 3)).astype(np.float32)
        image = cv2.resize(coarse, size, interpolation=cv2.INTER_CUBIC) + rng.normal(0, 6, (size[1], size[0], 3))
        path = os.path.join(folder, split, f"n{wnid:08d}", f"image_{index:05d}.JPEG")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        cv2.imwrite(path, np.clip(image, 0, 255).astype(np.uint8), [cv2.IMWRITE_JPEG_QUALITY, 90])
    return folder


def batches_block(dataset, batches):
    iterator = iter(dataset)

    def block():
        for _ in range(batches):
            next(iterator)
    return block


def main(argv=None):
    parser = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.split("\n\n")[0])
    parser.add_argument("--cifar-data", default=FULL_CIFAR if os.path.isdir(FULL_CIFAR) else SAMPLE_CIFAR,
                        help="folder holding cifar-10-batches-py (default: the full set in /tmp/cifar10full if "
                             "present, else the repository's sample)")
    parser.add_argument("--imagenet-data", help="ImageNet folder with train/<wnid>/*.JPEG and val/ "
                                                "(default: generated JPEGs)")
    parser.add_argument("--jpegs", type=int, default=200, help="generated training JPEGs")
    common.resnet_arguments(parser, 2, "training steps per timed block", repeats=5)
    parser.add_argument("--batches", type=int, default=100, help="CIFAR pipeline batches per timed block")
    parser.add_argument("--imagenet-batch", type=int, default=32)
    parser.add_argument("--imagenet-batches", type=int, default=10, help="ImageNet batches per timed block")
    args = parser.parse_args(argv)
    watch = common.MachineWatch()

    cifar = data.get_source("cifar10", args.cifar_data)
    with common.cifar_training_step(args.n, args.batch, gated=True, side_output=True) as step:
        seconds = common.interleaved({"pipeline": batches_block(cifar.train_dataset(args.batch, seed=0), args.batches),
                                      "training": common.repeat(step, args.steps)}, args.repeats)
    images = {"pipeline": args.batch * args.batches, "training": args.batch * args.steps}
    per_round = {name: [images[name] / s for s in values] for name, values in seconds.items()}  # images/s
    rates = common.medians(per_round)
    ratio = common.paired_ratio(per_round, "pipeline", "training")
    cifar_result = {"target": TARGET, "data": os.path.abspath(args.cifar_data), "train_images": cifar.num_train,
                    "images_per_second": rates, "ratio": ratio,
                    "verdict": common.verdict(ratio["median"], TARGET, at_most=False)}
    print(f"(a) CIFAR-10 pipeline {rates['pipeline']:.0f} images/s ({cifar.num_train} images from "
          f"{args.cifar_data}); ε-ResNet-{6 * args.n + 2} training {rates['training']:.1f} images/s (batch "
          f"{args.batch})")
    print(f"    ratio pipeline/training = {ratio['median']:.1f} (rounds {ratio['min']:.1f}..{ratio['max']:.1f}); "
          f"target >= {TARGET:.0f}: {cifar_result['verdict']}")

    with tempfile.TemporaryDirectory(prefix="benchmark-imagenet-") as tmp:
        folder = args.imagenet_data or write_jpegs(tmp, args.jpegs)
        imagenet = data.get_source("imagenet", folder)
        block = batches_block(imagenet.train_dataset(args.imagenet_batch, seed=0), args.imagenet_batches)
        imagenet_seconds = common.interleaved({"imagenet": block}, args.repeats)["imagenet"]
    rate = args.imagenet_batch * args.imagenet_batches / statistics.median(imagenet_seconds)
    imagenet_result = {"data": args.imagenet_data or f"{args.jpegs} generated 500x375 JPEGs",
                       "images_per_second": rate, "cores": common.cores(),
                       "images_per_second_per_core": rate / common.cores()}
    print(f"(b) ImageNet pipeline {rate:.0f} images/s on {common.cores()} cores = "
          f"{imagenet_result['images_per_second_per_core']:.0f} images/s per core "
          f"({imagenet_result['data']}; no target)")
    common.finish(NAME, parser, args, {"cifar": cifar_result, "imagenet": imagenet_result}, watch)
    return cifar_result, imagenet_result


if __name__ == "__main__":
    main(sys.argv[1:])
