"""Running the stages of many runs as processes, `slots` at a time, booking each one's CPU time
(user + sys from wait4) in the ledger.

A run's next stage follows from its files: training until metrics.jsonl reaches the last epoch
(re-running a training command resumes it), then compressModel.py at the last step, then
cifarCompressedResnet.py -o (evaluation.json), then reproduction/score.py keep, which makes the
kept network; its run.json, written here with the run's ledger entry, closes the run. A run
whose kept network is done is done without its run folder.
"""
import dataclasses
import os
import subprocess
import sys

from epsilon_resnet import run_folder
from epsilon_resnet.provenance import now
from reproduction import REPO, kept, shown
from reproduction.ledger import claim

SCRIPTS = {stage: os.path.join(REPO, "scripts", name) for stage, name in (
    ("train", "cifarEpsilonResnet.py"), ("compress", "compressModel.py"), ("evaluate", "cifarCompressedResnet.py"),
    ("plot", "plot_runs.py"))}
SINGLE_THREAD = {"TF_NUM_INTRAOP_THREADS": "1", "TF_NUM_INTEROP_THREADS": "1", "OMP_NUM_THREADS": "1"}
KEEP = ["-m", "reproduction.score", "keep"]  # run with the repository on PYTHONPATH


def next_stage(run, workdir, data_dir):
    """(stage, command) of the run's next step, or None when it is complete."""
    if kept.is_done(run.kept_dir, run.sha256):
        return None
    records = run.records()
    if not records or records[-1]["epoch"] < run.max_epoch:
        return "train", [SCRIPTS["train"], "--config", run.config_path, "-o", run.name, "--data", data_dir]
    step = records[-1]["global_step"]
    if not os.path.isfile(run.cfg_path(step)):
        return "compress", [SCRIPTS["compress"], "--dir", run.run_dir, "--step", str(step), "--data", data_dir]
    if not os.path.isfile(os.path.join(run.evaluation_dir(step), run_folder.EVALUATION_FILE)):
        return "evaluate", [SCRIPTS["evaluate"], "--cfg", run.cfg_path(step), "--cifar10", "--data", data_dir,
                            "-o", run.evaluation_output(step)]
    return "keep", [*KEEP, "--run-dir", run.run_dir, "--step", str(step), "--out", run.kept_dir, "--data", data_dir]


def compressed_evaluation(run):
    """The evaluation.json of the run's compressed network at its last step."""
    return run_folder.read_evaluation(run.evaluation_dir(run.records()[-1]["global_step"]))


@dataclasses.dataclass
class Started:
    run: object
    stage: str
    process: subprocess.Popen
    log: str
    from_epoch: int
    date: str


class Scheduler:
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
            following = next_stage(run, self.workdir, self.data_dir)
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
        records = run.records()
        self.ledger.entry(run.name)["config_sha256"] = run.sha256
        self.ledger.save()
        print(f"{run.name}: {stage} (log {shown(log)})", flush=True)
        with open(log, "a" if stage == "train" else "w") as out:
            path = os.pathsep.join(filter(None, [REPO, os.environ.get("PYTHONPATH")]))
            process = subprocess.Popen([sys.executable, *command], cwd=self.workdir, stdout=out,
                                       stderr=subprocess.STDOUT,
                                       env={**os.environ, **SINGLE_THREAD, "PYTHONPATH": path})
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
            records = run.records()
            entry["sessions"].append({
                "invocation": self.invocation["date"], "started": started.date, "ended": now(),
                "from_epoch": started.from_epoch, "to_epoch": records[-1]["epoch"] if records else 0,
                "cpu_seconds": cpu, "exit_code": code, "commit": self.invocation["git"]["commit"],
                "dirty": self.invocation["git"]["dirty"], "machine": self.invocation["machine"]})
        else:  # compression, evaluation and keeping: CPU time summed over attempts
            booked = entry["stages"].setdefault(stage, {"cpu_seconds": 0.0})
            booked["cpu_seconds"] += cpu
        self.ledger.save()
        if stage == "keep" and not code:
            kept.write_run_file(run.kept_dir, run.sha256, entry, compressed_evaluation(run))
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
