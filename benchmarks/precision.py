"""Training-step time of ε-ResNet-110 under `train.precision: mixed_bfloat16` over float32 on
this CPU, and which kernels ran the convolutions.

No target: the ratio is reported as measured. Both variants run the project's compiled
training step (`training.Trainer`) on one fixed batch with every gate open (ε 0, the whole
network computed in both), interleaved rounds, the ratio with its 95% interval. Which kernels
ran: the TensorFlow op types of one profiled step's convolutions; the oneDNN primitives
(implementation and data types) of two steps of a ResNet-8 in a subprocess with
ONEDNN_VERBOSE=1; and the CPU's flags for bfloat16 (avx512_bf16) and AMX (amx_bf16, amx_tile),
so that a run says whether the convolutions went through AMX, or that the CPU has none.

    python -m benchmarks.precision [--n 18] [--batch 128] [--steps 1] [--repeats 40] [--minutes 6]
"""
import argparse
import collections
import contextlib
import os
import subprocess
import sys

import keras

from benchmarks import common
from epsilon_resnet.gate import set_epsilon

NAME = "precision"
VARIANTS = ("float32", "mixed_bfloat16")
CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16")


def cpu_flags():
    """Which of CPU_FLAGS /proc/cpuinfo lists."""
    with open("/proc/cpuinfo") as f:
        flags = set(next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), []))
    return {flag: flag in flags for flag in CPU_FLAGS}


def convolution_ops(step):
    """{TensorFlow op type: CPU seconds} of one profiled step's convolution ops (forward and backward)."""
    seconds = collections.Counter()
    for op, value in common.op_seconds(step).items():
        kind = op.rsplit(":", 1)[1]
        if "Conv2D" in kind:
            seconds[kind] += value
    return dict(seconds)


def onednn_primitives(precision):
    """oneDNN's ISA line and {"primitive implementation prop_kind src-dtype": executions} of two
    training steps of a ResNet-8 at batch 8 under `precision`, from a subprocess with ONEDNN_VERBOSE=1."""
    env = {**os.environ, "ONEDNN_VERBOSE": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
    done = subprocess.run([sys.executable, "-m", "benchmarks.precision", "--onednn-probe", precision],
                          env=env, capture_output=True, text=True, timeout=600, check=True)
    isa, executed = None, collections.Counter()
    for line in done.stdout.splitlines() + done.stderr.splitlines():
        fields = line.split(",")
        if line.startswith("onednn_verbose") and ",info,cpu,isa:" in line:
            isa = line.split("isa:", 1)[1]
        elif line.startswith("onednn_verbose") and len(fields) > 9 and fields[3] == "exec":
            source_type = fields[8].split(":")[1] if ":" in fields[8] else ""
            executed[f"{fields[5]} {fields[6]} {fields[7]} {source_type}"] += 1
    return {"isa": isa, "executed": dict(executed)}


def probe(precision):
    """Two steps of ResNet-8 under `precision`, for `onednn_primitives`."""
    with common.cifar_training_step(1, 8, gated=True, side_output=True, precision=precision) as step:
        step()
        step()


def main(argv=None):
    parser = common.step_benchmark_parser(__doc__, repeats=40, minutes=6.0)
    parser.add_argument("--onednn-probe", choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.onednn_probe:
        return probe(args.onednn_probe)
    watch = common.MachineWatch()
    with contextlib.ExitStack() as stack:
        steps = {}
        for precision in VARIANTS:
            steps[precision] = stack.enter_context(
                common.cifar_training_step(args.n, args.batch, gated=True, side_output=True, precision=precision))
            set_epsilon(steps[precision].trainer.model, 0.0)
        keras.mixed_precision.set_global_policy("float32")  # each network keeps the policy it was built with
        times = common.time_steps(steps, args)
        convolutions = {precision: convolution_ops(step) for precision, step in steps.items()}
    flags = cpu_flags()
    primitives = {precision: onednn_primitives(precision) for precision in VARIANTS}
    amx_ran = any("amx" in kernel for p in primitives.values() for kernel in p["executed"])
    wall = times["wall"]
    ratio = common.paired_ratio(wall, "mixed_bfloat16", "float32")
    result = {"target": None, "ratio": ratio,
              "cpu_time_ratio": common.paired_ratio(times["cpu"], "mixed_bfloat16", "float32"),
              "seconds_per_step": {k: v / args.steps for k, v in common.medians(wall).items()},
              "cpu_flags": flags, "amx_on_cpu": flags["amx_tile"] and flags["amx_bf16"], "amx_kernels_ran": amx_ran,
              "convolution_ops_seconds": convolutions, "onednn": primitives}
    print(f"ε-ResNet-{6 * args.n + 2} training step, batch {args.batch}, all gates open: median seconds per step "
          + ", ".join(f"{k} {v:.3f}" for k, v in result["seconds_per_step"].items()))
    print(f"  mixed_bfloat16/float32 = {common.ratio_text(ratio)}")
    print("CPU flags: " + ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in flags.items())
          + f"; AMX kernels ran: {'yes' if amx_ran else 'no'}"
          + ("" if result["amx_on_cpu"] else " (this CPU has no AMX)"))
    for precision in VARIANTS:
        print(f"  {precision}: convolution ops {convolutions[precision]}; oneDNN ({primitives[precision]['isa']}) "
              f"{primitives[precision]['executed']}")
    common.finish(NAME, parser, args, result, watch)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
