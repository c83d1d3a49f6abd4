"""Nothing lost, nothing mixed: the run folder's lock (two real processes), a killed writer's
temporaries, and a metrics.jsonl whose last line was cut."""
import errno
import functools
import importlib.util
import json
import logging
import os
import signal
import subprocess
import sys

import pytest

from epsilon_resnet import compression, run_folder
from epsilon_resnet.cli import cifar_main, compress_main
from epsilon_resnet.errors import RunError
from epsilon_resnet.run_folder import read_metrics
from cli_helpers import exit_code, snapshot, write_tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
train = functools.partial(exit_code, cifar_main)
compress = functools.partial(exit_code, compress_main)

HOLD = "import sys, time; from epsilon_resnet import run_folder\n" \
       "with run_folder.locked(sys.argv[1], 'training'):\n    print('held', flush=True); time.sleep(120)"


def dead_pid():
    """The PID of a process that has ended."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


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


def test_compression_takes_the_lock_first_and_removes_what_an_interrupted_compression_left(
        tmp_path, monkeypatch, capsys, tiny_cifar, holder):
    monkeypatch.chdir(tmp_path)
    assert train("--config", write_tiny_config(str(tmp_path), tiny_cifar, max_epoch=1), "-o", "c") == 0
    run_dir = tmp_path / "train_log.c"
    dead = dead_pid()
    leftovers = [f".compressed_model_3.cfg.epsilon_resnet-tmp.{dead}.0123abcd",
                 f".compressed_model_3.epsilon_resnet-tmp.{dead}.89abcdef"]
    (run_dir / leftovers[0]).write_text("half a cfg")
    (run_dir / leftovers[1]).mkdir()
    # A publish stopped between the weights and the .cfg: weights without their .cfg.
    (run_dir / "compressed_model_3.index").write_bytes(b"index")
    (run_dir / "compressed_model_3.data-00000-of-00001").write_bytes(b"data")
    process = holder(run_dir)
    before = snapshot(run_dir)
    checks = []
    monkeypatch.setattr(compression, "lossless_check", lambda *args: checks.append(args))
    assert compress("--dir", "train_log.c", "--step", 3, "--check-batches", 1) == 1
    err = capsys.readouterr().err
    assert err == f"error: train_log.c is in use by PID {process.pid} (training); wait until it ends, then " \
                  f"compress --dir again\n"
    assert checks == [] and snapshot(run_dir) == before  # refused before the check, and before any cleaning
    process.kill()
    process.wait()
    monkeypatch.undo()
    monkeypatch.chdir(tmp_path)
    assert compress("--dir", "train_log.c", "--step", 3, "--check-batches", 1) == 0
    assert "removed train_log.c/compressed_model_3.index: weights without their .cfg" in "".join(capsys.readouterr())
    names = os.listdir(run_dir)
    assert "compressed_model_3.cfg" in names and not set(leftovers) & set(names)
    assert (run_dir / "compressed_model_3.index").read_bytes() != b"index"


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


def plot_runs_module():
    spec = importlib.util.spec_from_file_location("plot_runs", os.path.join(ROOT, "scripts", "plot_runs.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_cut_last_metrics_line_is_moved_aside_on_resume_and_the_run_still_compresses_and_plots(
        tmp_path, monkeypatch, capsys, tiny_cifar):
    monkeypatch.chdir(tmp_path)
    assert train("--config", write_tiny_config(str(tmp_path), tiny_cifar, max_epoch=2), "-o", "cut") == 0
    path = tmp_path / "train_log.cut" / "metrics.jsonl"
    whole = path.read_text()
    cut = whole[:-len(whole.splitlines()[-1]) // 2]  # a kill during epoch 2's append: half its line
    path.write_text(cut)
    capsys.readouterr()
    assert train("--config", write_tiny_config(str(tmp_path), tiny_cifar, max_epoch=3), "-o", "cut") == 0
    assert (f"train_log.cut/metrics.jsonl:2 was cut short (a write was interrupted); kept lines 1-1 and moved the "
            f"cut text to train_log.cut/metrics.jsonl.cut-line-2") in capsys.readouterr().out
    assert (tmp_path / "train_log.cut" / "metrics.jsonl.cut-line-2").read_text() == cut.splitlines()[1]
    lines = path.read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 3]  # epoch 2's record was lost with its line
    assert compress("--dir", "train_log.cut", "--step", 9, "--check-batches", 1) == 0
    plot_runs_module().main(["train_log.cut", "--out", str(tmp_path / "figures")])
    assert "val_error.png" in os.listdir(tmp_path / "figures")


class Collect(logging.Handler):
    def __init__(self):
        super().__init__()
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def test_the_reader_names_a_damaged_line_and_what_it_kept(tmp_path, monkeypatch):
    collect = Collect()
    monkeypatch.setattr(run_folder.logger, "handlers", [collect])  # only this test's handler (not a run's log)
    records = [{"epoch": epoch, "global_step": 3 * epoch} for epoch in (1, 2, 3)]
    text = [json.dumps(r) for r in records]
    # What a run of an earlier version left: epoch 2's cut line, its resumed epoch 2 appended to it, and a cut epoch 3.
    (tmp_path / "metrics.jsonl").write_text(f"{text[0]}\n{text[1][:9]}{text[1]}\n{text[2][:5]}")
    assert read_metrics(str(tmp_path)) == records[:2]
    assert collect.messages == [
        f"{tmp_path}/metrics.jsonl:2 begins with a cut record (a write was interrupted); kept the epoch 2 record "
        f"that follows it on that line",
        f"{tmp_path}/metrics.jsonl:3 is cut short (a write was interrupted); kept the 2 lines before it"]
    (tmp_path / "metrics.jsonl").write_text(f"{text[0]}\nnot json\n{text[2]}\n")
    with pytest.raises(ValueError, match="metrics.jsonl:2 is not valid JSON"):
        read_metrics(str(tmp_path))


def test_repair_keeps_a_last_record_that_only_lacks_its_newline(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"epoch": 1}\n{"epoch": 2}')
    assert run_folder.repair_cut_tail(str(path)) == f"{path}:2 lacked its newline; added it"
    assert path.read_text() == '{"epoch": 1}\n{"epoch": 2}\n' and os.listdir(tmp_path) == ["metrics.jsonl"]
    assert run_folder.repair_cut_tail(str(path)) is None
