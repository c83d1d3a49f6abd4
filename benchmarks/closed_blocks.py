"""Training-step time of ε-ResNet-110 with a share of its gates closed, over all gates open.

With train.skip_closed_backward (the default) a closed block's residual branch runs no
backward pass. Variants, all the project's compiled training step (`training.Trainer`) on
one fixed batch: `open` (every gate open, the skip on), `open_no_skip` (every gate open, the
skip off: today's step, so open / open_no_skip says whether the skip costs an open network
anything), `closed<P>` (P% of the gates closed by a huge ε, the skip on) and `ceiling<P>` (all
gates open, the same P% of branches with tf.stop_gradient on their output: the forward
unchanged, the backward cut, the best a skip can do). The closed blocks are spread evenly
over the network. Interleaved rounds, ratios with 95% intervals over `open`.

    python -m benchmarks.closed_blocks [--n 18] [--batch 128] [--steps 1] [--repeats 40] [--minutes 12]
"""
import contextlib
import sys

import tensorflow as tf

from benchmarks import common
from epsilon_resnet.gate import gates_of

NAME = "closed_blocks"
SHARES = (25, 50, 83)  # percent of the gates closed (83%: the paper's 752-layer network)
TARGETS = {50: 0.75, 83: 0.55}  # closed<P> / open, judged on the interval's upper end
CLOSED_EPSILON = 1e30


def evenly_spread(count, percent):
    """Indices of round(count·percent/100) of `count` blocks, spread evenly."""
    chosen = round(count * percent / 100)
    return sorted({int((i + 0.5) * count / chosen) for i in range(chosen)})


def stop_branch_gradient(gate):
    """Make this gate see its branch through tf.stop_gradient (the forward unchanged)."""
    call = gate.call
    gate.call = lambda inputs, training=False: call([inputs[0], tf.stop_gradient(inputs[1])], training=training)


@contextlib.contextmanager
def variant_step(args, kind, percent):
    with common.cifar_training_step(args.n, args.batch, True, True,
                                    skip_closed_backward=kind != "open_no_skip") as step:
        gates = gates_of(step.trainer.model)
        for index in evenly_spread(len(gates), percent):
            if kind == "closed":
                gates[index].epsilon.assign(CLOSED_EPSILON)
            else:
                stop_branch_gradient(gates[index])
        yield step


def main(argv=None):
    parser = common.step_benchmark_parser(__doc__, repeats=40, minutes=12.0)
    args = parser.parse_args(argv)
    watch = common.MachineWatch()
    variants = {"open": ("open", 0), "open_no_skip": ("open_no_skip", 0)}
    for percent in SHARES:
        variants[f"closed{percent}"] = ("closed", percent)
        variants[f"ceiling{percent}"] = ("ceiling", percent)
    with contextlib.ExitStack() as stack:
        steps = {name: stack.enter_context(variant_step(args, kind, percent))
                 for name, (kind, percent) in variants.items()}
        gates = len(gates_of(steps["open"].trainer.model))
        times = common.time_steps(steps, args)
        # After the timed steps a closed gate's is_discarded average is > 0, an open one's 0.
        closed = {name: sum(float(g.is_discarded) > 0 for g in gates_of(step.trainer.model))
                  for name, step in steps.items()}
    wall = times["wall"]
    ratios = {name: common.paired_ratio(wall, name, "open") for name in steps if name != "open"}
    skip_cost = common.paired_ratio(wall, "open", "open_no_skip")
    result = {"gates": gates, "gates_closed": closed, "ratios": ratios, "open_over_open_no_skip": skip_cost,
              # not measurably slower: the interval of open / open_no_skip reaches down to 1
              "open_no_slower": "PASS" if skip_cost["low"] <= 1.0 else "MISS",
              "cpu_time_ratios": {name: common.paired_ratio(times["cpu"], name, "open") for name in ratios},
              "targets": {f"closed{p}": t for p, t in TARGETS.items()},
              "verdicts": {f"closed{p}": common.interval_verdict(ratios[f"closed{p}"], t) for p, t in TARGETS.items()},
              "seconds_per_step": {k: v / args.steps for k, v in common.medians(wall).items()}}
    print(f"ResNet-{6 * args.n + 2} training step, batch {args.batch}, {gates} gates: median seconds per step "
          + ", ".join(f"{k} {v:.3f}" for k, v in result["seconds_per_step"].items()))
    for name, ratio in ratios.items():
        target = result["targets"].get(name)
        print(f"  {name}/open = {common.ratio_text(ratio)}"
              + (f"; target <= {target}: {result['verdicts'][name]}" if target else ""))
    print(f"  open/open_no_skip = {skip_cost['ratio']:.3f} (95% CI {skip_cost['low']:.3f}..{skip_cost['high']:.3f}); "
          f"not slower: {result['open_no_slower']}; gates closed per variant: {closed}")
    common.finish(NAME, parser, args, result, watch)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
