"""The runs a protocol makes: each one's training config and where its files go."""
import dataclasses
import hashlib
import os

import yaml

from epsilon_resnet import config as config_lib
from epsilon_resnet import run_folder
from reproduction import REPO, kept, shown


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
    config_path: str    # its own config, written by ledger.claim before it is trained
    config: dict
    text: str           # the config file's text
    run_dir: str        # scratch: its run folder in the work folder
    kept_dir: str       # what the results keep of it (reproduction/kept.py)

    @property
    def sha256(self):
        return sha256_text(self.text)

    @property
    def split(self):
        return "holdout" if self.holdout else "full"

    @property
    def max_epoch(self):
        return self.config["train"]["max_epoch"]

    def records(self):
        """The run's per-epoch metrics records, [] before its first epoch ends."""
        if not os.path.isfile(os.path.join(self.run_dir, run_folder.METRICS_FILE)):
            return []
        return run_folder.read_metrics(self.run_dir)

    def cfg_path(self, step):
        return os.path.join(self.run_dir, run_folder.compressed_name(step) + ".cfg")

    def evaluation_output(self, step):
        """The -o of the compressed network's evaluation at `step` (its evaluation.json's folder)."""
        return f"{self.name}.compressed-{step}"

    def evaluation_dir(self, step):
        """The folder of that evaluation's evaluation.json, beside the run folder (-o is relative to the work folder)."""
        return os.path.join(os.path.dirname(self.run_dir), run_folder.run_dir_of(self.evaluation_output(step)))


def sha256_text(text):
    return hashlib.sha256(text.encode()).hexdigest()


def set_dotted(raw, dotted, value):
    section, key = dotted.split(".")
    raw.setdefault(section, {})[key] = value


def run_config(base, seed, epsilon, holdout, overrides):
    """The base config with the run's seed, ε and held-out split set, validated as the training CLI will."""
    raw = config_lib.read_yaml(base, f"config file {base!r} does not exist") or {}
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


def make_run(protocol, workdir, networks, phase, kind, seed, epsilon=None):
    """The run's config (for <workdir>/configs/<name>.yaml) and where its files go (networks: the kept networks' folder)."""
    holdout = protocol.selection.holdout if phase == "select" else 0
    name = f"{phase}-{'plain' if kind == 'plain' else f'eps{epsilon:g}'}-s{seed}"
    base = os.path.join(REPO, getattr(protocol, kind))
    content = run_config(base, seed, epsilon, holdout, protocol.overrides)
    text = (f"# {name}: made by python -m reproduction from {shown(base)}; "
            f"trained with cifarEpsilonResnet.py --config <this file>\n" + yaml.safe_dump(content, sort_keys=False))
    return Run(name, phase, kind, seed, content["model"].get("epsilon", 0.0), holdout, base,
               os.path.join(workdir, "configs", f"{name}.yaml"), content, text,
               os.path.join(workdir, run_folder.run_dir_of(name)), kept.kept_dir(networks, name))


def selection_runs(protocol, workdir, networks):
    seeds = protocol.selection.seeds
    return [make_run(protocol, workdir, networks, "select", "plain", s) for s in seeds] + [
        make_run(protocol, workdir, networks, "select", "eps", s, e)
        for e in protocol.selection.epsilons for s in seeds]


def final_runs(protocol, workdir, networks, kind, epsilon=None):
    return [make_run(protocol, workdir, networks, "final", kind, s, epsilon) for s in protocol.final.seeds]
