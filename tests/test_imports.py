"""Imports run one way (docs: issue 35): scripts and the two clients (benchmarks, the
reproduction) → cli → jobs → model pieces → formats and foundations. Every module of
epsilon_resnet/, benchmarks/, reproduction/ and scripts/ is parsed with `ast` (every import,
the ones inside functions too) and placed by the table below; a new module must be placed."""
import ast
import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FOUNDATIONS, MODEL_PIECES, JOBS, CLI, CLIENTS = range(5)
LAYER_NAMES = ("formats and foundations", "model pieces", "jobs", "cli", "scripts and clients")
PACKAGE_LAYERS = {
    # formats and foundations: facts, file formats, the run folder, data, process set-up
    "epsilon_resnet": FOUNDATIONS, "epsilon_resnet.errors": FOUNDATIONS, "epsilon_resnet.console": FOUNDATIONS,
    "epsilon_resnet.structures": FOUNDATIONS, "epsilon_resnet.atomic": FOUNDATIONS,
    "epsilon_resnet.provenance": FOUNDATIONS, "epsilon_resnet.config": FOUNDATIONS,
    "epsilon_resnet.run_folder": FOUNDATIONS, "epsilon_resnet.compressed_cfg": FOUNDATIONS,
    "epsilon_resnet.data": FOUNDATIONS, "epsilon_resnet.distribute": FOUNDATIONS,
    "epsilon_resnet.schedules": FOUNDATIONS, "epsilon_resnet.signals": FOUNDATIONS,
    "epsilon_resnet.runtime": FOUNDATIONS,
    # model pieces: layers, the builder, and what reads, scores or saves a network
    "epsilon_resnet.gate": MODEL_PIECES, "epsilon_resnet.batch_norm": MODEL_PIECES,
    "epsilon_resnet.networks": MODEL_PIECES, "epsilon_resnet.pruning": MODEL_PIECES,
    "epsilon_resnet.evaluation": MODEL_PIECES, "epsilon_resnet.losses": MODEL_PIECES,
    "epsilon_resnet.callbacks": MODEL_PIECES, "epsilon_resnet.checkpoints": MODEL_PIECES,
    "epsilon_resnet.optimizers": MODEL_PIECES, "epsilon_resnet.train_step": MODEL_PIECES,
    # jobs: one each, never importing another
    "epsilon_resnet.training": JOBS, "epsilon_resnet.compression": JOBS, "epsilon_resnet.scoring": JOBS,
    "epsilon_resnet.export": JOBS,
    "epsilon_resnet.cli": CLI,
}
CLIENT_PACKAGES = ("benchmarks", "reproduction", "scripts")  # all of CLIENTS
FOLDERS = ("epsilon_resnet", *CLIENT_PACKAGES)


def module_name(path):
    parts = os.path.splitext(os.path.relpath(path, REPO))[0].split(os.sep)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules():
    """{module name: path} of every .py file under the four folders."""
    found = {}
    for folder in FOLDERS:
        for root, _, files in os.walk(os.path.join(REPO, folder)):
            for name in files:
                if name.endswith(".py"):
                    found[module_name(os.path.join(root, name))] = os.path.join(root, name)
    return found


def imports_of(path, known):
    """The project modules a file imports, anywhere in it (`from a import b` is a.b when that is a module)."""
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in known else node.module
                     for alias in node.names]
        else:
            continue
        found.update(name for name in names if name.split(".")[0] in FOLDERS)
    return found


def layer_of(name):
    if name.split(".")[0] in CLIENT_PACKAGES:
        return CLIENTS
    while name not in PACKAGE_LAYERS:  # a subpackage's modules share its layer (epsilon_resnet.data.*)
        assert "." in name, f"{name} is not in the layer table of tests/test_imports.py: place it"
        name = name.rsplit(".", 1)[0]
    return PACKAGE_LAYERS[name]


@pytest.fixture(scope="module")
def graph():
    known = modules()
    return {name: imports_of(path, known) for name, path in known.items()}


def test_every_module_has_a_layer(graph):
    unplaced = [name for name in graph if name.startswith("epsilon_resnet.") and name.count(".") == 1
                and name not in PACKAGE_LAYERS]
    assert not unplaced, f"place these modules in PACKAGE_LAYERS: {unplaced}"
    assert {"epsilon_resnet.cli", "epsilon_resnet.training", "benchmarks.common", "reproduction.score"} <= set(graph)


def test_benchmarks_and_the_reproduction_never_import_each_other(graph):
    crossing = [f"{name} imports {target}" for name, targets in graph.items() for target in targets
                for a, b in (("benchmarks", "reproduction"), ("reproduction", "benchmarks"))
                if name.split(".")[0] == a and target.split(".")[0] == b]
    assert not crossing, crossing


def test_imports_run_down_the_layers_and_never_between_jobs(graph):
    upward = [f"{name} ({LAYER_NAMES[layer_of(name)]}) imports {target} ({LAYER_NAMES[layer_of(target)]})"
              for name, targets in graph.items() for target in targets
              if layer_of(target) > layer_of(name) or (layer_of(name) == layer_of(target) == JOBS)]
    assert not upward, upward


def cycles_in(graph):
    """The import cycles of {module: imported modules}, by depth-first search: a module met
    again on the current path closes one."""
    done, path, cycles = set(), [], []

    def visit(name):
        if name in path:
            cycles.append(path[path.index(name):] + [name])
            return
        if name in done:
            return
        path.append(name)
        for target in sorted(graph.get(name, ())):
            visit(target)
        path.pop()
        done.add(name)

    for name in sorted(graph):
        visit(name)
    return cycles


def test_cycles_in_finds_a_cycle_and_nothing_else():
    assert cycles_in({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    assert cycles_in({"a": {"b", "c"}, "b": {"c"}, "c": set()}) == []


def test_there_is_no_import_cycle(graph):
    assert not cycles_in(graph), [" -> ".join(cycle) for cycle in cycles_in(graph)]


def test_the_gate_imports_nothing_from_the_run_folder(graph):
    """The gate layer knows nothing of the run folder's file layout: its monitored statistics'
    names come from structures, with the gate's other settings."""
    assert "epsilon_resnet.structures" in graph["epsilon_resnet.gate"]  # the parse sees its imports
    assert not {name for name in graph["epsilon_resnet.gate"] if "run_folder" in name}
