#!/usr/bin/env python
"""Plot ε-ResNet runs from their metrics.jsonl into PNG figures.

    python scripts/plot_runs.py train_log.a train_log.b [--labels A B] [--out figures/]

Writes val_error.png and learning_rate.png (every run overlaid), discarded_cnt.png (the
gated runs overlaid) and gates_<run name>.png per gated run: the moving average of each
block's is_discarded as a heat map (blocks × epochs). Only metrics.jsonl is read, never log.log,
and nothing is written into the run folders; TensorFlow is not imported.
"""
import argparse
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from epsilon_resnet import metrics_file  # noqa: E402

GATE_SUFFIX = "/is_discarded"
DPI = 100


class PlotError(ValueError):
    """A run folder without a readable metrics.jsonl (the message names the file), or a bad --out."""


def read_metrics(run_dir):
    """The run's per-epoch records (metrics_file.read_metrics), checked to hold what the plots need."""
    path = os.path.join(run_dir, "metrics.jsonl")
    try:
        records = metrics_file.read_metrics(run_dir)
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
    return [k[:-len(GATE_SUFFIX)] for k in records[-1] if k.endswith(GATE_SUFFIX)]


def save_png(fig, path):
    """Write the figure to a temporary file beside `path`, then rename it: readers never see half a PNG."""
    tmp = f"{path}.tmp-{os.getpid()}"
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


def line_plot(runs, key, ylabel, path, scale=1.0, log=False, steps=False, from_zero=False):
    fig, ax = plt.subplots(figsize=(6.4, 4))
    for label, records in runs:
        points = [(r["epoch"], r[key] * scale) for r in records if key in r]
        ax.plot(*zip(*points), marker="o", markersize=3, label=label,
                drawstyle="steps-post" if steps else "default")
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


def gate_heatmap(label, records, path):
    blocks = gate_blocks(records)
    epochs = [r["epoch"] for r in records]
    values = [[r.get(b + GATE_SUFFIX, float("nan")) for r in records] for b in blocks]
    fig, ax = plt.subplots(figsize=(6.4, 1.5 + 0.18 * len(blocks)))
    image = ax.imshow(values, aspect="auto", interpolation="nearest", cmap="viridis", vmin=0, vmax=1,
                      extent=(epochs[0] - 0.5, epochs[-1] + 0.5, len(blocks) - 0.5, -0.5))
    ax.set_yticks(range(len(blocks)), blocks, fontsize=max(4, min(8, 400 // len(blocks))))
    ax.set(xlabel="epoch", ylabel="block", title=f"{label}: is_discarded (moving average)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    fig.colorbar(image, ax=ax)
    fig.tight_layout()
    return save_png(fig, path)


def is_gated(records):
    """Logs gate averages with some ε > 0: gates with ε = 0 never close (a plain ResNet built gated)."""
    return bool(gate_blocks(records)) and any(r.get("epsilon", 0) > 0 for r in records)


def run_name(run_dir):
    return os.path.basename(os.path.normpath(run_dir)).removeprefix("train_log.")


def plot_runs(run_dirs, out, labels=None):
    """All figures of the runs into `out`; returns the PNG paths written."""
    labels = labels or [run_name(d) for d in run_dirs]
    runs = [(label, read_metrics(d)) for label, d in zip(labels, run_dirs)]
    for run in run_dirs:
        if os.path.commonpath([os.path.realpath(out), os.path.realpath(run)]) == os.path.realpath(run):
            raise PlotError(f"--out {out} is inside the run folder {run}: run folders are never written to")
    os.makedirs(out, exist_ok=True)
    written = [line_plot(runs, "val_error", "validation error (%)", os.path.join(out, "val_error.png"), scale=100),
               line_plot(runs, "learning_rate", "learning rate", os.path.join(out, "learning_rate.png"),
                         log=True, steps=True)]
    gated = [(label, records, run_dir) for (label, records), run_dir in zip(runs, run_dirs) if is_gated(records)]
    if gated:
        written.append(line_plot([(label, records) for label, records, _ in gated], "discarded_cnt",
                                 "discarded blocks (discarded_cnt)", os.path.join(out, "discarded_cnt.png"),
                                 from_zero=True))
    written += [gate_heatmap(label, records, os.path.join(out, f"gates_{run_name(run_dir)}.png"))
                for label, records, run_dir in gated]
    return written


def main(argv=None):
    parser = argparse.ArgumentParser(description="Plot runs' metrics.jsonl: validation error, learning rate, "
                                                 "discarded blocks and per-block gate heat maps.")
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR", help="train_log.<output> folders")
    parser.add_argument("--out", default="figures", help="folder for the PNGs (default: figures/)")
    parser.add_argument("--labels", nargs="+", help="legend names, one per run (default: the run names)")
    args = parser.parse_args(argv)
    if args.labels and len(args.labels) != len(args.runs):
        parser.error(f"--labels gives {len(args.labels)} names for {len(args.runs)} runs")
    try:
        written = plot_runs(args.runs, args.out, args.labels)
    except PlotError as err:
        sys.exit(f"error: {err}")
    print("\n".join(f"wrote {p}" for p in written))


if __name__ == "__main__":
    main()
