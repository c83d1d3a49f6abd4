"""What the benchmarks share: the project's own training step on a fixed batch, interleaved
A/B timing, ratios with confidence intervals, a per-op profile, the machine note and the
result report.

Every number a benchmark judges is a ratio of variants timed side by side in one process,
in alternating blocks (order reversed every round), so a change in machine load between
blocks hits every variant alike. Each round gives one ratio of neighbouring blocks; the
report is their geometric mean with a t-interval on the log ratios, plus median and range.
"""
import argparse
import contextlib
import json
import math
import os
import statistics
import subprocess
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from scipy import stats  # noqa: E402

from benchmarks import RESULTS_DIR  # noqa: E402
from epsilon_resnet import config as config_lib  # noqa: E402
from epsilon_resnet import provenance, runtime, training  # noqa: E402
from epsilon_resnet.atomic import write_atomic  # noqa: E402
from epsilon_resnet.data import augment  # noqa: E402
from epsilon_resnet.data.source import ArraySource  # noqa: E402

OTHER_TRAINING = "cifarEpsilonResnet"  # a long CIFAR training that may share the machine


def cores():
    """CPU cores this process may run on."""
    return len(os.sched_getaffinity(0))


def other_training_running():
    return subprocess.run(["pgrep", "-f", OTHER_TRAINING], capture_output=True).returncode == 0


def resnet_arguments(parser, steps, steps_help, repeats):
    """The flags every benchmark takes: --n (CIFAR depth 6n+2), --batch, --steps and --repeats."""
    parser.add_argument("--n", type=int, default=18, help="CIFAR ResNet depth 6n+2 (18: ResNet-110)")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=steps, help=steps_help)
    parser.add_argument("--repeats", type=int, default=repeats, help="timed blocks (or runs) per variant")


def step_benchmark_parser(doc, repeats, minutes):
    """The parser of a benchmark that times training steps: `resnet_arguments` and --minutes."""
    parser = argparse.ArgumentParser(allow_abbrev=False, description=doc.split("\n\n")[0])
    resnet_arguments(parser, 1, "training steps per timed block", repeats=repeats)
    parser.add_argument("--minutes", type=float, default=minutes, help="time budget of the timed rounds")
    return parser


def time_steps(steps, args):
    """`interleaved_times` of {name: step}, args.steps steps per block, within args.minutes."""
    return interleaved_times({name: repeat(step, args.steps) for name, step in steps.items()}, args.repeats,
                             warmup=2, budget=args.minutes * 60)


def random_cifar_batch(batch, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (batch, 32, 32, 3), dtype=np.uint8), (np.arange(batch) % 10).astype(np.int32)


@contextlib.contextmanager
def cifar_training_step(n, batch, gated, side_output, batch_norm="fused", skip_closed_backward=True,
                        precision="float32"):
    """Yields a function that runs one step of the project's compiled training step
    (`training.Trainer`: losses, weight decay, SGD update, gate EMAs; the gates' cross-replica
    reduction is a no-op with one replica, as in any single-device run) for a CIFAR ResNet of
    depth 6n+2 with that `batch_norm` kind, train.skip_closed_backward and train.precision (the
    network keeps the precision it was built with, so variants of both precisions can run side
    by side), on one fixed in-memory batch so that no input pipeline is measured. The trainer
    is attached as `step.trainer`.
    """
    images, labels = random_cifar_batch(batch)
    source = ArraySource("benchmark", 10, (images, labels), (images, labels), augment.CIFAR_TRAIN, family="cifar")
    config = config_lib.from_dict({"model": {"n": n, "gated": gated, "side_output": side_output,
                                             "batch_norm": batch_norm},
                                   "train": {"batch_size": batch, "seed": 0, "steps_per_epoch": 1,
                                             "skip_closed_backward": skip_closed_backward, "precision": precision}})
    with tempfile.TemporaryDirectory(prefix="benchmark-run-") as run_dir:
        runtime.configure(config.train)  # train.seed: the same initial weights in every variant
        trainer = training.Trainer(config, run_dir, source=source)
        batches = iter(tf.data.Dataset.from_tensors((tf.constant(images, tf.float32), tf.constant(labels))).repeat())
        no_stop = tf.constant(False)

        def step():
            return float(trainer.train_step(batches, no_stop)["cost"])  # float(): waits for the step

        step.trainer = trainer
        yield step


def repeat(fn, times):
    def block():
        for _ in range(times):
            fn()
    return block


def interleaved_times(blocks, rounds, warmup=1, budget=None):
    """{"wall": {name: [seconds of each round]}, "cpu": {...}} for `blocks` {name: fn}, run in
    turn `rounds` times, the order reversed every other round (A B, B A, ...: a steady drift
    in machine speed cancels over two rounds); each block first runs `warmup` times untimed
    (tracing, graph optimisation, allocator growth). With a `budget` in seconds, rounds stop
    at the first even round count (at least 2) past it. "cpu" is this process's CPU time
    (all its threads), which other processes on a shared machine disturb less than wall time."""
    for block in blocks.values():
        for _ in range(warmup):
            block()
    times, order = {"wall": {name: [] for name in blocks}, "cpu": {name: [] for name in blocks}}, list(blocks)
    start = time.monotonic()
    for r in range(rounds):
        if budget is not None and r > 0 and r % 2 == 0 and time.monotonic() - start > budget:
            break
        for name in order if r % 2 == 0 else order[::-1]:
            wall, cpu = time.perf_counter(), time.process_time()
            blocks[name]()
            times["wall"][name].append(time.perf_counter() - wall)
            times["cpu"][name].append(time.process_time() - cpu)
    return times


def interleaved(blocks, rounds, warmup=1):
    """{name: [wall seconds of each round]}: `interleaved_times` without the CPU times."""
    return interleaved_times(blocks, rounds, warmup)["wall"]


def ratio_interval(ratios, confidence=0.95):
    """Geometric mean of per-round ratios with a t-interval: the ratios' logs are treated as
    independent draws (each round is a fresh pair of neighbouring blocks), so
    exp(mean ± t·sd/√n) brackets the typical ratio with the given confidence. One round
    bounds nothing: the interval is then (0, inf)."""
    logs = [math.log(r) for r in ratios]
    mean = statistics.fmean(logs)
    sd = statistics.stdev(logs) if len(logs) > 1 else math.inf
    half = stats.t.ppf(0.5 + confidence / 2, max(len(logs) - 1, 1)) * sd / math.sqrt(len(logs))
    return {"ratio": math.exp(mean), "low": math.exp(mean - half), "high": math.exp(mean + half),
            "confidence": confidence, "sd_log": sd}


def ratio_text(ratio):
    """A `paired_ratio` as the benchmarks print it: the ratio, its 95% interval and the rounds."""
    return f"{ratio['ratio']:.3f} (95% CI {ratio['low']:.3f}..{ratio['high']:.3f}, {ratio['rounds']} rounds)"


def paired_ratio(values, numerator, denominator, confidence=0.95):
    """The per-round ratios numerator/denominator of {name: [value per round]} (seconds or
    rates), each pairing blocks that ran next to each other: `ratio_interval` (geometric mean,
    low, high) plus their median and range."""
    ratios = [a / b for a, b in zip(values[numerator], values[denominator])]
    return {**ratio_interval(ratios, confidence), "median": statistics.median(ratios), "min": min(ratios),
            "max": max(ratios), "rounds": len(ratios)}


def medians(seconds):
    return {name: statistics.median(values) for name, values in seconds.items()}


def op_seconds(run):
    """CPU seconds per TensorFlow op name ("scope/op:Type") while `run()` executes, from a
    TensorFlow profiler trace (the TF executor threads' events; nested executor events dropped)."""
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    with tempfile.TemporaryDirectory(prefix="benchmark-profile-") as logdir:
        tf.profiler.experimental.start(logdir)
        try:
            run()
        finally:
            tf.profiler.experimental.stop()
        space = xplane_pb2.XSpace()
        path = next(os.path.join(root, f) for root, _, files in os.walk(logdir) for f in files
                    if f.endswith(".xplane.pb"))
        with open(path, "rb") as f:
            space.ParseFromString(f.read())
    seconds = {}
    for plane in space.planes:
        for line in plane.lines:
            if not line.name.startswith("tf_Compute"):
                continue
            for event in line.events:
                name = plane.event_metadata[event.metadata_id].name
                if ":" in name and "::" not in name:
                    seconds[name] = seconds.get(name, 0.0) + event.duration_ps * 1e-12
    return seconds


def verdict(value, target, at_most=True):
    return "PASS" if (value <= target if at_most else value >= target) else "MISS"


def interval_verdict(interval, target):
    """PASS only when the whole confidence interval lies at or below `target`: a MISS means
    the ratio is above target or the measurement cannot tell (see low and high)."""
    return "PASS" if interval["high"] <= target else "MISS"


def is_default(parser, args):
    return vars(args) == vars(parser.parse_args([]))


def _busy_seconds():
    """CPU seconds the whole machine spent busy since boot (/proc/stat)."""
    with open("/proc/stat") as f:
        user, nice, system, idle, iowait, irq, softirq, steal = map(int, f.readline().split()[1:9])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _own_seconds():
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


class MachineWatch:
    """What else ran during a benchmark: a CIFAR training (checked at start
    and end) and the share of all cores that other processes kept busy (machine busy time from
    /proc/stat minus this process's and its children's CPU time)."""

    def __init__(self):
        self.training_at_start = other_training_running()
        self.start = (_busy_seconds(), _own_seconds(), time.monotonic())

    def note(self):
        busy, own, wall = (end - start for end, start in zip((_busy_seconds(), _own_seconds(), time.monotonic()),
                                                               self.start))
        other = max(0.0, busy - own) / (wall * cores())
        training = self.training_at_start or other_training_running()
        return {"cores": cores(), "other_training_running": training, "other_processes_cpu_share": other,
                "shared": training or other > 0.1, "tensorflow": tf.__version__}


def finish(name, parser, args, result, watch):
    """Add the date, commit and machine, print the machine note, and write results/<name>.json
    (atomically) when run with default args."""
    machine = {**provenance.machine(), **watch.note()}
    result = {"benchmark": name, "args": vars(args), **result, "date": provenance.now(), **provenance.git_state(),
              "machine": machine}
    print(f"machine: {machine['cores']} cores, TensorFlow {machine['tensorflow']}; other processes kept "
          f"{machine['other_processes_cpu_share']:.0%} of the cores busy"
          + (" (including a cifarEpsilonResnet training)" if machine["other_training_running"]
             else "")
          + (": SHARED machine" if machine["shared"] else ": not shared"))
    if is_default(parser, args):
        path = os.path.join(RESULTS_DIR, f"{name}.json")
        write_atomic(path, json.dumps(result, indent=2) + "\n")
        print(f"wrote {path}")
    return result
