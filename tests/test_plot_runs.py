"""scripts/plot_runs.py on fake metrics.jsonl and results files: PNGs written, seed bands of the
right height, gate heat maps of the right blocks, clear errors on bad inputs."""
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


def fake_run(folder, epsilon, epochs=3, val_errors=None):
    """A metrics.jsonl with the gates' monitored values (is_discarded, response_abs_max,
    response_mean_max); ε = 0 is the plain ResNet built gated (its gates never close)."""
    os.makedirs(folder)
    val_errors = val_errors or [0.5 / epoch for epoch in range(1, epochs + 1)]
    with open(os.path.join(folder, "metrics.jsonl"), "w") as f:
        for epoch, val_error in zip(range(1, epochs + 1), val_errors):
            gates = {f"res{s}.{k}/is_discarded": float(epsilon > 0 and epoch > 1 and k == 0)
                     for s in (1, 2, 3) for k in (0, 1)}
            responses = {f"res{s}.{k}/{name}": 3.0 for s in (1, 2, 3) for k in (0, 1)
                         for name in ("response_abs_max", "response_mean_max")}
            f.write(json.dumps({"epoch": epoch, "global_step": 10 * epoch, "learning_rate": 0.1 / epoch,
                                "val_error": val_error, "epsilon": epsilon,
                                "discarded_cnt": sum(gates.values()), **gates, **responses}) + "\n")
    return str(folder)


@pytest.fixture
def captured(plot_runs, monkeypatch):
    """The figures plot_runs saves, kept open: {file name: figure}."""
    figures = {}

    def keep(fig, path):
        figures[os.path.basename(path)] = fig
        return path
    monkeypatch.setattr(plot_runs, "save_png", keep)
    return figures


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


def test_band_is_mean_and_sample_sd_over_seeds(plot_runs):
    runs = [("a", [{"epoch": 1, "val_error": 0.5}, {"epoch": 2, "val_error": 0.4}]),
            ("b", [{"epoch": 1, "val_error": 0.7}, {"epoch": 2, "val_error": 0.2}, {"epoch": 3, "val_error": 0.1}]),
            ("c", [{"epoch": 1, "val_error": 0.6}, {"epoch": 2, "val_error": 0.3}])]
    epochs, mean, sd = plot_runs.band(runs, "val_error", scale=100)
    assert list(epochs) == [1, 2]  # only the epochs every seed reached
    assert mean == pytest.approx([60.0, 30.0])
    assert sd == pytest.approx([10.0, 10.0])  # sqrt((10² + 10² + 0²) / (3 - 1))
    assert plot_runs.band(runs[:1], "val_error")[2] is None  # one run: no band


def test_runs_under_one_label_are_drawn_as_a_seed_band(plot_runs, captured, tmp_path):
    runs = [fake_run(tmp_path / "train_log.p1", 0.0, val_errors=[0.5, 0.4, 0.3]),
            fake_run(tmp_path / "train_log.p2", 0.0, val_errors=[0.7, 0.2, 0.3]),
            fake_run(tmp_path / "train_log.e1", 4.0),
            fake_run(tmp_path / "train_log.e2", 4.0)]
    plot_runs.main([*runs, "--out", str(tmp_path / "figures"), "--labels", "plain", "plain", "eps", "eps"])
    assert sorted(captured) == ["discarded_cnt.png", "gates_eps.png", "learning_rate.png", "val_error.png"]
    ax = captured["val_error.png"].axes[0]
    assert [line.get_label() for line in ax.get_lines()] == ["plain (mean ± sd of 2)", "eps (mean ± sd of 2)"]
    assert list(ax.get_lines()[0].get_ydata()) == pytest.approx([60.0, 30.0, 30.0])
    band = ax.collections[0].get_paths()[0].vertices  # plain: mean ± sd = 60 ± 14.14, 30 ± 14.14, 30 ± 0
    assert band[:, 1].max() == pytest.approx(60 + 200 ** 0.5)
    assert band[:, 1].min() == pytest.approx(30 - 200 ** 0.5)
    heat = captured["gates_eps.png"]
    panels = [ax for ax in heat.axes if ax.get_images()]
    assert [ax.get_title() for ax in panels] == ["e1", "e2"]  # one panel per seed
    assert [t.get_text() for t in panels[0].get_yticklabels()] == [f"res{s}.{k}" for s in (1, 2, 3) for k in (0, 1)]
    assert panels[0].get_images()[0].get_array()[0].tolist() == [0.0, 1.0, 1.0]  # res1.0 closes after epoch 1


def fake_results(path, kinds=("plain", "eps")):
    """A reproduction results file with two final seeds per model (and a selection run)."""
    runs = []
    for kind in kinds:
        for phase, seed in (("select", 1), ("final", 11), ("final", 12)):
            epsilon = 7.5 if kind == "eps" else 0.0
            runs.append({"name": f"{phase}-{kind}-s{seed}", "phase": phase, "kind": kind, "seed": seed,
                         "epsilon": epsilon, "blocks": 3,
                         "curves": {"epoch": [1, 2], "val_error": [0.6, 0.4 + seed / 1000],
                                    "learning_rate": [0.1, 0.01], "discarded_cnt": [0.0, float(kind == "eps")],
                                    "epsilon": [epsilon, epsilon]},
                         "gates": {f"res{s}.0": [0.0, float(kind == "eps" and s == 2)] for s in (1, 2, 3)},
                         "scores": {"batch_sizes": {size: {"val_error": 0.4 + seed / 1000,
                                                           "val_error_per_batch": 0.4 + seed / 1000 + extra}
                                                    for size, extra in (("1", 0.1), ("10", 0.02), ("128", 0.0))}}})
    with open(path, "w") as f:
        json.dump({"schema": 1, "runs": runs}, f)
    return str(path)


def test_results_file_gives_the_final_runs_figures(plot_runs, captured, tmp_path):
    results = fake_results(tmp_path / "cifar10_reproduction.json")
    plot_runs.main(["--results", results, "--out", str(tmp_path / "figures")])
    assert sorted(captured) == ["batch_size.png", "discarded_cnt.png", "gates_eps.png", "learning_rate.png",
                                "val_error.png"]
    bars = {bar.get_label(): bar.lines[0] for bar in captured["batch_size.png"].axes[0].containers}
    per_batch = bars["ε-ResNet, per batch (the original)"]
    assert list(per_batch.get_xdata()) == [1, 10, 128]
    assert list(per_batch.get_ydata()) == pytest.approx([51.15, 43.15, 41.15])  # the seeds' mean, in %
    ax = captured["val_error.png"].axes[0]
    assert [line.get_label() for line in ax.get_lines()] == ["plain ResNet-8 (mean ± sd of 2)",
                                                             "ε-ResNet-8, ε = 7.5 (mean ± sd of 2)"]
    assert list(ax.get_lines()[1].get_ydata()) == pytest.approx([60.0, 41.15])  # the final seeds, not selection
    panels = [ax for ax in captured["gates_eps.png"].axes if ax.get_images()]
    assert [ax.get_title() for ax in panels] == ["seed 11", "seed 12"]
    assert panels[1].get_images()[0].get_array()[:, 1].tolist() == [0.0, 1.0, 0.0]


def test_results_file_writes_pngs_and_rejects_other_json(plot_runs, tmp_path):
    out = tmp_path / "figures"
    plot_runs.main(["--results", fake_results(tmp_path / "r.json"), "--out", str(out)])
    for name in os.listdir(out):
        assert matplotlib.image.imread(out / name).ndim == 3
    with pytest.raises(SystemExit) as exc:
        plot_runs.main(["--results", fake_results(tmp_path / "plain_only.json", kinds=("plain",)), "--out", str(out)])
    assert "no final eps run" in str(exc.value.code)


def test_runs_and_results_are_exclusive(plot_runs, tmp_path, capsys):
    run = fake_run(tmp_path / "train_log.a", 0.0)
    for argv in ([run, "--results", "x.json"], ["--out", str(tmp_path)]):
        with pytest.raises(SystemExit) as exc:
            plot_runs.main(argv)
        assert exc.value.code == 2
        assert "not both and not neither" in capsys.readouterr().err
