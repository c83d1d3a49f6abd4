"""Faults during training: a non-finite loss, a full disk, SIGTERM and SIGKILL of the training script
(Ctrl-C is in test_resume.py and test_distribute.py)."""
import functools
import errno
import json
import os
import re
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
import tensorflow as tf

from epsilon_resnet import callbacks as cbs
from epsilon_resnet import config as config_lib
from epsilon_resnet import training
from epsilon_resnet.errors import Interrupted
from epsilon_resnet.run_folder import read_metrics
from epsilon_resnet.cli import cifar_main
from cli_helpers import exit_code, write_tiny_config

run = functools.partial(exit_code, cifar_main)

SCRIPT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts", "cifarEpsilonResnet.py")


def checkpoint_indexes(run_dir):
    return sorted(f for f in os.listdir(run_dir) if f.endswith(".index"))


def restored(config_path, run_dir, prefix):
    """A Trainer holding the checkpoint `prefix` (which must load)."""
    trainer = training.Trainer(config_lib.load(config_path), run_dir)
    trainer.resume(prefix)
    return trainer


def test_non_finite_loss_stops_the_run_naming_the_step_and_keeps_the_last_good_checkpoint(
        tmp_path, monkeypatch, capsys, tiny_cifar):
    monkeypatch.chdir(tmp_path)
    # Epoch 2's learning rate (the point after epoch 1) blows the weights up: the loss is no longer finite a step later.
    config = write_tiny_config(str(tmp_path), tiny_cifar, max_epoch=3, lr_schedule=[[0, 0.1], [1, 1e30]],
                          lr_restart_schedule=None)
    assert run("--config", config, "-o", "nan") == 1
    err = capsys.readouterr().err
    found = re.search(r"the loss became (nan|inf|-inf) at global step (\d+) \(step (\d) of epoch 2\)", err)
    assert found, err
    assert int(found.group(2)) == 3 + int(found.group(3))
    assert "the last good checkpoint is train_log.nan/model-3" in err
    assert checkpoint_indexes("train_log.nan") == ["model-3.index"]
    assert tf.train.latest_checkpoint("train_log.nan").endswith("model-3")
    assert [r["epoch"] for r in read_metrics("train_log.nan")] == [1]
    trainer = restored(config, "train_log.nan", "train_log.nan/model-3")
    assert trainer.global_step == 3
    assert all(np.isfinite(w.numpy()).all() for w in trainer.model.weights)


def fail_checkpoint_write(exception):
    """A Checkpoint._write that leaves half a model-6 behind and fails, as a full disk would."""
    original = tf.train.Checkpoint._write

    def write(self, file_prefix, *args, **kwargs):
        if not file_prefix.endswith("model-6"):
            return original(self, file_prefix, *args, **kwargs)
        with open(file_prefix + ".data-00000-of-00001", "wb") as f:
            f.write(b"\0" * 100)
        with open(file_prefix + ".index", "wb") as f:
            f.write(b"\x08")
        raise exception
    return write


original_metrics_write = cbs.MetricsWriter.on_epoch_end


def fail_metrics_write(self, epoch, logs=None):
    """MetricsWriter.on_epoch_end on a disk that fills up during epoch 2."""
    if epoch == 2:
        raise OSError(errno.ENOSPC, "No space left on device", self.path)
    original_metrics_write(self, epoch, logs)


@pytest.mark.parametrize("where, exception", [
    ("checkpoint", OSError(errno.ENOSPC, "No space left on device")),
    ("checkpoint", tf.errors.ResourceExhaustedError(None, None, "train_log.full/model-6_temp/part-00000-of-00001."
                                                                "data-00000-of-00001; No space left on device")),
    ("metrics", None),
])
def test_full_disk_is_reported_naming_the_folder_and_the_run_resumes_once_there_is_room(
        tmp_path, monkeypatch, capsys, tiny_cifar, where, exception):
    monkeypatch.chdir(tmp_path)
    config = write_tiny_config(str(tmp_path), tiny_cifar)
    with monkeypatch.context() as patch:
        if where == "checkpoint":
            patch.setattr(tf.train.Checkpoint, "_write", fail_checkpoint_write(exception))
        else:
            patch.setattr(cbs.MetricsWriter, "on_epoch_end", fail_metrics_write)
        assert run("--config", config, "-o", "full") == 1
    err = capsys.readouterr().err
    assert "writing to train_log.full failed at global step 6 because the disk is full" in err
    assert "The last complete checkpoint is train_log.full/model-3" in err
    assert tf.train.latest_checkpoint("train_log.full").endswith("model-3")
    assert restored(config, "train_log.full", "train_log.full/model-3").global_step == 3

    assert run("--config", config, "-o", "full") == 0  # room again: the same command resumes
    assert [r["global_step"] for r in read_metrics("train_log.full")] == [3, 6]
    with open("train_log.full/metrics.jsonl") as f:  # epoch 2's record, written before the failed save, once
        assert [json.loads(line)["epoch"] for line in f] == [1, 2]
    assert restored(config, "train_log.full", tf.train.latest_checkpoint("train_log.full")).global_step == 6


@pytest.fixture
def start_training():
    """Starts the training script; whatever still runs at the end of the test is killed."""
    started = []

    def start(cwd, *argv):
        out = open(os.path.join(cwd, f"out-{len(started)}.txt"), "w+")
        started.append(subprocess.Popen([sys.executable, SCRIPT, *argv], cwd=cwd, stdout=out,
                                        stderr=subprocess.STDOUT, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}))
        return started[-1], out
    yield start
    for process in started:
        if process.poll() is None:
            process.kill()
            process.wait()


def wait_for(condition, process, out, timeout=180):
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None:
            out.seek(0)
            raise AssertionError(f"training exited with {process.returncode}:\n{out.read()[-3000:]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"nothing happened within {timeout} s")
        time.sleep(0.002)


def latest_step(run_dir):
    latest = tf.train.latest_checkpoint(run_dir) if os.path.isdir(run_dir) else None
    return int(latest.rsplit("-", 1)[1]) if latest else None


@pytest.mark.slow
def test_sigterm_saves_the_current_step_and_kill_9_leaves_a_loadable_latest_checkpoint(
        tmp_path, monkeypatch, tiny_cifar, start_training):
    monkeypatch.chdir(tmp_path)
    config = write_tiny_config(str(tmp_path), tiny_cifar, max_epoch=1000, keep_checkpoints=2)
    run_dir = str(tmp_path / "train_log.k")
    process, out = start_training(str(tmp_path), "--config", config, "-o", "k")
    wait_for(lambda: latest_step(run_dir), process, out)
    process.send_signal(signal.SIGTERM)  # as a cluster's scheduler would; Ctrl-C (SIGINT) is alike
    assert process.wait(timeout=120) == 1
    out.seek(0)
    stopped = re.search(r"stopped by SIGTERM at global step (\d+) \(step (\d) of epoch (\d+)\) after saving "
                        r"train_log.k/model-(\d+)", out.read())
    assert stopped, out.read()
    step = int(stopped.group(1))
    assert step == int(stopped.group(4)) == latest_step(run_dir) == 3 * (int(stopped.group(3)) - 1) + int(
        stopped.group(2))
    assert f"stopped by SIGTERM at global step {step}" in open(os.path.join(run_dir, "log.log")).read()

    # Resumed, then killed as soon as a later checkpoint is being written (or soon after one exists).
    process, out = start_training(str(tmp_path), "--config", config, "-o", "k", "--resume")
    wait_for(lambda: (latest_step(run_dir) or 0) > step, process, out)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not any(f.endswith("_temp") for f in os.listdir(run_dir)):
        time.sleep(0.001)
    process.kill()
    process.wait(timeout=60)

    latest = tf.train.latest_checkpoint(run_dir)
    trainer = restored(config, run_dir, latest)
    assert trainer.global_step == latest_step(run_dir) and trainer.global_step % 3 == 0
    epochs = trainer.global_step // 3
    assert run("--config", config, "-o", "k", "--resume", "--max-epoch", str(epochs + 1)) == 0
    assert [r["epoch"] for r in read_metrics(run_dir)] == list(range(1, epochs + 2))
    assert latest_step(run_dir) == 3 * (epochs + 1)


class SignalAfterStep(keras.callbacks.Callback):
    """Sends this process a signal once the given global step is done (here: an epoch's last)."""

    def __init__(self, step, signum):
        super().__init__()
        self.step, self.signum = step, signum

    def on_train_batch_end(self, batch, logs=None):
        if int(self.model.optimizer.iterations.numpy()) == self.step:
            os.kill(os.getpid(), self.signum)


def test_sigterm_during_evaluation_stops_at_once_and_the_run_resumes_into_that_evaluation(tmp_path, tiny_cifar):
    config = config_lib.load(write_tiny_config(str(tmp_path), tiny_cifar, max_epoch=2))
    run_dir = str(tmp_path / "run")
    # The signal lands after epoch 1's last training step, so the run is evaluating when it acts.
    with pytest.raises(Interrupted, match=r"stopped by SIGTERM at global step 3 \(the evaluation after epoch 1\) "
                                          r"after saving .*model-3"):
        training.train_and_evaluate(config, run_dir, progress=False,
                                    extra_callbacks=[SignalAfterStep(3, signal.SIGTERM)])
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is put back
    assert not os.path.exists(os.path.join(run_dir, "metrics.jsonl"))  # epoch 1 never ended
    training.train_and_evaluate(config, run_dir, progress=False)
    assert [(r["epoch"], r["global_step"]) for r in read_metrics(run_dir)] == [(1, 3), (2, 6)]
