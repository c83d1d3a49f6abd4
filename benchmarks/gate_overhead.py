"""Training-step time of ε-ResNet-110 over the same ResNet without gates and side head.

Target: gated / plain <= 1.03, judged on the 95% confidence interval of the ratio. All
variants run the project's compiled training step (`training.Trainer`), so the gated side
includes the gates' forward and backward ops, their moving-average updates, the
cross-replica reduction and the side loss. A third variant, gated without the side head,
splits the overhead into gates and side head; gated without the skipped backward of closed
blocks (train.skip_closed_backward: false) says what the skip costs a network whose gates are
all open; the same plain and gated pair with Keras' own batch norm (`model.batch_norm: keras`)
gives the ratio against the slower step the target was first measured on. Each round times
one step of every variant back to back (order reversed every round); the ratio is the
geometric mean of the per-round ratios with a t-interval. One profiled step of the gated network says which ops the gates spend their
time in.

    python -m benchmarks.gate_overhead [--n 18] [--batch 128] [--steps 1] [--repeats 150] [--minutes 10]
"""
import contextlib
import sys

from benchmarks import common

NAME, TARGET = "gate_overhead", 1.03
VARIANTS = (("plain", False, False, "fused", True), ("gated", True, True, "fused", True),
            ("gated_no_side", True, False, "fused", True), ("gated_no_skip", True, True, "fused", False),
            ("plain_keras_bn", False, False, "keras", True), ("gated_keras_bn", True, True, "keras", True))
GATE_STATISTICS = ("Abs", "Max", "Min", "Mean")  # the reductions that decide the gate and feed its monitors


def op_share(op):
    """Which share of the gated step an op ("scope/op:Type") belongs to."""
    scope, op_type = op.rsplit(":", 1)
    if "_gate" not in scope:
        return "side_head" if "/side_" in scope else "rest"
    if scope.startswith("gradient_tape/"):
        return "gate_backward"
    if op_type in GATE_STATISTICS:
        return "gate_statistics"
    # The residual add happens inside the gate layer; the plain network has the same add.
    return "residual_add" if op_type == "AddV2" else "gate_other"


def gate_profile(step, steps):
    """Shares of the gated step's op time (see `op_share`)."""
    shares = dict.fromkeys(("gate_statistics", "gate_other", "gate_backward", "residual_add", "side_head", "rest"),
                           0.0)
    for op, value in common.op_seconds(common.repeat(step, steps)).items():
        shares[op_share(op)] += value
    total = sum(shares.values())
    return {key: value / total for key, value in shares.items()}


def describe(name, ratio):
    return (f"{name} {ratio['ratio']:.4f} ({ratio['confidence']:.0%} CI {ratio['low']:.4f}..{ratio['high']:.4f}; "
            f"median {ratio['median']:.4f}, rounds {ratio['min']:.3f}..{ratio['max']:.3f})")


def measure(steps, args):
    """Interleaved wall and CPU times of every variant, and the ratios they give."""
    times = common.time_steps(steps, args)
    wall, cpu = times["wall"], times["cpu"]
    ratio = common.paired_ratio(wall, "gated", "plain")
    return {"target": TARGET, "ratio": ratio, "verdict": common.interval_verdict(ratio, TARGET),
            "cpu_time_ratio": common.paired_ratio(cpu, "gated", "plain"),
            "gates_only_ratio": common.paired_ratio(wall, "gated_no_side", "plain"),
            "side_head_ratio": common.paired_ratio(wall, "gated", "gated_no_side"),
            "skip_ratio": common.paired_ratio(wall, "gated", "gated_no_skip"),
            "keras_batch_norm_ratio": common.paired_ratio(wall, "gated_keras_bn", "plain_keras_bn"),
            "seconds_per_step": {k: v / args.steps for k, v in common.medians(wall).items()}}


def main(argv=None):
    parser = common.step_benchmark_parser(__doc__, repeats=150, minutes=10.0)
    args = parser.parse_args(argv)
    watch = common.MachineWatch()

    with contextlib.ExitStack() as stack:
        steps = {name: stack.enter_context(common.cifar_training_step(args.n, args.batch, *settings))
                 for name, *settings in VARIANTS}
        result = measure(steps, args)
        result["gated_op_time_shares"] = shares = gate_profile(steps["gated"], 2)
    print(f"ResNet-{6 * args.n + 2} training step, batch {args.batch}: median seconds per step "
          + ", ".join(f"{k} {v:.3f}" for k, v in result["seconds_per_step"].items()))
    print(describe("ratio gated/plain =", result["ratio"]) + f"; target <= {TARGET}: {result['verdict']}")
    print(describe("  CPU-time ratio", result["cpu_time_ratio"]))
    print(describe("  gates alone", result["gates_only_ratio"]))
    print(describe("  side head", result["side_head_ratio"]))
    print(describe("  the skipped backward, all gates open: gated/gated_no_skip", result["skip_ratio"]))
    print(describe("  with Keras' batch norm, gated/plain", result["keras_batch_norm_ratio"]))
    print("gated step's op time: " + ", ".join(f"{k} {v:.1%}" for k, v in shares.items()))
    common.finish(NAME, parser, args, result, watch)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
