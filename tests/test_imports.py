"""Imports run one way (issue 35): the gate layer knows nothing of the run folder's file
layout; its monitored statistics' names come from structures (the gate's settings)."""
import ast
import os

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def imported_modules(path):
    """Every module a file imports, anywhere in it (`from a import b` gives a and a.b)."""
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def test_the_gate_imports_nothing_from_the_run_folder():
    imported = imported_modules(os.path.join(REPO, "epsilon_resnet", "gate.py"))
    assert "epsilon_resnet.structures" in imported  # the parse sees its imports
    assert not {name for name in imported if "run_folder" in name}, sorted(imported)
