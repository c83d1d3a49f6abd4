"""scripts/plot_runs.py on fake metrics.jsonl files: PNGs written, clear errors on bad run folders."""
import importlib.util
import json
import os

import matplotlib.image
import pytest

SCRIPT = os.path.join(os.path.dirname(__file__), os.pardir, "scripts", "plot_runs.py")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def plot_runs():
    spec = importlib.util.spec_from_file_location("plot_runs", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fake_run(folder, epsilon, epochs=3):
    """A metrics.jsonl with gate averages; ε = 0 is the plain ResNet built gated (its gates never close)."""
    os.makedirs(folder)
    with open(os.path.join(folder, "metrics.jsonl"), "w") as f:
        for epoch in range(1, epochs + 1):
            gates = {f"res{s}.{k}/is_discarded": float(epsilon > 0 and epoch > 1 and k == 0)
                     for s in (1, 2, 3) for k in (0, 1)}
            f.write(json.dumps({"epoch": epoch, "global_step": 10 * epoch, "learning_rate": 0.1 / epoch,
                                "val_error": 0.5 / epoch, "epsilon": epsilon,
                                "discarded_cnt": sum(gates.values()), **gates}) + "\n")
    return str(folder)


def test_writes_valid_pngs(plot_runs, tmp_path):
    runs = [fake_run(tmp_path / "train_log.plain", 0.0), fake_run(tmp_path / "train_log.eps", 4.0)]
    out = tmp_path / "figures"
    plot_runs.main([*runs, "--out", str(out), "--labels", "plain", "eps 4"])
    names = sorted(os.listdir(out))
    assert names == ["discarded_cnt.png", "gates_eps.png", "learning_rate.png", "val_error.png"]  # no plain heat map
    for name in names:
        assert (out / name).read_bytes().startswith(PNG_SIGNATURE)
        assert matplotlib.image.imread(out / name).ndim == 3  # decodes as an image
    assert sorted(os.listdir(runs[1])) == ["metrics.jsonl"]  # run folders untouched


def test_missing_metrics_names_the_file(plot_runs, tmp_path):
    run = tmp_path / "train_log.empty"
    run.mkdir()
    with pytest.raises(SystemExit) as exc:
        plot_runs.main([str(run), "--out", str(tmp_path / "figures")])
    assert os.path.join(str(run), "metrics.jsonl") in str(exc.value.code)


def test_malformed_line_names_file_and_line(plot_runs, tmp_path):
    run = fake_run(tmp_path / "train_log.bad", 0.0)
    with open(os.path.join(run, "metrics.jsonl"), "a") as f:
        f.write("not json\n{\"epoch\": 4, \"val_error\": 0.1, \"learning_rate\": 0.01}\n")
    with pytest.raises(SystemExit) as exc:
        plot_runs.main([run, "--out", str(tmp_path / "figures")])
    assert "metrics.jsonl:4" in str(exc.value.code)
