"""Benchmarks of the package: each writes benchmarks/results/<name>.json with its provenance
(`epsilon_resnet.provenance`). A client of the package only, like the reproduction: neither
imports the other."""
import os

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS_DIR = os.path.join(REPO, "benchmarks", "results")
