"""python -m reproduction: run the protocol (skipping what is done), write the results, render them."""
import argparse
import json
import os
import subprocess
import sys

from epsilon_resnet.atomic import write_atomic
from epsilon_resnet.errors import Interrupted, RunError, UserError
from epsilon_resnet.provenance import git_state, machine, now
from reproduction import NETWORKS, REPO, RESULTS_DIR, RESULTS_NAME, read_text, shown
from reproduction.ledger import Ledger
from reproduction.protocol import PROTOCOL, QUICK_PROTOCOL, load_protocol
from reproduction.report import README_BEGIN, README_END, read_results, render_file, splice_report
from reproduction.results import build_results, run_record, selection_summary, sha256_file
from reproduction.runs import final_runs, selection_runs
from reproduction.scheduler import SCRIPTS, Scheduler

SAMPLE_DATA = os.path.join(REPO, "data", "cifar10-sample")


def data_record(data_dir, how, protocol):
    folder = os.path.join(data_dir, "cifar-10-batches-py")
    names = sorted(os.listdir(folder)) if os.path.isdir(folder) else []
    return {"provenance": protocol.data_provenance, "dir": shown(data_dir), "source": how,
            "files_sha256": {name: sha256_file(os.path.join(folder, name)) for name in names}}


def run_protocol(protocol, workdir, networks, data_dir, jobs, invocation):
    """Train, compress, evaluate and keep every run of the protocol; returns the runs in results order."""
    scheduler = Scheduler(Ledger(workdir), workdir, data_dir, jobs, invocation)
    selection, chosen = selection_runs(protocol, workdir, networks), []

    def add_final_eps(done):
        """Once every selection run is complete: choose ε (held-out numbers only), add its final runs."""
        if chosen or not all(run.name in done for run in selection):
            return []
        records = [run_record(run, invocation["date"]) for run in selection]
        epsilon = selection_summary(records, protocol)["chosen_epsilon"]
        print(f"selection complete: ε = {epsilon:g}", flush=True)
        chosen.extend(final_runs(protocol, workdir, networks, "eps", epsilon))
        return chosen

    plain = final_runs(protocol, workdir, networks, "plain")
    failed = scheduler.run(selection + plain, add_final_eps)
    if scheduler.stopping:
        raise Interrupted("interrupted: the runs saved a checkpoint; run the same command again to go on")
    if failed:
        raise RunError("these runs failed (the others are kept; run the same command again to go on):\n"
                       + "\n".join(f"  {name}: {why}" for name, why in failed.items()))
    return selection + plain + chosen


def plot_figures(json_path, figures_dir, results_dir):
    """scripts/plot_runs.py on the results file; the figures as the Markdown links them."""
    command = [SCRIPTS["plot"], "--results", json_path, "--out", figures_dir]
    output = subprocess.run([sys.executable, *command], capture_output=True, text=True)
    if output.returncode:
        raise RunError(f"plot_runs.py failed:\n{output.stderr[-2000:]}")
    paths = [line[len("wrote "):] for line in output.stdout.splitlines() if line.startswith("wrote ")]
    inside = os.path.abspath(figures_dir).startswith(REPO + os.sep)
    return {"command": f"python scripts/plot_runs.py --results {shown(json_path)} --out {shown(figures_dir)}",
            "files": [shown(p) if inside else os.path.relpath(p, results_dir) for p in paths]}


def write_results(results, results_dir, figures_dir):
    """The JSON, the figures drawn from it, then the Markdown rendered from it; returns the two paths."""
    json_path = os.path.join(results_dir, f"{RESULTS_NAME}.json")
    results["files"] = {"json": shown(json_path), "markdown": shown(os.path.splitext(json_path)[0] + ".md")}
    write_atomic(json_path, json.dumps(results, indent=1, ensure_ascii=False) + "\n")
    results["figures"] = plot_figures(json_path, figures_dir, results_dir)
    write_atomic(json_path, json.dumps(results, indent=1, ensure_ascii=False) + "\n")
    return json_path, render_file(json_path)


def parse_args(argv):
    parser = argparse.ArgumentParser(allow_abbrev=False, prog="python -m reproduction",
                                     description="The CIFAR-10 reproduction: ε chosen on held-out images, plain "
                                                 "and ε-ResNet trained with several seeds, compressed, scored on "
                                                 "the test set; results as JSON and Markdown.")
    parser.add_argument("--protocol", help=f"protocol YAML (default {shown(PROTOCOL)}; --quick: "
                                           f"{shown(QUICK_PROTOCOL)})")
    parser.add_argument("--data", help="folder with cifar-10-batches-py (the official python-version layout; "
                                       "--quick: data/cifar10-sample)")
    parser.add_argument("--workdir", help="run folders, their configs, logs and ledger.json (default "
                                          "reproduction/runs; --quick: reproduction/runs/quick)")
    parser.add_argument("--results", help="folder for cifar10_reproduction.json and .md (default "
                                          "reproduction/results; --quick: <workdir>/results)")
    parser.add_argument("--figures", help="folder for the figures (default figures/reproduction; with --results "
                                          "or --quick: <results>/figures)")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1,
                        help="processes at a time, one thread each (default: the number of cores)")
    parser.add_argument("--quick", action="store_true", help="the whole protocol on the 500-image sample with "
                                                             "ResNet-8 for one epoch: minutes, numbers meaningless")
    parser.add_argument("--render", metavar="JSON", help="only write the Markdown beside this results file, "
                                                         "rendered from it")
    parser.add_argument("--doc", metavar="PATH", help=f"also put the Markdown into PATH (docs/reproduction.md), "
                                                      f"between the lines {README_BEGIN} and {README_END}")
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error(f"--jobs must be >= 1, got {args.jobs}")
    if not (args.render or args.quick or args.data):
        parser.error("--data is required: the folder that holds cifar-10-batches-py (or use --quick)")
    return args


def folders(args):
    """(protocol file, work folder, results folder, figures folder) with the defaults applied."""
    protocol = os.path.abspath(args.protocol or (QUICK_PROTOCOL if args.quick else PROTOCOL))
    workdir = os.path.abspath(args.workdir or os.path.join(REPO, "reproduction", "runs", *["quick"] * args.quick))
    results = os.path.abspath(args.results or (os.path.join(workdir, "results") if args.quick else RESULTS_DIR))
    figures = os.path.abspath(args.figures or (os.path.join(results, "figures") if args.results or args.quick
                                               else os.path.join(REPO, "figures", "reproduction")))
    return protocol, workdir, results, figures


def reproduce(args, command):
    """Run the protocol (skipping what is done), then write the results; returns their two paths."""
    protocol_path, workdir, results_dir, figures_dir = folders(args)
    protocol = load_protocol(protocol_path)
    data_dir = os.path.abspath(args.data or SAMPLE_DATA)
    how = "given with --data" if args.data else "the --quick default"
    invocation = {"date": now(), "git": git_state(), "machine": machine()}
    runs = run_protocol(protocol, workdir, os.path.join(results_dir, NETWORKS), data_dir, args.jobs, invocation)
    context = {"command": command, "protocol_path": protocol_path, "invocation": invocation,
               "data": data_record(data_dir, how, protocol)}
    return write_results(build_results(runs, protocol, context), results_dir, figures_dir)


def main(argv=None):
    args = parse_args(argv)
    command = " ".join(["python -m reproduction", *(sys.argv[1:] if argv is None else argv)])
    try:
        if args.render:
            json_path, md_path = args.render, render_file(args.render)
        else:
            json_path, md_path = reproduce(args, command)
            print(read_text(md_path))
        if args.doc:
            splice_report(args.doc, read_results(json_path))
    except (UserError, OSError, subprocess.CalledProcessError) as err:
        sys.exit(f"error: {err}")
    print(f"wrote {md_path}{f' and its section of {args.doc}' if args.doc else ''} from {json_path}")


if __name__ == "__main__":
    main()
