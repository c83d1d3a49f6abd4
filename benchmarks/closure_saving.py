"""What skipping the backward pass of closed blocks saves over a whole training run.

The step time with a share f of the gates closed comes from `results/closed_blocks.json`
(ε-ResNet-110, batch 128: measured ratios over all-open at f = 0 and three shares), read
between the measured points by linear interpolation. A run's closure curve is the fraction of
its gated blocks closed at each epoch end (`discarded_cnt` / blocks), here from the ε-ResNet
runs of `reproduction/results/cifar10_reproduction.json` (--reproduction); an epoch costs the
mean of the ratios at its two ends (the curve starts at 0). A run's time with the skip, over
its time without, is the mean of its epochs' costs.

The repository holds no 1000-epoch run, so the paper's runs are read through the same curve
drawn against the share of training done (the schedules here are the paper's, shortened), once
as measured and once scaled so that it ends at the paper's final closed share (22% of
ResNet-110's blocks; 83% of the 752-layer network's, read with ResNet-110's ratios).

    python -m benchmarks.closure_saving [--reproduction reproduction/results/cifar10_reproduction.json]

The reproduction's results are read as a file: benchmarks and the reproduction are clients of
the package, never of each other.
"""
import argparse
import json
import os
import sys

import numpy as np

from benchmarks import REPO, RESULTS_DIR
from epsilon_resnet import provenance
from epsilon_resnet.atomic import write_atomic

NAME = "closure_saving"
REPRODUCTION = os.path.join(REPO, "reproduction", "results", "cifar10_reproduction.json")  # the committed one
PAPER_FINAL_SHARES = {"ResNet-110 (22% closed)": 0.22, "752 layers (83% closed)": 0.83}


def ratio_curve(closed_blocks):
    """(closed shares, step-time ratios) measured by closed_blocks.py, starting at (0, 1)."""
    gates = closed_blocks["gates"]
    points = sorted((closed_blocks["gates_closed"][name] / gates, ratio["ratio"])
                    for name, ratio in closed_blocks["ratios"].items() if name.startswith("closed"))
    shares, ratios = zip((0.0, 1.0), *points)
    return np.array(shares), np.array(ratios)


def run_time_ratio(closed_shares, curve):
    """Time of a run whose closed share is `closed_shares` at its epoch ends, skip on over off."""
    ends = np.interp(np.concatenate([[0.0], closed_shares]), *curve)
    return float(np.mean((ends[:-1] + ends[1:]) / 2))


def closure_curves(reproduction):
    """{run name: closed share at each epoch end} of the reproduction's ε-ResNet runs."""
    return {run["name"]: np.array(run["curves"]["discarded_cnt"]) / run["blocks"]
            for run in reproduction["runs"] if run["kind"] == "eps" and run["phase"] == "final"}


def savings(closed_blocks, reproduction):
    curve = ratio_curve(closed_blocks)
    result = {"step_time_ratio": {"closed_share": curve[0].tolist(), "ratio": curve[1].tolist()}, "runs": {}}
    for name, shares in closure_curves(reproduction).items():
        paper = {label: run_time_ratio(shares * final / shares[-1], curve)
                 for label, final in PAPER_FINAL_SHARES.items()}
        result["runs"][name] = {"closed_share": shares.tolist(), "time_ratio": run_time_ratio(shares, curve),
                                "scaled_to_paper": paper}
    runs = result["runs"].values()
    result["mean_time_ratio"] = float(np.mean([run["time_ratio"] for run in runs]))
    result["mean_scaled_to_paper"] = {label: float(np.mean([run["scaled_to_paper"][label] for run in runs]))
                                      for label in PAPER_FINAL_SHARES}
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.split("\n\n")[0])
    parser.add_argument("--reproduction", default=REPRODUCTION, metavar="JSON",
                        help="the reproduction's results file, whose ε-ResNet runs give the closure curves "
                             "(default: the committed one)")
    args = parser.parse_args(argv)
    with open(os.path.join(RESULTS_DIR, "closed_blocks.json")) as f:
        closed_blocks = json.load(f)
    with open(args.reproduction) as f:
        reproduction = json.load(f)
    result = savings(closed_blocks, reproduction)
    for name, run in result["runs"].items():
        print(f"{name}: closed share by epoch {np.round(run['closed_share'], 3).tolist()}; "
              f"time with the skip / without {run['time_ratio']:.3f}")
    print(f"mean over the runs: {result['mean_time_ratio']:.3f}; the same curves scaled to the paper's final share: "
          + ", ".join(f"{label} {value:.3f}" for label, value in result["mean_scaled_to_paper"].items()))
    result = {"benchmark": NAME, "sources": {"closed_blocks": closed_blocks["date"],
                                             "cifar10_reproduction": reproduction["invocation"]["date"]},
              **result, "date": provenance.now(), **provenance.git_state()}
    path = os.path.join(RESULTS_DIR, f"{NAME}.json")
    write_atomic(path, json.dumps(result, indent=2) + "\n")
    print(f"wrote {path}")
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
