"""cifarEpsilonResnet.py end to end on a tiny CIFAR-10: run folder contents, --load, resume, bad input."""
import functools
import os

import pytest

from epsilon_resnet.run_folder import read_metrics
from epsilon_resnet.cli import cifar_main
from cli_helpers import exit_code, snapshot, write_tiny_config

run = functools.partial(exit_code, cifar_main)
write_config = functools.partial(write_tiny_config, model={"n": 1, "epsilon": 2.5})

EPOCH_KEYS = {"learning_rate", "epsilon", "train_error", "val_error", "val_error_side", "cost",
              "discarded_cnt", "discarded_ratio", "global_step"}


def test_short_run_writes_log_metrics_events_and_checkpoints_then_resumes(tmp_path, monkeypatch, tiny_cifar):
    monkeypatch.chdir(tmp_path)
    config = write_config(str(tmp_path), tiny_cifar)
    assert run("--config", config, "-o", "tiny", "--cifar10") == 0
    run_dir = tmp_path / "train_log.tiny"
    records = read_metrics(str(run_dir))
    assert [r["epoch"] for r in records] == [1, 2] and [r["global_step"] for r in records] == [3, 6]
    assert EPOCH_KEYS <= set(records[0])
    for block in ("res1.0", "res2.0", "res3.0"):
        assert {f"{block}/is_discarded", f"{block}/response_abs_max", f"{block}/response_mean_max"} <= set(records[-1])
    assert records[0]["learning_rate"] == pytest.approx(0.1) and records[0]["epsilon"] == 2.5
    assert (run_dir / "model-3.index").exists() and (run_dir / "model-6.index").exists()
    assert "epoch 2 done" in (run_dir / "log.log").read_text()
    assert os.listdir(run_dir / "train") and os.listdir(run_dir / "validation")  # TensorBoard events

    # The same command with more epochs resumes from model-6 instead of starting again.
    assert run("--config", config, "-o", "tiny", "--cifar10", "--max-epoch", "3") == 0
    records = read_metrics(str(run_dir))
    assert [(r["epoch"], r["global_step"]) for r in records] == [(1, 3), (2, 6), (3, 9)]
    assert "resumed from" in (run_dir / "log.log").read_text()

    # --load restores the variables (the global step too) and starts a new run: epoch 1, schedules anew.
    assert run("--config", config, "-o", "loaded", "--load", str(run_dir / "model-6"), "--max-epoch", "2") == 0
    loaded = read_metrics(str(tmp_path / "train_log.loaded"))
    assert [(r["epoch"], r["global_step"]) for r in loaded] == [(1, 9), (2, 12)]
    assert [r["learning_rate"] for r in loaded] == pytest.approx([0.1, 0.1])
    assert "a new run starts at epoch 1" in (tmp_path / "train_log.loaded" / "log.log").read_text()


def test_missing_data_folder_fails_before_writing_anything(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    missing = str(tmp_path / "no-such-folder")
    assert run("--config", write_config(str(tmp_path), missing), "-o", "x") == 1
    assert missing in capsys.readouterr().err
    assert not (tmp_path / "train_log.x").exists()


def test_unknown_dataset_flag_is_a_usage_error(capsys):
    assert run("--cifar1000") == 2
    assert "unrecognized arguments: --cifar1000" in capsys.readouterr().err


def test_malformed_config_is_refused(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: {batch_size: -}\n")
    assert run("--config", str(bad), "-o", "x") == 1
    assert "train.batch_size" in capsys.readouterr().err
    assert not (tmp_path / "train_log.x").exists()


def test_missing_or_corrupt_checkpoint_for_load(tmp_path, monkeypatch, capsys, tiny_cifar):
    monkeypatch.chdir(tmp_path)
    config = write_config(str(tmp_path), tiny_cifar)
    assert run("--config", config, "-o", "a", "--load", str(tmp_path / "model-99")) == 1
    assert "model-99.index" in capsys.readouterr().err
    (tmp_path / "model-5.index").write_bytes(b"not a checkpoint")
    (tmp_path / "model-5.data-00000-of-00001").write_bytes(b"garbage")
    assert run("--config", config, "-o", "b", "--load", str(tmp_path / "model-5")) == 1
    assert "the checkpoint files of " in (err := capsys.readouterr().err) and "model-5 are damaged (" in err


def test_existing_run_of_another_model_is_left_untouched(tmp_path, monkeypatch, capsys, tiny_cifar):
    monkeypatch.chdir(tmp_path)
    config = write_config(str(tmp_path), tiny_cifar, max_epoch=1)
    assert run("--config", config, "-o", "r") == 0
    before = snapshot(tmp_path / "train_log.r")
    assert run("--config", config, "-o", "r", "-n", "2") == 1
    assert "different 'model' configuration" in capsys.readouterr().err
    assert snapshot(tmp_path / "train_log.r") == before


def test_output_must_be_a_name_not_a_path(tmp_path, monkeypatch, capsys, tiny_cifar):
    monkeypatch.chdir(tmp_path)
    assert run("--config", write_config(str(tmp_path), tiny_cifar), "-o", "runs/a") == 2
    assert "not a path: 'runs/a'" in capsys.readouterr().err
    assert os.listdir(tmp_path) == ["tiny.yaml"]


def test_plain_network_trains_with_the_step_schedule(tmp_path, monkeypatch, tiny_cifar):
    monkeypatch.chdir(tmp_path)
    config = write_tiny_config(str(tmp_path), tiny_cifar, model={"n": 1, "gated": False, "side_output": False},
                               lr_schedule=[[0, 0.1], [1, 0.01]], lr_restart_schedule=None)
    assert run("--config", config, "-o", "plain") == 0
    records = read_metrics(str(tmp_path / "train_log.plain"))
    assert [r["learning_rate"] for r in records] == pytest.approx([0.1, 0.01])
    assert not any(key.endswith("/is_discarded") or key.startswith("discarded") for key in records[-1])


@pytest.mark.slow
def test_load_starts_at_the_schedules_first_rate_not_the_checkpoints(tmp_path, monkeypatch, tiny_cifar):
    """A checkpoint trained at 0.01, loaded by a run whose schedule has no point at epoch 0 (as
    SVHN's): epoch 1 runs at the schedule's first rate, 0.1 (tensorpack kept the checkpoint's)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "slow").mkdir()
    (tmp_path / "svhn_like").mkdir()
    slow = write_config(str(tmp_path / "slow"), tiny_cifar, max_epoch=1, lr_schedule=[[0, 0.01]],
                        lr_restart_schedule=None)
    assert run("--config", slow, "-o", "slow") == 0
    assert read_metrics(str(tmp_path / "train_log.slow"))[0]["learning_rate"] == pytest.approx(0.01)
    svhn_like = write_config(str(tmp_path / "svhn_like"), tiny_cifar, max_epoch=2, lr_schedule=[[1, 0.1], [5, 0.01]],
                             lr_restart_schedule=None)
    assert run("--config", svhn_like, "-o", "loaded", "--load", str(tmp_path / "train_log.slow" / "model-3")) == 0
    loaded = read_metrics(str(tmp_path / "train_log.loaded"))
    assert [(r["epoch"], r["learning_rate"]) for r in loaded] == [(1, pytest.approx(0.1)), (2, pytest.approx(0.1))]
