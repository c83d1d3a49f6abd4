"""Nothing lost, nothing mixed: the run folder's lock (two real processes), a killed writer's
temporaries, and a metrics.jsonl whose last line was cut."""
import errno
import functools
import os
import signal
import subprocess
import sys

import pytest

from epsilon_resnet import run_folder
from epsilon_resnet.cli import cifar_main, compress_main
from epsilon_resnet.errors import RunError
from epsilon_resnet.metrics_file import read_metrics
from cli_helpers import exit_code, snapshot, write_tiny_config

train = functools.partial(exit_code, cifar_main)
compress = functools.partial(exit_code, compress_main)

HOLD = "import sys, time; from epsilon_resnet import run_folder\n" \
       "with run_folder.locked(sys.argv[1], 'training'):\n    print('held', flush=True); time.sleep(120)"


@pytest.fixture
def holder(tmp_path):
    """Start a process that locks a folder and waits; yields (process, folder)."""
    started = []

    def start(folder):
        process = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE, text=True)
        started.append(process)
        assert process.stdout.readline() == "held\n"
        return process
    yield start
    for process in started:
        process.kill()
        process.wait()


def test_a_second_training_of_a_locked_folder_is_refused_and_a_killed_holder_does_not_block(
        tmp_path, monkeypatch, capsys, tiny_cifar, holder):
    monkeypatch.chdir(tmp_path)
    config = write_tiny_config(str(tmp_path), tiny_cifar, max_epoch=1)
    process = holder(tmp_path / "train_log.twin")
    before = snapshot(tmp_path / "train_log.twin")
    assert train("--config", config, "-o", "twin") == 1
    err = capsys.readouterr().err
    assert f"train_log.twin is in use by PID {process.pid} (training)" in err, err
    assert snapshot(tmp_path / "train_log.twin") == before  # nothing written: no config, metrics, events
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert train("--config", config, "-o", "twin") == 0
    assert [r["epoch"] for r in read_metrics("train_log.twin")] == [1]


def test_compression_refuses_a_locked_run_and_removes_a_killed_compression_s_temporaries(
        tmp_path, monkeypatch, capsys, tiny_cifar, holder):
    monkeypatch.chdir(tmp_path)
    assert train("--config", write_tiny_config(str(tmp_path), tiny_cifar, max_epoch=1), "-o", "c") == 0
    leftovers = ["compressed_model_3.cfg.tmp-99999", ".compressed_model_3.tmp-abc123"]
    (tmp_path / "train_log.c" / leftovers[0]).write_text("half a cfg")
    (tmp_path / "train_log.c" / leftovers[1]).mkdir()
    process = holder(tmp_path / "train_log.c")
    assert compress("--dir", "train_log.c", "--step", 3, "--decide-batches", 1, "--check-batches", 1) == 1
    assert f"train_log.c is in use by PID {process.pid}" in capsys.readouterr().err
    process.kill()
    process.wait()
    assert compress("--dir", "train_log.c", "--step", 3, "--decide-batches", 1, "--check-batches", 1) == 0
    names = os.listdir(tmp_path / "train_log.c")
    assert "compressed_model_3.cfg" in names and not set(leftovers) & set(names)


def test_a_folder_that_cannot_be_written_is_named(tmp_path, monkeypatch):
    def refuse(path, *args, **kwargs):  # as a read-only folder does (chmod does not stop root, who runs the CI)
        raise PermissionError(errno.EACCES, "Permission denied", path)
    monkeypatch.setattr(os, "makedirs", refuse)
    with pytest.raises(RunError, match=f"cannot write into the run folder {tmp_path}/run: Permission denied"):
        with run_folder.locked(str(tmp_path / "run"), "training"):
            pass


def test_output_dot_is_refused(tmp_path, monkeypatch, capsys, tiny_cifar):
    monkeypatch.chdir(tmp_path)
    for name in (".", ".."):
        assert train("--config", write_tiny_config(str(tmp_path), tiny_cifar), "-o", name) == 2
        assert f"not a path: {name!r}" in capsys.readouterr().err
    assert os.listdir(tmp_path) == ["tiny.yaml"]
