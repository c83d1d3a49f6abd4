"""CIFAR-10 reproduction on a small CPU machine, end to end, through the user-facing scripts.

    python benchmarks/reproduce_cifar10.py [--data DIR] [--workdir benchmarks/runs] [--epochs N | --quick]

Trains a plain pre-activation ResNet (configs/cifar10-repro-plain.yaml) and an ε-ResNet of the
same depth (configs/cifar10-repro-eps.yaml) side by side, each in a single-threaded process (one
core each: the cheapest use of a CPU-time budget), compresses the ε-ResNet at its last step,
evaluates the compressed network and writes a Markdown table and a JSON file into
benchmarks/results/. A run folder that is complete is skipped, an incomplete one resumes (what
re-running a training command does). Each run's CPU time (user + sys of the training process,
from wait4) is added to <workdir>/cpu_seconds.json, so a resumed run still reports its total.
"""
import argparse
import json
import os
import re
import subprocess
import sys

import yaml

from epsilon_resnet import metrics_file

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAKE_CIFAR10 = os.path.join(REPO, os.pardir, "shared", "data", "cifar10", "make_cifar10.py")
RESULTS = os.path.join(REPO, "benchmarks", "results", "cifar10_reproduction")
BUDGET_MINUTES = 60
TEST_IMAGES = 10000  # CIFAR-10 test set: errors compare as counts of wrong images
RUNS = {"plain": ("repro-plain", "cifar10-repro-plain.yaml"), "eps": ("repro-eps", "cifar10-repro-eps.yaml")}
QUICK_EPOCHS = 2
QUICK_FLAGS = ["-n", "1", "--max-epoch", str(QUICK_EPOCHS), "--steps-per-epoch", "5"]  # smoke test of every stage
SETTING = ("Settings: configs/cifar10-repro-plain.yaml and configs/cifar10-repro-eps.yaml (their comments "
           "say how they differ from the paper's ResNet-110, ε = 2.5, up to 1000 epochs with adaptive restarts). "
           "Test error: the 10,000 CIFAR-10 test images at the last epoch. CPU-minutes: user + sys of each "
           "training process.\n\n")
SINGLE_THREAD = {"TF_NUM_INTRAOP_THREADS": "1", "TF_NUM_INTEROP_THREADS": "1"}


def script(name):
    return os.path.join(REPO, "scripts", name)


def ensure_data(data_dir):
    """Unpack the shared CIFAR-10 copy into data_dir unless it already holds cifar-10-batches-py."""
    if os.path.isdir(os.path.join(data_dir, "cifar-10-batches-py")):
        return
    if not os.path.isfile(MAKE_CIFAR10):
        sys.exit(f"error: {data_dir} has no cifar-10-batches-py and {MAKE_CIFAR10} is missing: give --data")
    print(f"making CIFAR-10 in {data_dir}", flush=True)
    subprocess.run([sys.executable, MAKE_CIFAR10, "--out", data_dir], check=True)


def read_metrics(run_dir):
    """The run's per-epoch records, [] before its first epoch ends."""
    return metrics_file.read_metrics(run_dir) if os.path.isfile(os.path.join(run_dir, "metrics.jsonl")) else []


def load_ledger(workdir):
    path = os.path.join(workdir, "cpu_seconds.json")
    if not os.path.isfile(path):
        return {}
    with open(path) as f:
        return json.load(f)


def add_cpu_seconds(workdir, name, seconds):
    ledger = load_ledger(workdir)
    ledger[name] = ledger.get(name, 0.0) + seconds
    tmp = os.path.join(workdir, "cpu_seconds.json.tmp")
    with open(tmp, "w") as f:
        json.dump(ledger, f, indent=1)
    os.replace(tmp, os.path.join(workdir, "cpu_seconds.json"))


def train_all(jobs, workdir):
    """Start every incomplete training at once; wait for each, booking its CPU time; fail on any error."""
    running = []
    for name, command in jobs:
        print(f"training {name}: {' '.join(command)} (output in {workdir}/{name}.out)", flush=True)
        with open(os.path.join(workdir, f"{name}.out"), "a") as out:
            process = subprocess.Popen(command, cwd=workdir, stdout=out, stderr=subprocess.STDOUT,
                                       env={**os.environ, **SINGLE_THREAD})
        running.append((name, process))
    failed = []
    for name, process in running:
        _, status, usage = wait_for(process.pid)
        process.returncode = os.waitstatus_to_exitcode(status)
        add_cpu_seconds(workdir, name, usage.ru_utime + usage.ru_stime)
        if process.returncode:
            failed.append(name)
    if failed:
        sys.exit(f"error: training {failed} failed; see {workdir}/<name>.out, then run this command again to resume")


def wait_for(pid):
    """os.wait4 (the rusage of this child alone), waiting on through Ctrl-C: the trainings get the
    SIGINT too, save a checkpoint and stop, and their CPU time must still be booked."""
    while True:
        try:
            return os.wait4(pid, 0)
        except KeyboardInterrupt:
            print("waiting for the trainings to save a checkpoint and stop", file=sys.stderr, flush=True)


def compress_and_evaluate(run_dir, step, data_dir):
    """compressModel.py at `step` (unless its .cfg exists), then cifarCompressedResnet.py; (cfg, error)."""
    cfg_path = os.path.join(run_dir, f"compressed_model_{step}.cfg")
    if not os.path.isfile(cfg_path):
        subprocess.run([sys.executable, script("compressModel.py"), "--dir", run_dir, "--step", str(step)],
                       check=True)
    output = subprocess.run([sys.executable, script("cifarCompressedResnet.py"), "--cfg", cfg_path, "--cifar10",
                             "--data", data_dir], check=True, capture_output=True, text=True).stdout
    print(output, end="")
    match = re.search(r"^Error: (\S+)$", output, re.MULTILINE)
    if not match:
        sys.exit(f"error: cifarCompressedResnet.py printed no 'Error: <value>' line:\n{output}")
    with open(cfg_path) as f:
        return yaml.safe_load(f), float(match.group(1))


def report(plain, eps, cfg, compressed_error, cpu, command):
    """The Markdown table and the JSON record of the reproduction."""
    n = cfg["n"]
    blocks = 3 * n
    full, small = cfg["cost"]["full"], cfg["cost"]["compressed"]
    discarded = len(cfg["discarded_blocks"])
    kept_depth = 2 * (blocks - discarded) + 2
    logit_diff = cfg["check"]["max_abs_logit_difference"]
    rows = [
        {"model": "plain pre-act ResNet", "depth": 6 * n + 2, "epochs": plain["epoch"],
         "cpu_minutes": cpu["plain"], "test_error": plain["val_error"], "discarded": None,
         "params": full["params"], "macs": full["macs"]},
        {"model": f"ε-ResNet (ε={cfg['epsilon']:g})", "depth": 6 * n + 2, "epochs": eps["epoch"],
         "cpu_minutes": cpu["eps"], "test_error": eps["val_error"], "discarded": discarded,
         "params": full["params"], "macs": full["macs"], "compressed_error": compressed_error,
         "max_logit_diff": logit_diff},
        {"model": "compressed ε-ResNet", "depth": kept_depth, "test_error": compressed_error,
         "params": small["params"], "macs": small["macs"]},
    ]
    wrong = {name: round(error * TEST_IMAGES) for name, error in
             (("plain", plain["val_error"]), ("eps", eps["val_error"]), ("compressed", compressed_error))}
    targets = {
        f"each run <= {BUDGET_MINUTES} CPU-minutes": max(cpu.values()) <= BUDGET_MINUTES,
        ">= 20% of gated blocks discarded": discarded >= 0.2 * blocks,
        "ε-ResNet error <= plain error + 1 point": wrong["eps"] <= wrong["plain"] + TEST_IMAGES // 100,
        "compressed error == ε-ResNet error": wrong["compressed"] == wrong["eps"],
    }
    columns = [("model", "{}"), ("depth", "{}"), ("epochs", "{}"), ("cpu_minutes", "{:.1f}"),
               ("test_error", "{:.2%}"), ("discarded", "{} / " + str(blocks)), ("params", "{:,}"), ("macs", "{:,}"),
               ("compressed_error", "{:.2%}"), ("max_logit_diff", "{:.3g}")]
    lines = [f"Command: `{command}`", "",
             "| model | depth | epochs | CPU-minutes | test error | blocks discarded / total | params | MACs "
             "| compressed error | max logit diff |",
             "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join("–" if row.get(key) is None else fmt.format(row[key])
                                       for key, fmt in columns) + " |")
    lines += ["", f"Discarded blocks: {', '.join(cfg['discarded_blocks']) or 'none'}.", ""]
    lines += [f"- {name}: {'yes' if ok else 'NO'}" for name, ok in targets.items()]
    lines += [f"- compressModel warning: {warning}" for warning in cfg["warnings"]]
    return "\n".join(lines) + "\n", {"command": command, "rows": rows, "targets": targets,
                                     "discarded_blocks": cfg["discarded_blocks"], "warnings": cfg["warnings"]}


def write_atomic(path, text):
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.replace(path + ".tmp", path)


def main(argv=None):
    parser = argparse.ArgumentParser(description="Train a plain ResNet and an ε-ResNet on CIFAR-10 within a CPU "
                                                 "budget, compress the ε-ResNet, tabulate the test errors.")
    parser.add_argument("--data", help="folder with cifar-10-batches-py (default: <workdir>/cifar10, made from "
                                       "../shared/data/cifar10 by make_cifar10.py if missing)")
    parser.add_argument("--workdir", default=os.path.join(REPO, "benchmarks", "runs"),
                        help="where the train_log.* folders go (default: benchmarks/runs/)")
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--epochs", type=int, help="train up to this epoch instead of the configs' max_epoch "
                                                 "(their lr schedules are not rescaled)")
    size.add_argument("--quick", action="store_true", help="smoke test: ResNet-8, 2 epochs of 5 steps, runs "
                                                           "named *-quick, results not written to benchmarks/")
    args = parser.parse_args(argv)
    workdir = os.path.abspath(args.workdir)
    os.makedirs(workdir, exist_ok=True)
    data_dir = os.path.abspath(args.data or os.path.join(workdir, "cifar10"))
    ensure_data(data_dir)

    flags = QUICK_FLAGS if args.quick else ["--max-epoch", str(args.epochs)] if args.epochs else []
    names = {key: name + ("-quick" if args.quick else "") for key, (name, _) in RUNS.items()}
    jobs = []
    for key, (_, config_file) in RUNS.items():
        config_path = os.path.join(REPO, "configs", config_file)
        with open(config_path) as f:
            max_epoch = QUICK_EPOCHS if args.quick else args.epochs or yaml.safe_load(f)["train"]["max_epoch"]
        records = read_metrics(os.path.join(workdir, f"train_log.{names[key]}"))
        if records and records[-1]["epoch"] >= max_epoch:
            print(f"{names[key]}: complete ({records[-1]['epoch']} epochs), skipped", flush=True)
        else:
            jobs.append((names[key], [sys.executable, script("cifarEpsilonResnet.py"), "--config", config_path,
                                      "-o", names[key], "--data", data_dir, *flags]))
    train_all(jobs, workdir)

    last = {key: read_metrics(os.path.join(workdir, f"train_log.{name}"))[-1] for key, name in names.items()}
    eps_dir = os.path.join(workdir, f"train_log.{names['eps']}")
    cfg, compressed_error = compress_and_evaluate(eps_dir, last["eps"]["global_step"], data_dir)
    ledger = load_ledger(workdir)
    cpu = {key: ledger.get(name, float("nan")) / 60 for key, name in names.items()}
    command = " ".join(["python", os.path.relpath(os.path.abspath(__file__), REPO), *(argv or sys.argv[1:])])
    markdown, record = report(last["plain"], last["eps"], cfg, compressed_error, cpu, command)
    print(markdown)
    if not args.quick:
        title = "# CIFAR-10 reproduction (benchmarks/reproduce_cifar10.py)\n\n"
        write_atomic(RESULTS + ".md", title + SETTING + markdown)
        write_atomic(RESULTS + ".json", json.dumps(record, indent=1, ensure_ascii=False) + "\n")
        print(f"wrote {RESULTS}.md and .json")


if __name__ == "__main__":
    main()
