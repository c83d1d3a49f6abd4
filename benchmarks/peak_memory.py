"""Peak memory of an ε-ResNet-110 training step over the same ResNet without gates and side head.

Target: gated / plain <= 1.05. Each variant runs in its own subprocess (so peaks never mix),
alternating, --repeats times each; the verdict uses the median of the paired ratios.

Method. TensorFlow's CPU allocator keeps statistics when it is a BFC allocator, which oneDNN
builds choose on some CPUs and not on others, so the measuring subprocess asks for one
(TF_CPU_ALLOCATOR_USE_BFC=true) on every machine; then
tf.config.experimental.get_memory_info("CPU:0") gives the current and peak bytes of the
tensors it holds (weights, optimizer slots, activations kept for the backward pass,
gradients, temporaries), and reset_memory_stats restarts the peak. After one warm-up step
(tracing and graph optimisation allocate outside the steady state) the peak is reset and
--steps training steps of the project's compiled training step (common.py) run: that peak
is the step's memory, read directly rather than inferred from the process size. Cross-check:
the process's peak RSS (VmHWM, reset through /proc/self/clear_refs once the model is built)
minus its RSS at that moment, over the warm-up and measured steps. It also sees memory
outside TensorFlow's allocator (tracing, graph optimisation) and cannot start after the
warm-up, since freed memory stays mapped in the process; so it is reported, not judged.

    python -m benchmarks.peak_memory [--n 18] [--batch 128] [--steps 2] [--repeats 3]
"""
import argparse
import json
import os
import subprocess
import sys

from benchmarks import common  # first: it quietens TensorFlow's C++ log

import keras
import numpy as np
import tensorflow as tf

from epsilon_resnet.gate import StrictIdentity

NAME, TARGET = "peak_memory", 1.05
VARIANTS = {"plain": (False, False), "gated": (True, True)}  # (gated, side_output)
ALLOCATOR_WITH_STATS = {"TF_CPU_ALLOCATOR_USE_BFC": "true"}  # read when TensorFlow starts: set for the subprocess
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def status_bytes(field):
    """A memory field of /proc/self/status (VmRSS, VmHWM) in bytes."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(field + ":"))


def measure(variant, n, batch, steps):
    """Run in the subprocess: the allocator peak of `steps` training steps, and the RSS cross-check."""
    with common.cifar_training_step(n, batch, *VARIANTS[variant]) as step:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS
        rss_before = status_bytes("VmRSS")
        step()  # warm-up: tracing, graph optimisation
        tf.config.experimental.reset_memory_stats("CPU:0")
        for _ in range(steps):
            step()
        # block outputs: the plain network's Add layers, the gated network's gates (which add too)
        adds = [layer for layer in step.trainer.model.layers if isinstance(layer, (keras.layers.Add, StrictIdentity))]
        return {"allocator_peak": tf.config.experimental.get_memory_info("CPU:0")["peak"],
                "rss_peak_increase": status_bytes("VmHWM") - rss_before,
                "block_output_bytes": sum(batch * 4 * int(np.prod(a.output.shape[1:])) for a in adds)}


def run_variant(variant, args):
    command = [sys.executable, "-m", "benchmarks.peak_memory", "--variant", variant, "--n", str(args.n),
               "--batch", str(args.batch), "--steps", str(args.steps)]
    out = subprocess.run(command, cwd=REPO, capture_output=True, text=True, env={**os.environ, **ALLOCATOR_WITH_STATS})
    if out.returncode:
        raise SystemExit(f"{' '.join(command)} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None):
    parser = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.split("\n\n")[0])
    common.resnet_arguments(parser, 2, "measured training steps per subprocess", repeats=3)
    parser.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)  # inside a subprocess
    args = parser.parse_args(argv)
    if args.variant:
        print(json.dumps(measure(args.variant, args.n, args.batch, args.steps)))
        return None
    watch = common.MachineWatch()

    runs = {name: [] for name in VARIANTS}
    for r in range(args.repeats):
        for name in list(VARIANTS) if r % 2 == 0 else list(VARIANTS)[::-1]:
            runs[name].append(run_variant(name, args))
    values = {f"{name}_{key}": [run[key] for run in runs[name]] for name in VARIANTS for key in runs[name][0]}
    ratio = common.paired_ratio(values, "gated_allocator_peak", "plain_allocator_peak")
    medians = common.medians(values)
    result = {"target": TARGET, "ratio": ratio,
              "rss_ratio": common.paired_ratio(values, "gated_rss_peak_increase", "plain_rss_peak_increase"),
              "bytes": medians, "verdict": common.verdict(ratio["median"], TARGET)}
    mib = {k: v / 2 ** 20 for k, v in medians.items()}
    print(f"ResNet-{6 * args.n + 2} training step, batch {args.batch}: allocator peak gated "
          f"{mib['gated_allocator_peak']:.0f} MiB, plain {mib['plain_allocator_peak']:.0f} MiB; peak RSS increase "
          f"gated {mib['gated_rss_peak_increase']:.0f} MiB, plain {mib['plain_rss_peak_increase']:.0f} MiB")
    print(f"ratio gated/plain = {ratio['median']:.3f} (runs {ratio['min']:.3f}..{ratio['max']:.3f}; RSS cross-check "
          f"{result['rss_ratio']['median']:.3f}); target <= {TARGET}: {result['verdict']}")
    if result["verdict"] == "MISS":
        extra = medians["gated_allocator_peak"] - medians["plain_allocator_peak"]
        per_block = extra / medians["gated_block_output_bytes"]
        result["reason"] = (
            f"the gated step holds {extra / 2 ** 20:.0f} MiB more, {per_block:.1f}x the summed size of the blocks' "
            f"outputs: about {per_block:.0f} extra tensors of a residual branch's size per block live from the "
            f"forward to the backward pass; the gate should keep only its scalar (its statistics are under "
            f"tf.stop_gradient)")
        print(f"MISS reason: {result['reason']}")
    common.finish(NAME, parser, args, result, watch)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
