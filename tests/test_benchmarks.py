"""The benchmarks in benchmarks/ run end to end with tiny settings: they print a ratio, exit 0
and, with non-default arguments, leave their results file alone."""
import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(REPO, "benchmarks", "results")
TINY = ["--n", "1", "--batch", "8", "--repeats", "1"]


def result_file_state(name):
    path = os.path.join(RESULTS, f"{name}.json")
    return os.stat(path).st_mtime_ns if os.path.exists(path) else None


@pytest.mark.slow
@pytest.mark.parametrize("name, extra", [
    ("gate_overhead", ["--steps", "1"]),
    ("compressed_inference", ["--n", "2", "--steps", "1"]),
    ("input_pipeline", ["--cifar-data", os.path.join(REPO, "data", "cifar10-sample"), "--batches", "2",
                        "--steps", "1", "--jpegs", "12", "--imagenet-batch", "4", "--imagenet-batches", "2"]),
    ("peak_memory", ["--steps", "1"]),
    ("closed_blocks", ["--steps", "1"]),
    ("batch_norm", ["--steps", "1"]),
])
def test_benchmark_runs_with_tiny_settings(name, extra):
    before = result_file_state(name)
    run = subprocess.run([sys.executable, "-m", f"benchmarks.{name}", *TINY, *extra], cwd=REPO,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert ("ratio" in run.stdout or "CI" in run.stdout) and ("PASS" in run.stdout or "MISS" in run.stdout), run.stdout
    assert result_file_state(name) == before  # only a run with default arguments writes results/<name>.json


@pytest.mark.slow
def test_precision_benchmark_reports_its_ratio_and_the_kernels_that_ran():
    """benchmarks.precision has no target: it prints the measured ratio, the CPU's bfloat16 and
    AMX flags, and the convolution kernels of either precision."""
    before = result_file_state("precision")
    run = subprocess.run([sys.executable, "-m", "benchmarks.precision", *TINY, "--steps", "1"], cwd=REPO,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "mixed_bfloat16/float32 = " in run.stdout and "AMX kernels ran: " in run.stdout, run.stdout
    assert "mixed_bfloat16: convolution ops {" in run.stdout and "Conv2D" in run.stdout, run.stdout
    assert result_file_state("precision") == before


@pytest.mark.slow
def test_deployment_benchmark_runs_with_tiny_settings():
    before = result_file_state("deployment")
    run = subprocess.run([sys.executable, "-m", "benchmarks.deployment", "--n", "1", "--minutes", "0.02",
                          "--runs", "", "--cifar-data", os.path.join(REPO, "data", "cifar10-sample")],
                         cwd=REPO, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "| litert_int8 |" in run.stdout and ("PASS" in run.stdout or "MISS" in run.stdout), run.stdout
    assert result_file_state("deployment") == before


def test_deployment_pages_are_the_committed_results_rendered():
    """docs/deployment.md's report and the README's summary are benchmarks/results/deployment.json
    rendered, unedited."""
    from benchmarks import deployment
    from epsilon_resnet.provenance import readme_section

    with open(os.path.join(RESULTS, "deployment.json"), encoding="utf-8") as f:
        results = json.load(f)
    for page, render in ((deployment.REPORT_PAGE, deployment.render_markdown),
                         (deployment.SUMMARY_PAGE, deployment.render_summary)):
        with open(os.path.join(REPO, page), encoding="utf-8") as f:
            text = f.read()
        start, end = readme_section(text, page, deployment.MARKERS)
        assert text[start:end] == render(results), page
    assert results["commit"] and not [path for path in results["dirty"] if not path.startswith("benchmarks/results")]
    assert {"cpu_model", "cores"} <= set(results["machine"]) and "onnxruntime" in results["runtime_versions"]
