"""Inference time of a compressed ε-ResNet over the full gated one, against their MAC ratio.

Target: |time ratio / MAC ratio - 1| <= 5%, with time ratio = compressed / gated forward time
and MAC ratio = compressed / full MACs (compression.network_cost: conv and dense layers,
side head excluded). The gated network still runs every closed block (its gate multiplies the
computed branch by 0) and every gate, which the compressed plain network has neither of; a
plain full network without gates is timed too, to separate the gates' cost from the blocks'.

The odd-numbered blocks of every stage are closed by zeroing their last convolution (F = 0,
so at ε = 0 their gates are shut while every other gate is open), then compressed with
compression.compress_model; the compressed logits are checked against the gated ones.
All networks are timed on logits only (the side head is pruned from the gated graph).

    python -m benchmarks.compressed_inference [--n 18] [--batch 128] [--steps 5] [--repeats 7]
"""
import argparse
import sys

from benchmarks import common  # first: it quietens TensorFlow's C++ log

import keras
import numpy as np
import tensorflow as tf

from epsilon_resnet import compression
from epsilon_resnet.networks import build_resnet
from epsilon_resnet.structures import cifar_resnet

NAME, TOLERANCE = "compressed_inference", 0.05


def close_odd_blocks(model, architecture):
    """Zero the last conv of every odd-numbered block; returns those blocks' names."""
    closed = [name for name in architecture.block_names() if int(name.split(".")[1]) % 2 == 1]
    for block in closed:
        kernel = model.get_layer(f"{block}_conv2").kernel
        kernel.assign(np.zeros(kernel.shape, np.float32))
    return closed


def logits_function(model):
    """A compiled forward pass to the logits alone, so the gated side head is not run."""
    logits_model = keras.Model(model.input, model.output["logits"])
    return tf.function(lambda images: logits_model(images, training=False))


def main(argv=None):
    parser = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.split("\n\n")[0])
    common.resnet_arguments(parser, 5, "forward passes per timed block", repeats=7)
    args = parser.parse_args(argv)
    watch = common.MachineWatch()

    architecture = cifar_resnet(args.n)
    images = tf.constant(common.random_cifar_batch(args.batch)[0], tf.float32)
    gated = build_resnet(architecture, 10, epsilon=0.0, pixel_mean=128.0, pixel_scale=1 / 128)
    discarded = close_odd_blocks(gated, architecture)
    compressed, kept = compression.compress_model(gated, architecture, discarded)
    plain = build_resnet(cifar_resnet(args.n, gated=False, side_output=False), 10)
    models = {"gated": gated, "compressed": compressed, "plain_full": plain}
    forward = {name: logits_function(model) for name, model in models.items()}
    difference = float(tf.reduce_max(tf.abs(forward["gated"](images) - forward["compressed"](images))))
    if difference > 1e-3:
        raise SystemExit(f"the compressed network's logits differ from the gated one's by {difference}")

    seconds = common.interleaved({name: common.repeat(lambda f=f: f(images).numpy(), args.steps)
                                  for name, f in forward.items()}, args.repeats)
    macs = {name: compression.network_cost(model)["macs"] for name, model in models.items()}
    mac_ratio = macs["compressed"] / macs["gated"]
    time_ratio = common.paired_ratio(seconds, "compressed", "gated")
    deviation = time_ratio["median"] / mac_ratio - 1
    result = {"tolerance": TOLERANCE, "mac_ratio": mac_ratio, "time_ratio": time_ratio, "deviation": deviation,
              "plain_full_time_ratio": common.paired_ratio(seconds, "compressed", "plain_full"),
              "gated_over_plain_full": common.paired_ratio(seconds, "gated", "plain_full"),
              "discarded_blocks": discarded, "kept_stage_units": kept.units_per_stage(), "macs": macs,
              "max_abs_logit_difference": difference,
              "seconds_per_forward": {k: v / args.steps for k, v in common.medians(seconds).items()},
              "verdict": common.verdict(abs(deviation), TOLERANCE)}
    print(f"ResNet-{6 * args.n + 2}, {len(discarded)} of {architecture.gated_blocks} blocks discarded, batch "
          f"{args.batch}: median seconds per forward pass "
          + ", ".join(f"{k} {v:.4f}" for k, v in result["seconds_per_forward"].items()))
    print(f"ratio compressed/gated time = {time_ratio['median']:.3f} (rounds {time_ratio['min']:.3f}.."
          f"{time_ratio['max']:.3f}) vs MAC ratio {mac_ratio:.3f}: {deviation:+.1%}; target within "
          f"{TOLERANCE:.0%}: {result['verdict']}")
    print(f"ratio compressed/plain-full time = {result['plain_full_time_ratio']['median']:.3f} (no gate cost in "
          f"either); gated/plain-full = {result['gated_over_plain_full']['median']:.3f}")
    if result["verdict"] == "MISS":
        plain_deviation = result["plain_full_time_ratio"]["median"] / mac_ratio - 1
        result["reason"] = (
            f"the gates: the gated forward pass takes {result['gated_over_plain_full']['median']:.2f}x the time of the "
            f"same network without gates (each gate makes several elementwise passes over its block's output, "
            f"memory-bound work next to 16- to 64-channel convolutions), time that compression saves on top of the "
            f"MACs. Against the plain full network the compressed time ratio is "
            f"{result['plain_full_time_ratio']['median']:.3f}, {plain_deviation:+.1%} from the MAC ratio"
            + (" (within the tolerance)" if abs(plain_deviation) <= TOLERANCE else
               "; the rest is ops that MACs do not count (batch norm, ReLU, adds, the stem and head)"))
        print(f"MISS reason: {result['reason']}")
    common.finish(NAME, parser, args, result, watch)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
