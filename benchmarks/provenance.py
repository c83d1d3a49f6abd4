"""Where a benchmark's numbers come from: date, commit (and what differed from it) and the
machine, without the host's name; and writing a results file so that no reader sees half of it.
No TensorFlow, so the reproduction driver can use it too."""
import datetime
import importlib.metadata
import os
import platform
import subprocess

from epsilon_resnet import run_folder

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS_DIR = os.path.join(REPO, "benchmarks", "results")


def git_state():
    """The commit and the paths that differ from it (tracked or not ignored), or None outside git."""
    def git(*args):
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=True).stdout

    try:
        return {"commit": git("rev-parse", "HEAD").strip(),
                "dirty": sorted(line[3:] for line in git("status", "--porcelain").splitlines())}
    except (OSError, subprocess.CalledProcessError):
        return {"commit": None, "dirty": None}


def machine():
    """What the CPU times depend on, without the host's name."""
    model = None
    if os.path.isfile("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), None)
    versions = {}
    for package in ("tensorflow", "keras"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    return {"cores": os.cpu_count(), "cpu_model": model or platform.processor() or None,
            "system": f"{platform.system()} {platform.machine()}", "python": platform.python_version(), **versions}


def now():
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def write_atomic(path, text):
    """Write beside the target, then rename (run_folder.replace_file): a reader never sees half a file."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    run_folder.replace_file(path, text.encode())
