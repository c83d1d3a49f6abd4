"""The CIFAR-10 reproduction: ε chosen on held-out data, several seeds, every number in one file.

    python -m reproduction --data DIR [--workdir DIR] [--results DIR] [--jobs K]
    python -m reproduction --quick   # the whole protocol on the 500-image sample, in minutes
    python -m reproduction --render reproduction/results/cifar10_reproduction.json --doc docs/reproduction.md

The protocol (`protocol`, a YAML file in reproduction/protocols/) says which runs to make from
two training configs (`runs`). Every run is made only through the command lines, in a process
of its own with one thread, up to --jobs at a time (`scheduler`): cifarEpsilonResnet.py
trains, compressModel.py compresses at the last step, cifarCompressedResnet.py -o scores the
compressed network into evaluation.json. <workdir>/ledger.json books the CPU time of every
process and every training session's commit, machine and date (`ledger`). What is read back
goes through the project's own readers: each run's metrics.jsonl, its .cfg and its
evaluation.json (`results`). ε is chosen on held-out numbers by a pure rule (`selection`). The
results JSON is written when every run is done; the Markdown is rendered from it alone
(`report`), and the figures are drawn from it by scripts/plot_runs.py.

No module here imports TensorFlow: the runs are processes of their own.
"""
import os

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS_DIR = os.path.join(REPO, "reproduction", "results")  # the committed results
RESULTS_NAME = "cifar10_reproduction"
NETWORKS = "networks"  # the kept networks' folder, in the results folder (reproduction/kept.py)


def read_text(path):
    with open(path) as f:
        return f.read()


def shown(path):
    """A path as the results show it: relative to the repository when inside it."""
    path = os.path.abspath(path)
    return os.path.relpath(path, REPO) if path.startswith(REPO + os.sep) else path
