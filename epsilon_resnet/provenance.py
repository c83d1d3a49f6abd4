"""Where a results file's numbers come from: date, commit (and what differed from it) and the
machine, without the host's name; and splicing a generated section into a README. No
TensorFlow: the benchmarks and the reproduction driver, clients of the package, both use it."""
import datetime
import importlib.metadata
import os
import platform
import subprocess

from epsilon_resnet.atomic import write_atomic
from epsilon_resnet.errors import RunError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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


def readme_section(text, readme_path, markers):
    """(start, end) of what lies between the README's two marker lines."""
    first, last = markers
    begin, end = text.find(first + "\n"), text.find(last)
    if begin < 0 or end < begin:
        raise RunError(f"{readme_path} has no section between the lines {first!r} and {last!r}: "
                       "add them where the section goes")
    return begin + len(first) + 1, end


def splice_readme(readme_path, markdown, markers):
    """Put the Markdown between the README's two marker lines, replacing what was there."""
    with open(readme_path) as f:
        text = f.read()
    start, end = readme_section(text, readme_path, markers)
    write_atomic(readme_path, text[:start] + markdown + text[end:])
