"""The write-point fault sweep, after SQLite's crash and I/O-error tests: a first run counts every
write a short training (and a compression) makes into its run folder; then, for k = 1..N, the
same run is stopped at its k-th write, by a kill or by an I/O error (ENOSPC, EIO), and the same
command is run again. Each time the run must end with the checkpoints and metrics records of
the uninterrupted run, and no file but the project's own temporaries may have been removed or
changed.

A kill is emulated in the process: at the k-th write a BaseException unwinds the run and from
then on every write, rename and removal is dropped (a killed process changes nothing more; its
clean-up code never runs), and its temporaries carry the PID of a process that has ended.
"""
import builtins
import errno
import functools
import json
import os
import shutil

import keras
import numpy as np
import pytest
import tensorflow as tf

from epsilon_resnet import atomic, console, run_folder
from epsilon_resnet.cli import cifar_main, compress_main
from cli_helpers import exit_code, write_tiny_config
from test_run_folder import ended_pid

pytestmark = pytest.mark.slow

train = functools.partial(exit_code, cifar_main)
compress = functools.partial(exit_code, compress_main)


class Killed(BaseException):
    """The emulated kill -9 at a write."""


class WritePoints:
    """Counts the calls that change the file system below `root`, naming each; makes the
    `fail_at`-th one fail as `fault` ("kill", "ENOSPC" or "EIO") says."""

    def __init__(self, root, fail_at=None, fault=None):
        self.root, self.fail_at, self.fault = os.path.realpath(root), fail_at, fault
        self.names, self.dead = [], False

    def below(self, path):
        return os.path.realpath(os.fspath(path)).startswith(self.root + os.sep)

    def hit(self, name, tf_call=False):
        """Called before a write; True when it must be dropped (the process was killed)."""
        if self.dead:
            return True
        self.names.append(name)
        if len(self.names) != self.fail_at:
            return False
        if self.fault == "kill":
            self.dead = True
            raise Killed(name)
        code = errno.ENOSPC if self.fault == "ENOSPC" else errno.EIO
        if tf_call:
            kind = tf.errors.ResourceExhaustedError if code == errno.ENOSPC else tf.errors.InternalError
            raise kind(None, None, f"{name}; {os.strerror(code)}")
        raise OSError(code, os.strerror(code), name)

    def install(self, patch, dead_pid):
        """Hook every way the project (and TensorFlow, at its Python calls) writes."""
        points = self
        real = {name: getattr(os, name) for name in ("open", "replace", "rename", "mkdir", "remove", "unlink",
                                                      "fsync", "pwrite", "ftruncate")}
        real_open, real_rmtree = builtins.open, shutil.rmtree

        def write_open(file, mode="r", *args, **kwargs):
            if isinstance(file, (str, os.PathLike)) and set(mode) & set("wax+") and points.below(file):
                if points.hit(f"open {os.path.basename(file)}"):
                    raise Killed(file)
            return real_open(file, mode, *args, **kwargs)

        def os_open(path, flags, *args, **kwargs):
            if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT) and points.below(path):
                if points.hit(f"os.open {os.path.basename(path)}"):
                    raise Killed(path)
            return real["open"](path, flags, *args, **kwargs)

        def path_call(name):
            def call(path, *args, **kwargs):
                target = args[0] if name in ("replace", "rename") else path
                if name == "mkdir" and os.path.isdir(path):  # os.makedirs(exist_ok=True) of a folder there
                    return real[name](path, *args, **kwargs)
                if points.below(path) and points.hit(f"{name} {os.path.basename(target)}"):
                    return None
                return real[name](path, *args, **kwargs)
            return call

        def fd_call(name):
            def call(fd, *args):
                return None if points.hit(f"{name} fd") else real[name](fd, *args)
            return call

        def rmtree(path, *args, **kwargs):
            if points.below(path) and points.hit(f"rmtree {os.path.basename(path)}"):
                return None
            return real_rmtree(path, *args, **kwargs)

        def method(original, label, tf_call=True):
            def call(self, *args, **kwargs):
                return None if points.hit(label, tf_call) else original(self, *args, **kwargs)
            return call

        patch.setattr(builtins, "open", write_open)
        patch.setattr(os, "open", os_open)
        for name in ("replace", "rename", "mkdir", "remove", "unlink"):
            patch.setattr(os, name, path_call(name))
        for name in ("fsync", "pwrite", "ftruncate"):
            patch.setattr(os, name, fd_call(name))
        patch.setattr(shutil, "rmtree", rmtree)
        patch.setattr(tf.train.Checkpoint, "write", method(tf.train.Checkpoint.write, "checkpoint write"))
        for event in ("on_train_begin", "on_epoch_end", "on_train_end"):
            patch.setattr(keras.callbacks.TensorBoard, event,
                          method(getattr(keras.callbacks.TensorBoard, event), f"events {event}"))
        patch.setattr(console.RunLog, "emit", method(console.RunLog.emit, "log.log line", tf_call=False))
        patch.setattr(os, "getpid", lambda: dead_pid)


def run_with(points, command, dead_pid):
    """The command's exit code under `points`; "killed" when the emulated kill stopped it."""
    with pytest.MonkeyPatch.context() as patch:
        points.install(patch, dead_pid)
        try:
            return command()
        except Killed:
            return "killed"


def files(folder):
    """{relative path: bytes} of every file below folder but the lock."""
    found = {}
    for root, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(root, name)
            if name != run_folder.LOCK_FILE:
                with open(path, "rb") as f:
                    found[os.path.relpath(path, folder)] = f.read()
    return found


def checkpoint_values(run_dir):
    """{step: {key: value}} of the complete checkpoints (save_counter, which counts attempts, the
    rotation's state, which holds the times of the saves, and the object graph aside)."""
    values = {}
    for step in run_folder.steps_in(run_dir):
        reader = tf.train.load_checkpoint(os.path.join(run_dir, f"model-{step}"))
        values[step] = {key: reader.get_tensor(key) for key in reader.get_variable_to_shape_map()
                        if not key.startswith(("save_counter", "rotation/", "_CHECKPOINTABLE_OBJECT_GRAPH"))}
    return values


def assert_same_values(got, expected):
    assert set(got) == set(expected)
    for key in expected:
        np.testing.assert_array_equal(got[key], expected[key], err_msg=key)


def incomplete_checkpoints(stopped):
    """.data files without their .index: the rest of an interrupted checkpoint write, which the
    next save of that step replaces by design."""
    return [name for name in stopped if ".data-" in name and name.split(".data-")[0] + ".index" not in stopped]


def is_temporary(relative):
    return any(atomic.TEMPORARY.fullmatch(part) for part in relative.split(os.sep))


def assert_nothing_else_touched(before, after, designed_removals=()):
    """Every file the stopped run left, but temporaries, is still there with the same bytes;
    metrics.jsonl and log.log may only have grown, the `checkpoint` hint is rewritten by design."""
    for name, data in before.items():
        if is_temporary(name) or name == run_folder.CHECKPOINT_HINT:
            continue
        if name in designed_removals:
            continue
        assert name in after, f"{name} was removed"
        if name in (run_folder.METRICS_FILE, run_folder.LOG_FILE):
            assert after[name].startswith(data), f"{name} was changed, not appended to"
        else:
            assert after[name] == data, f"{name} was changed"
    assert not [name for name in after if is_temporary(name)], "temporaries left"


def faults(k):
    """A kill at every write, and an I/O error: a full disk at odd writes, EIO at even ones."""
    return ("kill", "ENOSPC" if k % 2 else "EIO")


RUN = "train_log.r"


def stop_at_every_write(names, fresh_folder, command, dead, check):
    """For each counted write k and each fault: in a fresh folder (made the current folder), run
    `command` stopped at its k-th write, then again; `check(run folder, its files after the
    stop, where)` the outcome."""
    for k in range(1, len(names) + 1):
        for fault in faults(k):
            where = f"write {k} of {len(names)} ({names[k - 1]}), {fault}"
            folder = fresh_folder(f"{k}-{fault}")
            code = run_with(WritePoints(folder, k, fault), command, dead)
            assert code == ("killed" if fault == "kill" else 1), where
            stopped = files(folder / RUN)
            assert command() == 0, where
            check(folder / RUN, stopped, where)
            shutil.rmtree(folder)


def count_writes(folder, command, dead, kinds):
    """The names of the writes an uninterrupted `command` makes in `folder`, which must include `kinds`."""
    counted = WritePoints(folder)
    assert run_with(counted, command, dead) == 0
    for kind in kinds:
        assert any(name.startswith(kind) for name in counted.names), (kind, counted.names)
    return counted.names


def test_a_training_stopped_at_any_write_resumes_to_the_uninterrupted_run(tmp_path, monkeypatch, tiny_cifar):
    # keep_checkpoints 1: saving model-6 rotates model-3 out, so deletions are write points too.
    config = write_tiny_config(str(tmp_path), tiny_cifar, deterministic=True, keep_checkpoints=1,
                               keep_checkpoint_every_minutes=1e6)
    dead = ended_pid()

    def fresh_folder(name):
        (tmp_path / name).mkdir()
        monkeypatch.chdir(tmp_path / name)
        return tmp_path / name
    command = functools.partial(train, "--config", config, "-o", RUN.split(".", 1)[1])
    names = count_writes(fresh_folder("reference"), command, dead, (
        "open .config.yaml", "replace config.yaml", "checkpoint write", "replace model-3.data",
        "replace model-3.index", "replace checkpoint", "open metrics.jsonl", "events on_epoch_end",
        "remove model-3.index", "log.log line"))
    expected_checkpoints, expected_records = checkpoint_values(RUN), run_folder.read_metrics(RUN)
    assert sorted(expected_checkpoints) == [6] and [r["epoch"] for r in expected_records] == [1, 2]

    def check(run_dir, stopped, where):
        got = checkpoint_values(run_dir)
        assert sorted(got) == [6], where
        assert_same_values(got[6], expected_checkpoints[6])
        assert run_folder.read_metrics(run_dir) == expected_records, where
        with open(run_dir / run_folder.METRICS_FILE) as f:
            assert [json.loads(line)["epoch"] for line in f] == [1, 2], where
        rotated = [name for name in stopped if name.startswith("model-3.")]  # as in the uninterrupted run
        assert_nothing_else_touched(stopped, files(run_dir), rotated + incomplete_checkpoints(stopped))
    stop_at_every_write(names, fresh_folder, command, dead, check)


def test_a_compression_stopped_at_any_write_compresses_again_to_the_uninterrupted_result(
        tmp_path, monkeypatch, tiny_cifar):
    config = write_tiny_config(str(tmp_path), tiny_cifar, deterministic=True, max_epoch=1)
    monkeypatch.chdir(tmp_path)
    assert train("--config", config, "-o", "base") == 0
    dead = ended_pid()

    def fresh_folder(name):
        shutil.copytree(tmp_path / "train_log.base", tmp_path / name / RUN)
        monkeypatch.chdir(tmp_path / name)
        return tmp_path / name
    command = functools.partial(compress, "--dir", RUN, "--step", 3, "--check-batches", 1)
    names = count_writes(fresh_folder("reference"), command, dead, (
        "checkpoint write", "replace compressed_model_3.data", "replace compressed_model_3.index",
        "open .compressed_model_3.cfg", "replace compressed_model_3.cfg"))
    expected_cfg, expected = (tmp_path / "reference" / RUN / "compressed_model_3.cfg").read_text(), \
        compressed_weights(tmp_path / "reference" / RUN)

    def check(run_dir, stopped, where):
        assert (run_dir / "compressed_model_3.cfg").read_text() == expected_cfg, where
        assert_same_values(compressed_weights(run_dir), expected)
        # Weights an interrupted publish left without their .cfg are removed by design.
        assert_nothing_else_touched(stopped, files(run_dir), [n for n in stopped if n.startswith("compressed_model_3.")])
    stop_at_every_write(names, fresh_folder, command, dead, check)


def compressed_weights(run_dir):
    reader = tf.train.load_checkpoint(str(run_dir / "compressed_model_3"))
    return {key: reader.get_tensor(key) for key in reader.get_variable_to_shape_map()}
