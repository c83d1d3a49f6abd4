"""Training-step time of ResNet-110 and ε-ResNet-110 with batch norm on TensorFlow's fused
kernel (the default, `model.batch_norm: fused`) over the same networks with Keras' own layer.

Target: the plain step with the fused kernel <= 0.85x the step with Keras' layer, judged on
the 95% interval. Each variant runs the project's compiled training step
(`training.Trainer`) on one fixed batch; interleaved rounds, ratios with 95% intervals. One
profiled step of each plain variant says which share of its op time the batch norms take.

    python -m benchmarks.batch_norm [--n 18] [--batch 128] [--steps 1] [--repeats 40] [--minutes 6]
"""
import contextlib
import sys

from benchmarks import common

NAME, TARGET = "batch_norm", 0.85
VARIANTS = {f"{network}_{kind}": (network == "gated", kind) for network in ("plain", "gated")
            for kind in ("keras", "fused")}


def batch_norm_share(step):
    """Share of one profiled step's op time spent in the batch norms, forward and backward."""
    seconds = common.op_seconds(step)
    return sum(value for op, value in seconds.items() if "_bn" in op.rsplit(":", 1)[0]) / sum(seconds.values())


def main(argv=None):
    parser = common.step_benchmark_parser(__doc__, repeats=40, minutes=6.0)
    args = parser.parse_args(argv)
    watch = common.MachineWatch()
    with contextlib.ExitStack() as stack:
        steps = {name: stack.enter_context(common.cifar_training_step(args.n, args.batch, gated, gated, kind))
                 for name, (gated, kind) in VARIANTS.items()}
        times = common.time_steps(steps, args)
        shares = {name: batch_norm_share(steps[name]) for name in ("plain_keras", "plain_fused")}
    wall = times["wall"]
    ratios = {network: common.paired_ratio(wall, f"{network}_fused", f"{network}_keras")
              for network in ("plain", "gated")}
    result = {"target": TARGET, "ratios": ratios, "verdict": common.interval_verdict(ratios["plain"], TARGET),
              "cpu_time_ratios": {network: common.paired_ratio(times["cpu"], f"{network}_fused", f"{network}_keras")
                                  for network in ratios},
              "batch_norm_op_time_share": shares,
              "seconds_per_step": {k: v / args.steps for k, v in common.medians(wall).items()}}
    print(f"ResNet-{6 * args.n + 2} training step, batch {args.batch}: median seconds per step "
          + ", ".join(f"{k} {v:.3f}" for k, v in result["seconds_per_step"].items()))
    for network, ratio in ratios.items():
        print(f"  {network} fused/keras = {common.ratio_text(ratio)}"
              + (f"; target <= {TARGET}: {result['verdict']}" if network == "plain" else ""))
    print("batch norms' share of the plain step's op time: "
          + ", ".join(f"{k} {v:.1%}" for k, v in shares.items()))
    common.finish(NAME, parser, args, result, watch)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
