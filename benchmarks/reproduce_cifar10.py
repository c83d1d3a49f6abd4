"""The CIFAR-10 reproduction: ε chosen on held-out data, several seeds, every number in one file.

    python benchmarks/reproduce_cifar10.py [--data DIR] [--workdir DIR] [--results DIR] [--jobs K]
    python benchmarks/reproduce_cifar10.py --quick --workdir W --results R   # the whole protocol in minutes
    python benchmarks/reproduce_cifar10.py --render benchmarks/results/cifar10_reproduction.json --readme README.md

The protocol is the YAML file given by --protocol (configs/cifar10-repro-protocol.yaml; its
comments say what each step does). Every run is made only through the command lines, in a
process of its own with one thread (TF_NUM_INTRAOP_THREADS=1, TF_NUM_INTEROP_THREADS=1), up to
--jobs at a time: cifarEpsilonResnet.py trains, compressModel.py compresses at the last step,
cifarCompressedResnet.py scores the compressed network. What is read back is each run's
metrics.jsonl, the compressed_model_<step>.cfg and the line "Error: <e>" the evaluation prints.

A rerun skips what is finished and resumes what is not (re-running a training command resumes
it); <workdir>/ledger.json books the CPU time (user + sys from wait4) of every process, and for
every training session its commit, machine and date. A run folder whose config differs from the
one the protocol now makes is refused. The results, benchmarks/results/cifar10_reproduction.json
and .md, are written (atomically) when every run is done; the Markdown is rendered from the JSON
alone (`--render` redoes it), and the figures are drawn from the JSON by scripts/plot_runs.py.
"""
import argparse
import dataclasses
import hashlib
import json
import os
import re
import statistics
import subprocess
import sys

import yaml

# Run as a script (python benchmarks/reproduce_cifar10.py): the repository root makes `benchmarks` importable.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.provenance import git_state, machine, now, write_atomic  # noqa: E402
from epsilon_resnet import config as config_lib  # noqa: E402  (no TensorFlow: the runs are processes of their own)
from epsilon_resnet import metrics_file  # noqa: E402
from epsilon_resnet.errors import ConfigError, Interrupted, RunError, UserError  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPTS = {stage: os.path.join(REPO, "scripts", name) for stage, name in (
    ("train", "cifarEpsilonResnet.py"), ("compress", "compressModel.py"), ("evaluate", "cifarCompressedResnet.py"),
    ("plot", "plot_runs.py"))}
PROTOCOL = os.path.join(REPO, "configs", "cifar10-repro-protocol.yaml")
QUICK_PROTOCOL = os.path.join(REPO, "configs", "cifar10-repro-quick.yaml")
SAMPLE_DATA = os.path.join(REPO, "data", "cifar10-sample")
MAKE_CIFAR10 = os.path.join(REPO, os.pardir, "shared", "data", "cifar10", "make_cifar10.py")
RESULTS_NAME = "cifar10_reproduction"
SINGLE_THREAD = {"TF_NUM_INTRAOP_THREADS": "1", "TF_NUM_INTEROP_THREADS": "1", "OMP_NUM_THREADS": "1"}
SCHEMA = 1
SELECTION_RULE = (
    "An ε is eligible when, averaged over its selection seeds, its held-out error is at most the plain "
    "network's held-out error + max_error_increase, the blocks its compression removes are at least "
    "min_discarded_fraction of the gated blocks, and in every one of its runs the compressed network's "
    "held-out error equals the gated network's. The eligible ε with the lowest mean held-out error is "
    "chosen (a tie goes to the larger ε). If none is eligible: among the ε within the error bound, the one "
    "removing the most blocks on average (a tie goes to the lower error); if no ε is within the error "
    "bound, the one with the lowest mean held-out error (a tie goes to the larger ε).")
README_BEGIN, README_END = "<!-- reproduction: begin -->", "<!-- reproduction: end -->"
PROTOCOL_KEYS = {"plain", "eps", "overrides", "selection", "final", "targets", "budget_cpu_minutes",
                 "data_provenance", "notes"}


# ---- the protocol and its runs ----------------------------------------------------------------
def load_protocol(path):
    """The protocol YAML, checked: what is missing or mistyped is named before any run starts."""
    raw = config_lib.read_yaml(path, ConfigError, f"protocol file {path!r} does not exist")
    if not isinstance(raw, dict) or set(raw) != PROTOCOL_KEYS:
        keys = sorted(raw) if isinstance(raw, dict) else type(raw).__name__
        raise ConfigError(f"{path}: expected exactly the keys {sorted(PROTOCOL_KEYS)}, got {keys}")
    selection, final, targets = raw["selection"], raw["final"], raw["targets"]

    def seeds_ok(seeds):
        return isinstance(seeds, list) and seeds and len(set(seeds)) == len(seeds) and all(
            isinstance(s, int) and not isinstance(s, bool) for s in seeds)

    problems = [
        (not isinstance(selection, dict) or set(selection) != {"holdout", "epsilons", "seeds"},
         "selection must hold holdout, epsilons and seeds"),
        (not isinstance(final, dict) or set(final) != {"seeds"}, "final must hold seeds"),
        (not isinstance(targets, dict) or set(targets) != {"min_discarded_fraction", "max_error_increase"},
         "targets must hold min_discarded_fraction and max_error_increase"),
        (not isinstance(raw["overrides"], dict), "overrides must be a mapping of dotted config keys"),
    ]
    problems += [] if any(bad for bad, _ in problems) else [
        (not isinstance(selection["holdout"], int) or selection["holdout"] < 1, "selection.holdout must be >= 1"),
        (not isinstance(selection["epsilons"], list) or not selection["epsilons"] or any(
            not isinstance(e, (int, float)) or e <= 0 for e in selection["epsilons"]),
         "selection.epsilons must be a non-empty list of ε > 0"),
        (not seeds_ok(selection["seeds"]) or not seeds_ok(final["seeds"]),
         "selection.seeds and final.seeds must be non-empty lists of distinct integers"),
    ]
    for bad, message in problems:
        if bad:
            raise ConfigError(f"{path}: {message}")
    return raw


def set_dotted(raw, dotted, value):
    section, key = dotted.split(".")
    raw.setdefault(section, {})[key] = value


@dataclasses.dataclass
class Run:
    """One training run of the protocol and where its files are."""
    name: str
    phase: str          # "select" (held-out split) or "final" (all training images, test set)
    kind: str           # "plain" or "eps"
    seed: int
    epsilon: float
    holdout: int        # held-out training images; 0: the evaluation set is the test set
    base: str           # the protocol's config it was made from
    config_path: str    # its own config, written by claim() before it is trained
    config: dict
    text: str           # the config file's text
    run_dir: str

    @property
    def sha256(self):
        return sha256_text(self.text)

    @property
    def split(self):
        return "holdout" if self.holdout else "full"

    @property
    def max_epoch(self):
        return self.config["train"]["max_epoch"]

    @property
    def compressed(self):
        """Selection runs of the plain network are not compressed: nothing there asks for their cost."""
        return self.kind == "eps" or self.phase == "final"


def run_config(base, seed, epsilon, holdout, overrides):
    """The base config with the run's seed, ε and held-out split set, validated as the training CLI will."""
    raw = config_lib.read_yaml(base, ConfigError, f"config file {base!r} does not exist") or {}
    set_dotted(raw, "train.seed", seed)
    if epsilon is not None:
        set_dotted(raw, "model.epsilon", float(epsilon))
    if holdout:
        raw.setdefault("data", {})
        raw["data"]["options"] = {**(raw["data"].get("options") or {}), "holdout": holdout}
    for dotted, value in overrides.items():
        set_dotted(raw, dotted, value)
    config_lib.from_dict(raw, source=f"{base} with the run's settings")
    return raw


def make_run(protocol, workdir, phase, kind, seed, epsilon=None):
    """The run's config (for <workdir>/configs/<name>.yaml) and where its files go."""
    holdout = protocol["selection"]["holdout"] if phase == "select" else 0
    name = f"{phase}-{'plain' if kind == 'plain' else f'eps{epsilon:g}'}-s{seed}"
    base = os.path.join(REPO, protocol[kind])
    content = run_config(base, seed, epsilon, holdout, protocol["overrides"])
    text = (f"# {name}: made by benchmarks/reproduce_cifar10.py from {shown(base)}; "
            f"trained with cifarEpsilonResnet.py --config <this file>\n" + yaml.safe_dump(content, sort_keys=False))
    return Run(name, phase, kind, seed, content["model"].get("epsilon", 0.0), holdout, base,
               os.path.join(workdir, "configs", f"{name}.yaml"), content, text,
               os.path.join(workdir, f"train_log.{name}"))


def selection_runs(protocol, workdir):
    seeds = protocol["selection"]["seeds"]
    return [make_run(protocol, workdir, "select", "plain", s) for s in seeds] + [
        make_run(protocol, workdir, "select", "eps", s, e) for e in protocol["selection"]["epsilons"] for s in seeds]


def final_runs(protocol, workdir, kind, epsilon=None):
    return [make_run(protocol, workdir, "final", kind, s, epsilon) for s in protocol["final"]["seeds"]]


# ---- files ------------------------------------------------------------------------------------
def shown(path):
    """A path as the results show it: relative to the repository when inside it."""
    path = os.path.abspath(path)
    return os.path.relpath(path, REPO) if path.startswith(REPO + os.sep) else path


def read_text(path):
    with open(path) as f:
        return f.read()


def sha256_text(text):
    return hashlib.sha256(text.encode()).hexdigest()


def sha256_file(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_metrics(run_dir):
    """The run's per-epoch records, [] before its first epoch ends."""
    return metrics_file.read_metrics(run_dir) if os.path.isfile(os.path.join(run_dir, "metrics.jsonl")) else []


def cfg_path(run, step):
    return os.path.join(run.run_dir, f"compressed_model_{step}.cfg")


def read_cfg(path):
    with open(path) as f:
        return yaml.safe_load(f)


class Ledger:
    """<workdir>/ledger.json: per run, its config's hash, its training sessions and its other stages."""

    def __init__(self, workdir):
        self.path = os.path.join(workdir, "ledger.json")
        self.entries = json.loads(read_text(self.path)) if os.path.isfile(self.path) else {}

    def entry(self, name):
        return self.entries.setdefault(name, {"config_sha256": None, "sessions": [], "stages": {}})

    def save(self):
        write_atomic(self.path, json.dumps(self.entries, indent=1, ensure_ascii=False) + "\n")


def claim(run, ledger):
    """Write the run's config file, unless its folder was trained from another config than the one
    the protocol makes now: that is refused, and the config file it was trained from is left alone."""
    recorded = ledger.entries.get(run.name, {}).get("config_sha256")
    if os.path.isdir(run.run_dir) and recorded != run.sha256:
        why = "no record of it in ledger.json" if recorded is None else f"its config had SHA-256 {recorded[:12]}…"
        raise RunError(f"{run.run_dir} exists but {why}, and the protocol now makes another config for it "
                       f"(SHA-256 {run.sha256[:12]}…): remove the folder or use another --workdir")
    if not os.path.isfile(run.config_path) or read_text(run.config_path) != run.text:
        write_atomic(run.config_path, run.text)


# ---- where each run stands --------------------------------------------------------------------
def next_stage(run, ledger, data_dir):
    """(stage, command) of the run's next step, or None when it is complete."""
    records = read_metrics(run.run_dir)
    if not records or records[-1]["epoch"] < run.max_epoch:
        return "train", [SCRIPTS["train"], "--config", run.config_path, "-o", run.name, "--data", data_dir]
    if not run.compressed:
        return None
    step = records[-1]["global_step"]
    if not os.path.isfile(cfg_path(run, step)):
        return "compress", [SCRIPTS["compress"], "--dir", run.run_dir, "--step", str(step), "--data", data_dir]
    if ledger.entry(run.name)["stages"].get("evaluate", {}).get("step") != step:
        return "evaluate", [SCRIPTS["evaluate"], "--cfg", cfg_path(run, step), "--cifar10", "--data", data_dir]
    return None


def parse_error(text):
    """The error printed by cifarCompressedResnet.py ("Error: 0.1916"), None if there is none."""
    match = re.search(r"^Error: ([0-9.eE+-]+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else None


# ---- running the processes --------------------------------------------------------------------
@dataclasses.dataclass
class Started:
    run: Run
    stage: str
    process: subprocess.Popen
    log: str
    from_epoch: int
    date: str


class Scheduler:
    """Runs the stages of many runs, `slots` processes at a time, booking each process's CPU time."""

    def __init__(self, ledger, workdir, data_dir, slots, invocation):
        self.ledger, self.workdir, self.data_dir, self.slots = ledger, workdir, data_dir, slots
        self.invocation = invocation
        self.running, self.failed, self.done, self.last = {}, {}, set(), {}
        self.stopping = False

    def run(self, runs, extend=lambda done: []):
        """Work through `runs`; `extend(done names)` may add runs as others complete. Returns failures."""
        queue = list(runs)
        for run in queue:
            claim(run, self.ledger)
        while True:
            self._fill(queue)
            added = extend(self.done)
            for run in added:
                claim(run, self.ledger)
            queue += added
            if added:
                continue
            if not self.running:
                return self.failed
            self._reap(*self._wait())

    def _fill(self, queue):
        busy = {started.run.name for started in self.running.values()}
        for run in queue:
            if run.name in busy or run.name in self.failed or run.name in self.done or self.stopping:
                continue
            following = next_stage(run, self.ledger, self.data_dir)
            if following is None:
                self.done.add(run.name)
            elif self.last.get(run.name) == following[0]:  # it ended well without getting further
                self.failed[run.name] = f"{following[0]} exited 0 but the run is not further on"
            elif len(self.running) < self.slots:
                self._start(run, *following)
                busy.add(run.name)

    def _start(self, run, stage, command):
        log = os.path.join(self.workdir, "logs", f"{run.name}.{stage}.out")
        os.makedirs(os.path.dirname(log), exist_ok=True)
        records = read_metrics(run.run_dir)
        self.ledger.entry(run.name)["config_sha256"] = run.sha256
        self.ledger.save()
        print(f"{run.name}: {stage} (log {shown(log)})", flush=True)
        with open(log, "a" if stage == "train" else "w") as out:
            process = subprocess.Popen([sys.executable, *command], cwd=self.workdir, stdout=out,
                                       stderr=subprocess.STDOUT, env={**os.environ, **SINGLE_THREAD})
        self.running[process.pid] = Started(run, stage, process, log, records[-1]["epoch"] if records else 0, now())

    def _reap(self, pid, status, usage):
        started = self.running.pop(pid, None)
        if started is None:
            return
        started.process.returncode = code = os.waitstatus_to_exitcode(status)
        run, stage = started.run, started.stage
        cpu = usage.ru_utime + usage.ru_stime
        entry = self.ledger.entry(run.name)
        if stage == "train":
            records = read_metrics(run.run_dir)
            entry["sessions"].append({
                "invocation": self.invocation["date"], "started": started.date, "ended": now(),
                "from_epoch": started.from_epoch, "to_epoch": records[-1]["epoch"] if records else 0,
                "cpu_seconds": cpu, "exit_code": code, "commit": self.invocation["git"]["commit"],
                "dirty": self.invocation["git"]["dirty"], "machine": self.invocation["machine"]})
        else:
            code = self._book_stage(entry, started, cpu, code)
        self.ledger.save()
        self.last[run.name] = stage
        if code:
            self.failed[run.name] = f"{stage} failed ({code}); see {shown(started.log)}"
        print(f"{run.name}: {stage} {'failed' if code else 'done'} ({cpu / 60:.1f} CPU-minutes)", flush=True)

    def _wait(self):
        """os.wait4 on any child (its own rusage), waiting on through Ctrl-C: the children get the
        SIGINT too, save a checkpoint and stop, and their CPU time must still be booked."""
        while True:
            try:
                return os.wait4(-1, 0)
            except KeyboardInterrupt:
                self.stopping = True
                print("waiting for the runs to save a checkpoint and stop", file=sys.stderr, flush=True)

    def _book_stage(self, entry, started, cpu, code):
        """Compression and evaluation: CPU time summed over attempts, the evaluation's error once it
        succeeds. Returns the exit code, or a message when the evaluation printed no error."""
        booked = entry["stages"].setdefault(started.stage, {"cpu_seconds": 0.0})
        booked["cpu_seconds"] += cpu
        if started.stage != "evaluate" or code:
            return code
        error = parse_error(read_text(started.log))
        if error is None:
            return "no 'Error: <value>' line in its output"
        booked.update(step=read_metrics(started.run.run_dir)[-1]["global_step"], error=error)
        return 0


# ---- the results ------------------------------------------------------------------------------
CURVES = ("epoch", "global_step", "val_error", "train_error", "discarded_cnt", "learning_rate", "epsilon")
GATE_SUFFIX = "/is_discarded"
RESPONSE_SUFFIX = "/response_abs_max"  # moving average of max|F| over the batch: what ε is compared with
TOLERANCE = 1e-9  # errors are fractions of a number of images: compare them with a hair of slack


def stats(values):
    """Mean and sample standard deviation (None for a single value) of numbers, with the numbers."""
    values = list(values)
    return {"mean": statistics.fmean(values), "sd": statistics.stdev(values) if len(values) > 1 else None,
            "n": len(values), "values": values}


def training_record(entry, invocation):
    """Whether this invocation trained the run (from scratch or resumed) or found it finished; all sessions."""
    sessions = entry["sessions"]
    here = [s for s in sessions if s["invocation"] == invocation]
    status = ("found finished" if not here else "trained in this invocation" if here[0]["from_epoch"] == 0
              else f"resumed from epoch {here[0]['from_epoch']} in this invocation")
    return {"this_invocation": status, "cpu_minutes": sum(s["cpu_seconds"] for s in sessions) / 60,
            "sessions": sessions}


def compression_record(run, entry, last):
    """What compressModel.py wrote at the last step and what the compressed network scored."""
    step = last["global_step"]
    cfg = read_cfg(cfg_path(run, step))
    check, cost, stages = cfg["check"], cfg["cost"], entry["stages"]
    compressed_error = stages["evaluate"]["error"]
    return {
        "step": step, "cfg": shown(cfg_path(run, step)), "discarded_blocks": list(cfg["discarded_blocks"]),
        "removed": len(cfg["discarded_blocks"]),
        "params": {"full": cost["full"]["params"], "compressed": cost["compressed"]["params"]},
        "macs": {"full": cost["full"]["macs"], "compressed": cost["compressed"]["macs"]},
        "check": {key: check.get(key) for key in ("max_abs_logit_difference", "gated_error", "compressed_error",
                                                  "images")},
        # Where the two networks part: gates the .cfg check saw open or closed against the decision.
        "removed_but_opened": list(check.get("discarded_blocks_opened") or []),
        "kept_but_closed": list(check.get("kept_blocks_closed") or []),
        "flickering": [{"block": f["block"], "closed_rate": f["closed_rate"]} for f in cfg.get("flickering_blocks") or []],
        "compressed_error": compressed_error,
        # Lossless: as many wrong images as the gated network at the same step, on the same images.
        "lossless": round(compressed_error * check["images"]) == round(last["val_error"] * check["images"]),
        "warnings": list(cfg.get("warnings") or []),
        "cpu_minutes": {stage: stages[stage]["cpu_seconds"] / 60 for stage in ("compress", "evaluate")},
    }


def run_record(run, ledger, invocation):
    """Everything the results say about one run, from its metrics.jsonl, .cfg and the ledger."""
    records = read_metrics(run.run_dir)
    last, entry = records[-1], ledger.entry(run.name)
    blocks = [key[:-len(GATE_SUFFIX)] for key in last if key.endswith(GATE_SUFFIX)]
    compression = compression_record(run, entry, last) if run.compressed else None
    total = 3 * run.config["model"]["n"]  # residual blocks of a CIFAR ResNet-(6n+2)
    return {
        "name": run.name, "phase": run.phase, "kind": run.kind, "split": run.split, "holdout": run.holdout,
        "seed": run.seed, "epsilon": run.epsilon,
        "config": {"path": shown(run.config_path), "sha256": run.sha256, "made_from": shown(run.base),
                   "content": run.config},
        "run_dir": shown(run.run_dir), "training": training_record(entry, invocation),
        "epochs": last["epoch"], "global_step": last["global_step"], "blocks": total,
        "error": last["val_error"],  # held-out error for a selection run, test error for a final run
        "closed_at_end": last.get("discarded_cnt"),
        "curves": {key: [r.get(key) for r in records] for key in CURVES},
        "gates": {block: [r.get(block + GATE_SUFFIX) for r in records] for block in blocks},
        "responses": {block: [r.get(block + RESPONSE_SUFFIX) for r in records] for block in blocks
                      if block + RESPONSE_SUFFIX in last},
        "compression": compression,
        "compressed_depth": None if compression is None else 2 * (total - compression["removed"]) + 2,
    }


def choose_epsilon(plain_error, candidates, blocks, targets):
    """SELECTION_RULE on held-out numbers. Marks each candidate's criteria; returns (ε, reason)."""
    bound = plain_error + targets["max_error_increase"]
    for c in candidates:
        c["within_error"] = c["error"]["mean"] <= bound + TOLERANCE
        c["enough_removed"] = c["removed"]["mean"] >= targets["min_discarded_fraction"] * blocks - TOLERANCE
        c["eligible"] = c["within_error"] and c["enough_removed"] and c["lossless"]
    eligible = [c for c in candidates if c["eligible"]]
    within = [c for c in candidates if c["within_error"]]
    if eligible:
        best = min(eligible, key=lambda c: (c["error"]["mean"], -c["epsilon"]))
        return best["epsilon"], "eligible, with the lowest mean held-out error of the eligible ε"
    if within:
        best = max(within, key=lambda c: (c["removed"]["mean"], -c["error"]["mean"]))
        return best["epsilon"], "no ε was eligible; of those within the error bound it removes the most blocks"
    best = min(candidates, key=lambda c: (c["error"]["mean"], -c["epsilon"]))
    return best["epsilon"], "no ε was eligible or within the error bound; it has the lowest mean held-out error"


def selection_summary(records, protocol):
    """The held-out numbers per candidate, and the choice made from them."""
    chosen = [r for r in records if r["phase"] == "select"]
    plain = [r for r in chosen if r["kind"] == "plain"]
    candidates = []
    for epsilon in protocol["selection"]["epsilons"]:
        runs = [r for r in chosen if r["kind"] == "eps" and r["epsilon"] == float(epsilon)]
        candidates.append({"epsilon": float(epsilon), "runs": [r["name"] for r in runs],
                           "error": stats(r["error"] for r in runs),
                           "removed": stats(r["compression"]["removed"] for r in runs),
                           "lossless": all(r["compression"]["lossless"] for r in runs)})
    plain_error, blocks = stats(r["error"] for r in plain), chosen[0]["blocks"]
    epsilon, reason = choose_epsilon(plain_error["mean"], candidates, blocks, protocol["targets"])
    return {"plain": {"runs": [r["name"] for r in plain], "error": plain_error}, "candidates": candidates,
            "blocks": blocks, "chosen_epsilon": epsilon, "reason": reason}


def final_summary(records, kind):
    """Mean ± sd over the seeds of one configuration's final runs."""
    runs = [r for r in records if r["phase"] == "final" and r["kind"] == kind]
    compression = [r["compression"] for r in runs]
    return {
        "runs": [r["name"] for r in runs], "seeds": [r["seed"] for r in runs], "epsilon": runs[0]["epsilon"],
        "blocks": runs[0]["blocks"], "depth": 2 * runs[0]["blocks"] + 2, "epochs": runs[0]["epochs"],
        "test_error": stats(r["error"] for r in runs),
        "cpu_minutes": stats(r["training"]["cpu_minutes"] for r in runs),
        "removed": stats(c["removed"] for c in compression),
        "compressed_depth": stats(r["compressed_depth"] for r in runs),
        "params": {"full": compression[0]["params"]["full"],
                   "compressed": stats(c["params"]["compressed"] for c in compression)},
        "macs": {"full": compression[0]["macs"]["full"],
                 "compressed": stats(c["macs"]["compressed"] for c in compression)},
        "compressed_error": stats(c["compressed_error"] for c in compression),
        "lossless_runs": sum(c["lossless"] for c in compression),
    }


def check_targets(records, final, protocol):
    """The reproduction's targets, each met or missed, with the numbers."""
    plain, eps = final["plain"], final["eps"]
    targets, budget = protocol["targets"], protocol["budget_cpu_minutes"]
    removed = eps["removed"]["mean"] / eps["blocks"]
    increase = eps["test_error"]["mean"] - plain["test_error"]["mean"]
    slowest = max(r["training"]["cpu_minutes"] for r in records)
    return [
        {"target": f"mean blocks discarded >= {targets['min_discarded_fraction']:.0%} of the gated blocks",
         "met": removed >= targets["min_discarded_fraction"] - TOLERANCE,
         "measured": f"{eps['removed']['mean']:.2f} of {eps['blocks']} ({removed:.1%})"},
        {"target": f"mean ε-ResNet test error <= mean plain test error + {in_points(targets['max_error_increase'])}",
         "met": increase <= targets["max_error_increase"] + TOLERANCE,
         "measured": f"{eps['test_error']['mean']:.2%} vs {plain['test_error']['mean']:.2%}: "
                     f"{increase * 100:+.2f} points"},
        {"target": "compressed test error = gated test error in every ε-ResNet run",
         "met": eps["lossless_runs"] == len(eps["runs"]),
         "measured": f"{eps['lossless_runs']} of {len(eps['runs'])} runs"},
        {"target": f"every training run <= {budget} CPU-minutes",
         "met": slowest <= budget, "measured": f"at most {slowest:.1f} over {len(records)} runs"},
    ]


def build_results(runs, ledger, protocol, context):
    """The results document: every run, the selection, the final summaries, the targets."""
    records = [run_record(run, ledger, context["invocation"]["date"]) for run in runs]
    final = {kind: final_summary(records, kind) for kind in ("plain", "eps")}
    return {
        "schema": SCHEMA, "command": context["command"],
        "protocol": {"path": shown(context["protocol_path"]), "sha256": sha256_file(context["protocol_path"]),
                     "content": protocol},
        "selection_rule": SELECTION_RULE, "data": context["data"], "invocation": context["invocation"],
        "runs": records, "selection": selection_summary(records, protocol), "final": final,
        "targets": check_targets(records, final, protocol), "files": None, "figures": None,
    }


# ---- the Markdown, rendered from the results alone ---------------------------------------------
def pct(x):
    return f"{x:.2%}"


def mean_sd(summary, fmt, sd_fmt=None):
    """"mean ± sd" of a stats() summary; the sd in `sd_fmt` (errors: in points)."""
    text = fmt(summary["mean"])
    return text if summary["sd"] is None else f"{text} ± {(sd_fmt or fmt)(summary['sd'])}"


def points(x):
    return f"{x * 100:.2f}"


def in_points(fraction):
    """An error difference in percentage points: 0.01 -> "1 point"."""
    value = fraction * 100
    return f"{value:g} point{'' if value == 1 else 's'}"


def count(x):
    """Blocks and depths with two decimals when not whole; parameter counts as whole numbers."""
    return f"{x:,.0f}" if float(x).is_integer() or abs(x) >= 100 else f"{x:,.2f}"


def millions(x):
    return f"{x / 1e6:.1f} M"


def listing(values):
    return ", ".join(f"{v:g}" for v in values)


def yes_no(flag):
    return "yes" if flag else "no"


def lr_phases(curves):
    """"0.1 for epochs 1–4, 0.01 for 5–7, ..." from a run's learning-rate curve."""
    phases = []
    for epoch, lr in zip(curves["epoch"], curves["learning_rate"]):
        if phases and phases[-1][2] == lr:
            phases[-1][1] = epoch
        else:
            phases.append([epoch, epoch, lr])
    return ", ".join(f"{lr:g} for epoch{'s' if a != b else ''} {a}{f'–{b}' if a != b else ''}" for a, b, lr in phases)


def render_markdown(results):
    """The reproduction section of the README: a function of the results JSON only."""
    sections = [render_setting(results), render_protocol(results), render_selection(results),
                render_final(results), render_runs(results), render_figures(results)]
    return "\n\n".join(s for s in sections if s) + "\n"


def render_setting(results):
    """The heading, the network and budget, the data's provenance, the size of max|F| that ε meets."""
    final, protocol = results["final"], results["protocol"]["content"]
    first = next(r for r in results["runs"] if r["phase"] == "final")
    json_path = results["files"]["json"]
    return "\n".join([
        "## A CIFAR-10 reproduction on a CPU", "",
        f"<!-- Generated from {json_path} by `python benchmarks/reproduce_cifar10.py --render {json_path}`: "
        "edit the script, not this text. -->", "",
        f"Pre-activation ResNet-{final['plain']['depth']} ({final['plain']['blocks']} residual blocks), "
        f"{final['plain']['epochs']} epoch{'s' if final['plain']['epochs'] != 1 else ''}, batch {first['config']['content']['train']['batch_size']}, learning rate "
        f"{lr_phases(first['curves'])}, the paper's weight decay, momentum and augmentation; every training run in a "
        f"process of its own with one thread, within a budget of {protocol['budget_cpu_minutes']} CPU-minutes. The "
        "plain network is the same network with ε = 0 (its gates never close and multiply by exactly 1) and no side "
        "head." + render_responses(results), "",
        f"**Data.** {results['data']['provenance']} The files ({results['data']['source']}) and their SHA-256 are "
        "listed in the results file.",
    ])


def render_responses(results):
    """Why ε is where it is: the range of the blocks' max|F| after epoch 1 in the final plain runs."""
    values = [v[0] for r in results["runs"] if r["phase"] == "final" and r["kind"] == "plain"
              for v in r.get("responses", {}).values() if v and v[0] is not None]
    if not values:
        return ""
    return (f" The gate compares ε with max|F| over the whole batch tensor; in the final plain runs the blocks' "
            f"max|F| (response_abs_max, a moving average) after epoch 1 was {min(values):.1f} to {max(values):.1f}.")


def render_protocol(results):
    """The protocol as it was fixed before the runs: selection, rule, final runs."""
    protocol, selection = results["protocol"]["content"], results["protocol"]["content"]["selection"]
    first = next(r for r in results["runs"] if r["phase"] == "final")
    total = None if first["compression"] is None else first["compression"]["check"]["images"]
    targets = protocol["targets"]
    return "\n".join([
        f"**Protocol**, fixed before any run in `{results['protocol']['path']}` "
        f"(SHA-256 `{results['protocol']['sha256'][:12]}`):", "",
        f"1. Selection: the plain network and the ε-ResNet for each ε of {listing(selection['epsilons'])}, seeds "
        f"{listing(selection['seeds'])}, trained on the training images less {selection['holdout']:,} held out (data "
        f"option `holdout: {selection['holdout']}`: the same images for every run and seed) and scored on those "
        f"{selection['holdout']:,}; each ε run compressed and checked on them too. No selection run reads the "
        "test set.",
        f"2. The rule, applied to the held-out numbers only (max_error_increase "
        f"{in_points(targets['max_error_increase'])}, min_discarded_fraction "
        f"{targets['min_discarded_fraction']:.0%}): {results['selection_rule']}",
        f"3. With ε frozen: the plain network and the ε-ResNet, seeds {listing(protocol['final']['seeds'])}, trained "
        f"on all training images; test error{f' on the {total:,} test images' if total else ''} after the last "
        "epoch, once per seed; each run compressed at its last step (`compressModel.py`) and the compressed network "
        "scored (`cifarCompressedResnet.py`). The test error after earlier epochs is recorded for the figures only.",
        "", protocol["notes"].strip(),
    ])


def row(*cells):
    return "| " + " | ".join(str(cell) for cell in cells) + " |"


def render_selection(results):
    selection = results["selection"]
    lines = ["### Model selection on the held-out images", "",
             row("model", "runs", "held-out error", "blocks discarded", "compressed = gated in every run", "eligible"),
             row(*["---"] * 6),
             row("plain", len(selection["plain"]["runs"]), mean_sd(selection["plain"]["error"], pct, points),
                 "–", "–", "–")]
    lines += [row(f"ε = {c['epsilon']:g}", len(c["runs"]), mean_sd(c["error"], pct, points),
                  f"{mean_sd(c['removed'], count)} / {selection['blocks']}", yes_no(c["lossless"]),
                  yes_no(c["eligible"])) for c in selection["candidates"]]
    lines += ["", f"Mean ± sample standard deviation over the seeds (errors: ± points). "
                  f"**Chosen: ε = {selection['chosen_epsilon']:g}**: {selection['reason']}."]
    return "\n".join(lines)


def render_final(results):
    plain, eps = results["final"]["plain"], results["final"]["eps"]
    minutes = "{:.1f}".format
    lines = [f"### Test set, ε = {eps['epsilon']:g} frozen", "",
             row("model", "depth", "seeds", "test error", "blocks discarded", "params", "MACs", "CPU-minutes per run"),
             row(*["---"] * 8),
             row("plain pre-activation ResNet", plain["depth"], listing(plain["seeds"]),
                 mean_sd(plain["test_error"], pct, points), "–", count(plain["params"]["full"]),
                 millions(plain["macs"]["full"]), mean_sd(plain["cpu_minutes"], minutes)),
             row(f"ε-ResNet, ε = {eps['epsilon']:g}", eps["depth"], listing(eps["seeds"]),
                 mean_sd(eps["test_error"], pct, points), f"{mean_sd(eps['removed'], count)} / {eps['blocks']}",
                 count(eps["params"]["full"]), millions(eps["macs"]["full"]), mean_sd(eps["cpu_minutes"], minutes)),
             row("compressed ε-ResNet", mean_sd(eps["compressed_depth"], count), listing(eps["seeds"]),
                 mean_sd(eps["compressed_error"], pct, points), "–", mean_sd(eps["params"]["compressed"], count),
                 mean_sd(eps["macs"]["compressed"], millions), "–"),
             "", "Mean ± sample standard deviation over the seeds (errors: ± points); params and MACs "
                 "(multiply-accumulates per image) as `compressModel.py` counts them, without the side head. "
                 "Targets:", ""]
    lines += [f"- {t['target']}: **{'met' if t['met'] else 'missed'}** ({t['measured']})" for t in results["targets"]]
    return "\n".join(lines)


def render_runs(results):
    lines = ["### Every run", "",
             row("run", "evaluated on", "seed", "ε", "CPU-minutes", "error", "closed at the end", "blocks removed",
                 "compressed error", "max logit difference", "lossless", "training sessions"),
             row(*["---"] * 12)]
    for r in results["runs"]:
        c = r["compression"]
        after = ["–"] * 4 if c is None else [", ".join(c["discarded_blocks"]) or "none", pct(c["compressed_error"]),
                                             f"{c['check']['max_abs_logit_difference']:.3g}", yes_no(c["lossless"])]
        lines.append(row(r["name"], "held-out" if r["split"] == "holdout" else "test", r["seed"], f"{r['epsilon']:g}",
                         f"{r['training']['cpu_minutes']:.1f}", pct(r["error"]), count(r["closed_at_end"] or 0),
                         *after, len(r["training"]["sessions"])))
    return "\n".join(lines + ["", render_disagreements(results), "", render_provenance(results)])


def render_disagreements(results):
    """Per compressed run, the gates that made the gated network differ from the compressed one."""
    lines = []
    for r in results["runs"]:
        c = r["compression"]
        if c is None or not (c["removed_but_opened"] or c["kept_but_closed"]):
            continue
        parts = [f"{kind} {', '.join(blocks)} {became}" for kind, blocks, became in (
            ("removed", c["removed_but_opened"], "opened"), ("kept", c["kept_but_closed"], "closed")) if blocks]
        flicker = ", ".join(f"{f['block']} {f['closed_rate']:.0%}" for f in c["flickering"])
        lines.append(f"- {r['name']}: {' and '.join(parts)} on some "
                     f"{'held-out' if r['split'] == 'holdout' else 'test'} batch"
                     + (f" (closed on this share of the training batches compressModel.py read: {flicker})"
                        if flicker else ""))
    if not lines:
        return "In every compressed run the gates were closed on every evaluated batch exactly for the removed blocks."
    return "\n".join(["Where a compressed network differs from its gated network: the gate decides per batch (max|F| "
                      "over the batch against ε), and on these evaluated batches it decided otherwise than on the "
                      "training batches compressModel.py read:", "", *lines])


def render_provenance(results):
    """Where and when the runs were trained: commits, machines, dates, from every training session."""
    sessions = [s for r in results["runs"] for s in r["training"]["sessions"]]
    commits = sorted({(s["commit"] or "unknown")[:12] + (" (with uncommitted changes)" if s["dirty"] else "")
                      for s in sessions})
    machines = sorted({f"{s['machine']['cores']} cores, {s['machine']['cpu_model']}, TensorFlow "
                       f"{s['machine']['tensorflow']}" for s in sessions})
    return (f"Trained at commit {', '.join(commits)}; on {'; '.join(machines)}; from "
            f"{min(s['started'] for s in sessions)} to {max(s['ended'] for s in sessions)}. \"closed at the end\" is "
            "discarded_cnt after the last epoch; CPU-minutes are user + sys of the training processes (a run resumed "
            "after a stop has more than one training session). Every run's "
            f"config, curves and training sessions are in `{results['files']['json']}`.")


def render_figures(results):
    figures = results.get("figures")
    if not figures:
        return ""
    lines = [f"![{os.path.splitext(os.path.basename(path))[0]}]({path})" for path in figures["files"]]
    return "\n".join(lines + ["", f"The figures come from `{figures['command']}` (the final runs; bands: mean ± "
                                   "sample standard deviation over the seeds)."])


# ---- the command line ----------------------------------------------------------------------------
def prepare_data(data_dir, workdir, quick=False):
    """(data folder, how it got there): --data as given, the sample for --quick, else <workdir>/cifar10
    made by make_cifar10.py."""
    if data_dir or quick:
        return os.path.abspath(data_dir or SAMPLE_DATA), "given with --data" if data_dir else "the --quick default"
    data_dir = os.path.join(workdir, "cifar10")
    if not os.path.isdir(os.path.join(data_dir, "cifar-10-batches-py")):
        if not os.path.isfile(MAKE_CIFAR10):
            raise RunError(f"{data_dir} has no cifar-10-batches-py and {MAKE_CIFAR10} is missing: give --data")
        print(f"making CIFAR-10 in {data_dir}", flush=True)
        subprocess.run([sys.executable, MAKE_CIFAR10, "--out", data_dir], check=True)
    return data_dir, "made by ../shared/data/cifar10/make_cifar10.py"


def data_record(data_dir, how, protocol):
    folder = os.path.join(data_dir, "cifar-10-batches-py")
    names = sorted(os.listdir(folder)) if os.path.isdir(folder) else []
    return {"provenance": protocol["data_provenance"], "dir": shown(data_dir), "source": how,
            "files_sha256": {name: sha256_file(os.path.join(folder, name)) for name in names}}


def run_protocol(protocol, workdir, data_dir, jobs, invocation):
    """Train, compress and evaluate every run of the protocol; returns the runs in results order."""
    ledger = Ledger(workdir)
    scheduler = Scheduler(ledger, workdir, data_dir, jobs, invocation)
    selection, chosen = selection_runs(protocol, workdir), []

    def add_final_eps(done):
        """Once every selection run is complete: choose ε (held-out numbers only), add its final runs."""
        if chosen or not all(run.name in done for run in selection):
            return []
        records = [run_record(run, ledger, invocation["date"]) for run in selection]
        epsilon = selection_summary(records, protocol)["chosen_epsilon"]
        print(f"selection complete: ε = {epsilon:g}", flush=True)
        chosen.extend(final_runs(protocol, workdir, "eps", epsilon))
        return chosen

    plain = final_runs(protocol, workdir, "plain")
    failed = scheduler.run(selection + plain, add_final_eps)
    if scheduler.stopping:
        raise Interrupted("interrupted: the runs saved a checkpoint; run the same command again to go on")
    if failed:
        raise RunError("these runs failed (the others are kept; run the same command again to go on):\n"
                       + "\n".join(f"  {name}: {why}" for name, why in failed.items()))
    return ledger, selection + plain + chosen


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


def render_file(json_path):
    """Write <name>.md beside <name>.json, rendered from the JSON alone; returns its path."""
    try:
        results = json.loads(read_text(json_path))
    except ValueError as err:
        raise RunError(f"{json_path} is not valid JSON: {err}") from None
    if not isinstance(results, dict) or results.get("schema") != SCHEMA:
        raise RunError(f"{json_path} is not a results file of this script (schema {SCHEMA}): run it to make one")
    md_path = os.path.splitext(json_path)[0] + ".md"
    write_atomic(md_path, render_markdown(results))
    return md_path


def readme_section(text, readme_path):
    """(start, end) of what lies between the README's two reproduction marker lines."""
    begin, end = text.find(README_BEGIN + "\n"), text.find(README_END)
    if begin < 0 or end < begin:
        raise RunError(f"{readme_path} has no section between the lines {README_BEGIN!r} and {README_END!r}: "
                       "add them where the reproduction goes")
    return begin + len(README_BEGIN) + 1, end


def splice_readme(readme_path, markdown):
    """Put the Markdown between the README's two reproduction markers, replacing what was there."""
    text = read_text(readme_path)
    start, end = readme_section(text, readme_path)
    write_atomic(readme_path, text[:start] + markdown + text[end:])


def parse_args(argv):
    parser = argparse.ArgumentParser(description="The CIFAR-10 reproduction: ε chosen on held-out images, plain "
                                                 "and ε-ResNet trained with several seeds, compressed, scored on "
                                                 "the test set; results as JSON and Markdown.")
    parser.add_argument("--protocol", help=f"protocol YAML (default {shown(PROTOCOL)}; --quick: "
                                           f"{shown(QUICK_PROTOCOL)})")
    parser.add_argument("--data", help="folder with cifar-10-batches-py (default: <workdir>/cifar10, made by "
                                       "../shared/data/cifar10/make_cifar10.py if missing; --quick: "
                                       "data/cifar10-sample)")
    parser.add_argument("--workdir", help="run folders, their configs, logs and ledger.json (default "
                                          "benchmarks/runs; --quick: benchmarks/runs/quick)")
    parser.add_argument("--results", help="folder for cifar10_reproduction.json and .md (default "
                                          "benchmarks/results; --quick: <workdir>/results)")
    parser.add_argument("--figures", help="folder for the figures (default figures/reproduction; with --results "
                                          "or --quick: <results>/figures)")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1,
                        help="processes at a time, one thread each (default: the number of cores)")
    parser.add_argument("--quick", action="store_true", help="the whole protocol on the 500-image sample with "
                                                             "ResNet-8 for one epoch: minutes, numbers meaningless")
    parser.add_argument("--render", metavar="JSON", help="only write the Markdown beside this results file, "
                                                         "rendered from it")
    parser.add_argument("--readme", metavar="PATH", help=f"also put the Markdown into PATH (e.g. README.md), "
                                                         f"between the lines {README_BEGIN} and {README_END}")
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error(f"--jobs must be >= 1, got {args.jobs}")
    return args


def folders(args):
    """(protocol file, work folder, results folder, figures folder) with the defaults applied."""
    protocol = os.path.abspath(args.protocol or (QUICK_PROTOCOL if args.quick else PROTOCOL))
    workdir = os.path.abspath(args.workdir or os.path.join(REPO, "benchmarks", "runs", *["quick"] * args.quick))
    results = os.path.abspath(args.results or (os.path.join(workdir, "results") if args.quick
                                               else os.path.join(REPO, "benchmarks", "results")))
    figures = os.path.abspath(args.figures or (os.path.join(results, "figures") if args.results or args.quick
                                               else os.path.join(REPO, "figures", "reproduction")))
    return protocol, workdir, results, figures


def reproduce(args, command):
    """Run the protocol (skipping what is done), then write the results; returns their two paths."""
    protocol_path, workdir, results_dir, figures_dir = folders(args)
    protocol = load_protocol(protocol_path)
    data_dir, how = prepare_data(args.data, workdir, args.quick)
    invocation = {"date": now(), "git": git_state(), "machine": machine()}
    ledger, runs = run_protocol(protocol, workdir, data_dir, args.jobs, invocation)
    context = {"command": command, "protocol_path": protocol_path, "invocation": invocation,
               "data": data_record(data_dir, how, protocol)}
    return write_results(build_results(runs, ledger, protocol, context), results_dir, figures_dir)


def main(argv=None):
    args = parse_args(argv)
    command = " ".join(["python", "benchmarks/reproduce_cifar10.py", *(sys.argv[1:] if argv is None else argv)])
    try:
        if args.render:
            json_path, md_path = args.render, render_file(args.render)
        else:
            json_path, md_path = reproduce(args, command)
            print(read_text(md_path))
        if args.readme:
            splice_readme(args.readme, read_text(md_path))
    except (UserError, OSError, subprocess.CalledProcessError) as err:
        sys.exit(f"error: {err}")
    print(f"wrote {md_path}{f' and its section of {args.readme}' if args.readme else ''} from {json_path}")


if __name__ == "__main__":
    main()
