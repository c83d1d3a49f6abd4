"""The training side's facts each have one owner (issue 35): the gates receive their
training-step settings when they are built, and the gate summary is read once per epoch."""
import pytest

from epsilon_resnet import callbacks as cbs
from epsilon_resnet import data
from epsilon_resnet.cli import cifar_main
from epsilon_resnet.config import ModelConfig
from epsilon_resnet.gate import StrictIdentity, gates_of
from epsilon_resnet.networks import build_from_config
from epsilon_resnet.run_folder import read_metrics
from cli_helpers import exit_code, write_tiny_config


def test_the_gate_takes_its_training_step_settings_at_construction():
    layer = StrictIdentity(epsilon=1.0, block="b", skip_closed_backward=False, scope="per_replica")
    assert (layer.skip_closed_backward, layer.scope) == (False, "per_replica")
    saved = layer.get_config()
    assert "scope" not in saved and "skip_closed_backward" not in saved  # .keras files stay as they were
    loaded = StrictIdentity.from_config(saved)
    assert (loaded.skip_closed_backward, loaded.scope) == (True, "global")


def test_build_from_config_passes_them_to_every_gate(tiny_cifar):
    source = data.get_source("cifar10", tiny_cifar)
    model = build_from_config(ModelConfig(n=1, gate_scope="per_replica"), source, skip_closed_backward=False)
    gates = gates_of(model)
    assert len(gates) == 3
    assert {(g.skip_closed_backward, g.scope) for g in gates} == {(False, "per_replica")}


def test_the_gate_summary_is_read_once_per_epoch(tmp_path, monkeypatch, tiny_cifar):
    monkeypatch.chdir(tmp_path)
    calls = []

    def counted(model):
        calls.append(model.name)
        return summary(model)

    summary = cbs.gate_summary
    monkeypatch.setattr(cbs, "gate_summary", counted)
    config = write_tiny_config(str(tmp_path), tiny_cifar, model={"n": 1, "epsilon": 2.5})
    assert exit_code(cifar_main, "--config", config, "-o", "tiny", "--cifar10") == 0
    records = read_metrics(str(tmp_path / "train_log.tiny"))
    assert [r["epoch"] for r in records] == [1, 2]
    assert len(calls) == 2
    for record in records:  # the count the logs carry is the sum of the per-block averages written with it
        blocks = sum(v for k, v in record.items() if k.endswith("/is_discarded"))
        assert record["discarded_cnt"] == pytest.approx(blocks, abs=1e-6)
        assert record["learning_rate"] == pytest.approx(0.1) and record["epsilon"] == 2.5
