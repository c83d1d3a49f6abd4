#!/usr/bin/env python
"""Plot ε-ResNet runs from their metrics.jsonl, or a reproduction's results file, into PNG figures.

    python scripts/plot_runs.py train_log.a train_log.b [--labels A B] [--out figures/]
    python scripts/plot_runs.py train_log.s1 train_log.s2 train_log.e1 train_log.e2 --labels plain plain eps eps
    python scripts/plot_runs.py --results reproduction/results/cifar10_reproduction.json --out figures/reproduction

Writes val_error.png and learning_rate.png (every configuration overlaid), discarded_cnt.png
(the gated ones) and a heat map of each block's is_discarded moving average (blocks × epochs)
per gated configuration, one panel per run; with --results also batch_size.png (test error against
the evaluation batch size, both gate semantics). Runs given the same label are seeds of one
configuration: their mean is drawn with a band of ± one sample standard deviation. With
--results, the configurations are the final plain and ε-ResNet runs of
the reproduction (python -m reproduction), read from the results file alone. Only metrics.jsonl (or the
results file) is read, never log.log, and nothing is written into the run folders; TensorFlow
is not imported.
"""
import argparse
import json
import os
import re
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from epsilon_resnet import run_folder  # noqa: E402
from epsilon_resnet.atomic import temporary_path  # noqa: E402

DPI = 100


class PlotError(ValueError):
    """A run folder without a readable metrics.jsonl (the message names the file), or a bad --out."""


def read_metrics(run_dir):
    """The run's per-epoch records (run_folder.read_metrics), checked to hold what the plots need."""
    path = os.path.join(run_dir, run_folder.METRICS_FILE)
    try:
        records = run_folder.read_metrics(run_dir)
    except (OSError, ValueError) as err:
        raise PlotError(str(err)) from None
    except (KeyError, TypeError):
        raise PlotError(f"{path} holds a line that is not a JSON object with an 'epoch'") from None
    if not records:
        raise PlotError(f"{path} holds no epoch")
    missing = [r["epoch"] for r in records if "val_error" not in r or "learning_rate" not in r]
    if missing:
        raise PlotError(f"{path}: epoch {missing[0]} lacks val_error or learning_rate")
    return records


def gate_blocks(records):
    """Block names with an is_discarded average, in the network's order (as the run logged them)."""
    return list(run_folder.block_metrics(records[-1], "is_discarded"))


def save_png(fig, path):
    """Write the figure to a temporary file beside `path`, then rename it: readers never see half a PNG."""
    tmp = temporary_path(path)
    try:
        fig.savefig(tmp, format="png", dpi=DPI)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    finally:
        plt.close(fig)
    return path


def runs_to_groups(named_runs, labels):
    """[(label, file name, [(run name, records), ...])]: runs under the same label are seeds of one
    configuration; the file name is the run's name for a single run, the label's for several."""
    groups = {}
    for label, run in zip(labels, named_runs):
        groups.setdefault(label, []).append(run)
    return [(label, runs[0][0] if len(runs) == 1 else slug(label), runs) for label, runs in groups.items()]


def band(runs, key, scale=1.0):
    """(epochs, mean, sd) of `key` over the runs of a group, at the epochs every run logged it.

    sd is the sample standard deviation (ddof=1), None for a single run: no band then.
    """
    common = sorted(set.intersection(*({r["epoch"] for r in records if r.get(key) is not None}
                                       for _, records in runs)))
    values = np.array([[next(r[key] for r in records if r["epoch"] == e) * scale for e in common]
                       for _, records in runs], dtype=float).reshape(len(runs), len(common))
    sd = values.std(axis=0, ddof=1) if len(runs) > 1 else None
    return np.array(common), values.mean(axis=0), sd


def line_plot(groups, key, ylabel, path, scale=1.0, log=False, steps=False, from_zero=False):
    """One line per group: the mean over its runs, with a mean ± sd band when it has several."""
    fig, ax = plt.subplots(figsize=(6.4, 4))
    drawstyle = "steps-post" if steps else "default"
    for label, _, runs in groups:
        epochs, mean, sd = band(runs, key, scale)
        if not len(epochs):
            continue
        seeds = f" (mean ± sd of {len(runs)})" if sd is not None else ""
        line, = ax.plot(epochs, mean, marker="o", markersize=3, label=label + seeds, drawstyle=drawstyle)
        if sd is not None:
            ax.fill_between(epochs, mean - sd, mean + sd, color=line.get_color(), alpha=0.2, linewidth=0,
                            step="post" if steps else None)
    ax.set(xlabel="epoch", ylabel=ylabel)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    if log:
        ax.set_yscale("log")
    if from_zero:
        ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return save_png(fig, path)


def gate_heatmap(label, runs, path):
    """is_discarded of every block per epoch, one panel per run of the group (blocks × epochs)."""
    blocks = gate_blocks(runs[0][1])
    fig, axes = plt.subplots(1, len(runs), figsize=(2.2 + 4.2 * len(runs), 1.8 + 0.18 * len(blocks)),
                             squeeze=False, sharey=True, layout="constrained")
    for ax, (name, records) in zip(axes[0], runs):
        epochs = [r["epoch"] for r in records]
        values = [[r.get(run_folder.block_metric(b, "is_discarded"), float("nan")) for r in records] for b in blocks]
        image = ax.imshow(values, aspect="auto", interpolation="nearest", cmap="viridis", vmin=0, vmax=1,
                          extent=(epochs[0] - 0.5, epochs[-1] + 0.5, len(blocks) - 0.5, -0.5))
        ax.set(xlabel="epoch", title=name if len(runs) > 1 else None)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    axes[0][0].set_yticks(range(len(blocks)), blocks, fontsize=max(4, min(8, 400 // max(1, len(blocks)))))
    axes[0][0].set_ylabel("block")
    fig.suptitle(f"{label}: is_discarded (moving average)")
    fig.colorbar(image, ax=list(axes[0]))
    return save_png(fig, path)


def is_gated(records):
    """Logs gate averages with some ε > 0: gates with ε = 0 never close (a plain ResNet built gated)."""
    return bool(gate_blocks(records)) and any((r.get("epsilon") or 0) > 0 for r in records)


def run_name(run_dir):
    return os.path.basename(os.path.normpath(run_dir)).removeprefix("train_log.")


def slug(text):
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-") or "run"


def plot_groups(groups, out, error_label="validation error (%)"):
    """All figures of the groups into `out`; returns the PNG paths written.

    groups: [(label, file name, [(run name, records), ...])]; a gated group's heat map is
    gates_<file name>.png.
    """
    if os.path.exists(out) and not os.path.isdir(out):
        raise PlotError(f"--out {out} is a file; expected a folder for the PNGs")
    os.makedirs(out, exist_ok=True)
    written = [line_plot(groups, "val_error", error_label, os.path.join(out, "val_error.png"), scale=100),
               line_plot(groups, "learning_rate", "learning rate", os.path.join(out, "learning_rate.png"),
                         log=True, steps=True)]
    gated = [group for group in groups if any(is_gated(records) for _, records in group[2])]
    if gated:
        written.append(line_plot(gated, "discarded_cnt", "discarded blocks (discarded_cnt)",
                                 os.path.join(out, "discarded_cnt.png"), from_zero=True))
    written += [gate_heatmap(label, runs, os.path.join(out, f"gates_{name}.png")) for label, name, runs in gated]
    return written


def plot_runs(run_dirs, out, labels=None):
    """All figures of the run folders into `out` (runs under one label form a seed band); the PNG paths."""
    for run in run_dirs:
        if os.path.commonpath([os.path.realpath(out), os.path.realpath(run)]) == os.path.realpath(run):
            raise PlotError(f"--out {out} is inside the run folder {run}: run folders are never written to")
    named = [(run_name(d), read_metrics(d)) for d in run_dirs]
    return plot_groups(runs_to_groups(named, labels or [name for name, _ in named]), out)


def results_groups(results, path):
    """The final runs of a reproduction results file (python -m reproduction), one group per model."""
    groups = []
    for kind, title in (("plain", "plain ResNet"), ("eps", "ε-ResNet")):
        runs = [r for r in results.get("runs", []) if r.get("phase") == "final" and r.get("kind") == kind]
        if not runs:
            raise PlotError(f"{path} holds no final {kind} run: is it a results file of the reproduction?")
        depth = 2 * runs[0]["blocks"] + 2
        label = f"{title}-{depth}" + (f", ε = {runs[0]['epsilon']:g}" if kind == "eps" else "")
        groups.append((label, kind, [(f"seed {r['seed']}", records_of(r)) for r in runs]))
    return groups


def records_of(run):
    """A results file's run as metrics.jsonl records: its curves and per-block gate averages, per epoch."""
    curves, gates = run["curves"], run["gates"]
    return [{**{key: values[i] for key, values in curves.items()},
             **{run_folder.block_metric(block, "is_discarded"): values[i] for block, values in gates.items()}}
            for i in range(len(curves["epoch"]))]


def batch_size_plot(results, path):
    """Test error against the evaluation batch size, in both semantics, for the final plain and ε-ResNet runs:
    mean over the seeds, error bars ± one sample standard deviation."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for kind, title in (("plain", "plain ResNet"), ("eps", "ε-ResNet")):
        runs = [r for r in results["runs"] if r["phase"] == "final" and r["kind"] == kind]
        sizes = sorted(runs[0]["scores"]["batch_sizes"], key=int)
        for key, semantics, style in (("val_error", "inference mode", "-o"),
                                      ("val_error_per_batch", "per batch (the original)", "--s")):
            values = np.array([[r["scores"]["batch_sizes"][s][key] * 100 for s in sizes] for r in runs])
            sd = values.std(axis=0, ddof=1) if len(runs) > 1 else None
            ax.errorbar([int(s) for s in sizes], values.mean(axis=0), yerr=sd, fmt=style, capsize=3,
                        label=f"{title}, {semantics}")
    ax.set_xscale("log")
    ax.set_xlabel("evaluation batch size")
    ax.set_ylabel("test error (%)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return save_png(fig, path)


def plot_results(path, out):
    """The figures of a reproduction results file's final runs, with seed bands; the PNG paths."""
    try:
        with open(path) as f:
            results = json.load(f)
        groups = results_groups(results, path)
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise PlotError(f"{path}: not a readable results file of the reproduction ({err!r})") from None
    return (plot_groups(groups, out, error_label="test error (%)")
            + [batch_size_plot(results, os.path.join(out, "batch_size.png"))])


def main(argv=None):
    parser = argparse.ArgumentParser(description="Plot runs' metrics.jsonl: validation error, learning rate, "
                                                 "discarded blocks and per-block gate heat maps.", allow_abbrev=False)
    parser.add_argument("runs", nargs="*", metavar="RUN_DIR", help="train_log.<output> folders")
    parser.add_argument("--results", metavar="JSON", help="instead of run folders: the final runs of a results "
                                                          "file of the reproduction (python -m reproduction)")
    parser.add_argument("--out", default="figures", help="folder for the PNGs (default: figures/)")
    parser.add_argument("--labels", nargs="+", help="legend names, one per run (default: the run names); runs "
                                                    "with the same name are seeds of one configuration, drawn "
                                                    "as their mean with a ± sd band")
    args = parser.parse_args(argv)
    if bool(args.runs) == bool(args.results):
        parser.error("give run folders or --results JSON, not both and not neither")
    if args.labels and len(args.labels) != len(args.runs):
        parser.error(f"--labels gives {len(args.labels)} names for {len(args.runs)} runs")
    try:
        written = plot_results(args.results, args.out) if args.results else plot_runs(args.runs, args.out,
                                                                                       args.labels)
    except PlotError as err:
        sys.exit(f"error: {err}")
    except OSError as err:  # a folder that cannot be written: a full or read-only disk, ...
        sys.exit(f"error: {err.filename}: {err.strerror}")
    print("\n".join(f"wrote {p}" for p in written))


if __name__ == "__main__":
    main()
