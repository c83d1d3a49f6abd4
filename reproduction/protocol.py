"""The protocol file: which runs the reproduction makes, its selection targets and budget.

Read with the machinery of the training configs (config.build: unknown, missing and mistyped
keys are named), then checked for what types cannot say.
"""
import dataclasses
import os

from epsilon_resnet import config as config_lib
from epsilon_resnet.errors import ConfigError
from reproduction import REPO

PROTOCOL = os.path.join(REPO, "reproduction", "protocols", "cifar10.yaml")
QUICK_PROTOCOL = os.path.join(REPO, "reproduction", "protocols", "quick.yaml")


@dataclasses.dataclass(frozen=True)
class Selection:
    holdout: int      # training images held out and scored instead of the test set
    epsilons: list    # the ε grid
    seeds: list


@dataclasses.dataclass(frozen=True)
class Final:
    seeds: list


@dataclasses.dataclass(frozen=True)
class Targets:
    min_discarded_fraction: float  # mean blocks removed / gated blocks
    max_error_increase: float      # mean ε-ResNet error − mean plain error, as a fraction


@dataclasses.dataclass(frozen=True)
class Protocol:
    version: int      # raised whenever what a run does or what its numbers mean changes
    changes: str      # what this version changed, and why
    plain: str        # the plain network's training config, relative to the repository
    eps: str          # the ε-ResNet's
    overrides: dict   # dotted config keys set in every run
    selection: Selection
    final: Final
    targets: Targets
    budget_cpu_minutes: float  # per training run, one thread
    data_provenance: str
    notes: str


def load_protocol(path):
    """The protocol file, checked: what is missing or wrong is named before any run starts."""
    raw = config_lib.read_yaml(path, f"protocol file {path!r} does not exist")
    protocol = config_lib.build(Protocol, raw, path)

    def seeds_ok(seeds):
        return seeds and len(set(seeds)) == len(seeds) and all(
            isinstance(s, int) and not isinstance(s, bool) for s in seeds)

    selection = protocol.selection
    for bad, message in (
            (selection.holdout < 1, "selection.holdout must be >= 1"),
            (not selection.epsilons or any(isinstance(e, bool) or not isinstance(e, (int, float)) or e <= 0
                                           for e in selection.epsilons),
             "selection.epsilons must be a non-empty list of ε > 0"),
            (not seeds_ok(selection.seeds) or not seeds_ok(protocol.final.seeds),
             "selection.seeds and final.seeds must be non-empty lists of distinct integers")):
        if bad:
            raise ConfigError(f"{path}: {message}")
    return protocol
