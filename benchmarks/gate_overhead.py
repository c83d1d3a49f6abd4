"""Training-step time of ε-ResNet-110 over the same ResNet without gates and side head.

Target: gated / plain <= 1.03. Both run the project's compiled training step
(`training.Trainer`), so the gated side includes the gates' forward and backward ops, their
moving-average updates, the cross-replica reduction and the side loss. A third variant, gated
without the side head, splits the overhead into gates and side head. On a miss, one profiled
step of the gated network says how much op time the gates' forward and backward ops take.

    python -m benchmarks.gate_overhead [--n 18] [--batch 128] [--steps 3] [--repeats 7]
"""
import argparse
import contextlib
import sys

from benchmarks import common

NAME, TARGET = "gate_overhead", 1.03


def gate_profile(step, steps):
    """Shares of the gated step's op time: gate forward, gate backward, side head, the rest."""
    seconds = common.op_seconds(common.repeat(step, steps))
    shares = {"gate_forward": 0.0, "gate_backward": 0.0, "side_head": 0.0, "rest": 0.0}
    for op, value in seconds.items():
        if "_gate" in op:
            shares["gate_backward" if op.startswith("gradient_tape/") else "gate_forward"] += value
        elif "/side_" in op:
            shares["side_head"] += value
        else:
            shares["rest"] += value
    total = sum(shares.values())
    return {key: value / total for key, value in shares.items()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    common.resnet_arguments(parser, 3, "training steps per timed block", repeats=7)
    args = parser.parse_args(argv)
    watch = common.MachineWatch()

    with contextlib.ExitStack() as stack:
        steps = {name: stack.enter_context(common.cifar_training_step(args.n, args.batch, gated, side))
                 for name, gated, side in (("plain", False, False), ("gated", True, True),
                                           ("gated_no_side", True, False))}
        seconds = common.interleaved({k: common.repeat(s, args.steps) for k, s in steps.items()}, args.repeats)
        ratio = common.paired_ratio(seconds, "gated", "plain")
        result = {"target": TARGET, "ratio": ratio,
                  "gates_only_ratio": common.paired_ratio(seconds, "gated_no_side", "plain"),
                  "side_head_ratio": common.paired_ratio(seconds, "gated", "gated_no_side"),
                  "seconds_per_step": {k: v / args.steps for k, v in common.medians(seconds).items()},
                  "verdict": common.verdict(ratio["median"], TARGET)}
        print(f"ResNet-{6 * args.n + 2} training step, batch {args.batch}: median seconds per step "
              + ", ".join(f"{k} {v:.3f}" for k, v in result["seconds_per_step"].items()))
        print(f"ratio gated/plain = {ratio['median']:.3f} (rounds {ratio['min']:.3f}..{ratio['max']:.3f}); "
              f"gates alone {result['gates_only_ratio']['median']:.3f}, side head "
              f"{result['side_head_ratio']['median']:.3f}; target <= {TARGET}: {result['verdict']}")
        if result["verdict"] == "MISS":
            shares = result["gated_op_time_shares"] = gate_profile(steps["gated"], args.steps)
            result["reason"] = (
                f"the gates' ops take {shares['gate_forward'] + shares['gate_backward']:.0%} of the gated step's op "
                f"time ({shares['gate_forward']:.0%} forward, {shares['gate_backward']:.0%} backward), the side head "
                f"{shares['side_head']:.1%}. A gate reads its whole block output three times (|F| for the max and "
                f"mean of the score and the monitors, the multiply by the gate) and its gradient once more: "
                f"memory-bound passes that cost a few percent next to the 16- to 64-channel convolutions of a CPU "
                f"step. No gradient flows through the score (tf.stop_gradient), so the backward share is small")
            print(f"MISS reason: {result['reason']}")
    common.finish(NAME, parser, args, result, watch)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
