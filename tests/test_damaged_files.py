"""A run folder's files lost, damaged or unwritable: a run's checkpoints are found from the
model-<step> files (the `checkpoint` file is a hint), nothing is written twice, and every
such fault is one line `error: ...`, exit 1, never a traceback."""
import errno
import functools
import json
import os
import shutil
import signal

import pytest
import tensorflow as tf
import yaml

from epsilon_resnet import compression
from epsilon_resnet.cli import cifar_compressed_main, cifar_main, compress_main
from cli_helpers import exit_code, snapshot, write_tiny_config
from test_resilience import plot_runs_module

train = functools.partial(exit_code, cifar_main)
compress = functools.partial(exit_code, compress_main)
evaluate = functools.partial(exit_code, cifar_compressed_main)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_cifar):
    """(folder, config path) where train_log.base holds a 2-epoch tiny run: model-3, model-6."""
    folder = tmp_path_factory.mktemp("trained")
    config = write_tiny_config(str(folder), tiny_cifar)
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        assert train("--config", config, "-o", "base") == 0
    return folder, config


def copy_run(trained, tmp_path, name):
    shutil.copytree(trained[0] / "train_log.base", tmp_path / f"train_log.{name}")
    return tmp_path / f"train_log.{name}"


def metrics_epochs(run_dir):
    """The epoch of every line of metrics.jsonl, duplicates included."""
    return [json.loads(line)["epoch"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def checkpoint_files(run_dir):
    return {name: hash for name, hash in snapshot(run_dir).items() if name.startswith("model-")}


@pytest.mark.parametrize("hint, said", [
    (None, "train_log.{}/checkpoint is missing: resuming from the newest complete checkpoint found, "
           "train_log.{}/model-6"),
    ("", "train_log.{}/checkpoint cannot be read (empty or not a CheckpointState): resuming from the newest "
         "complete checkpoint found, train_log.{}/model-6"),
    ('model_checkpoint_path: "model-3"\n', "train_log.{}/checkpoint names model-3, but the newest complete "
                                           "checkpoint is train_log.{}/model-6: resuming from it"),
])
def test_a_lost_or_wrong_checkpoint_file_resumes_from_the_newest_checkpoint_and_says_so(
        trained, tmp_path, monkeypatch, capsys, hint, said):
    monkeypatch.chdir(tmp_path)
    name = "missing" if hint is None else "empty" if not hint else "wrong"
    run_dir = copy_run(trained, tmp_path, name)
    os.remove(run_dir / "checkpoint")
    if hint is not None:
        (run_dir / "checkpoint").write_text(hint)
    before = checkpoint_files(run_dir)
    capsys.readouterr()
    assert train("--config", trained[1], "-o", name, "--max-epoch", 3) == 0
    out = capsys.readouterr().out
    assert said.format(name, name) in out and "from global step 6" in out
    assert said.format(name, name) in (run_dir / "log.log").read_text()
    assert metrics_epochs(run_dir) == [1, 2, 3]
    after = checkpoint_files(run_dir)
    assert {k: after[k] for k in before} == before and "model-9.index" in after  # model-3, model-6 untouched
    assert tf.train.latest_checkpoint(str(run_dir)).endswith("model-9")


def test_a_damaged_newest_checkpoint_stops_the_resume_with_one_line(trained, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    run_dir = copy_run(trained, tmp_path, "cut")
    data = run_dir / "model-6.data-00000-of-00001"
    data.write_bytes(data.read_bytes()[:1000])  # a truncated newest .data
    before = snapshot(run_dir)
    assert train("--config", trained[1], "-o", "cut", "--max-epoch", 3) == 1
    assert capsys.readouterr().err == (
        "error: damaged checkpoint train_log.cut/model-6 (Read less bytes than requested); the newest complete checkpoint "
        "is train_log.cut/model-3. A checkpoint is never overwritten: move the damaged one's files out of "
        "train_log.cut to resume from train_log.cut/model-3\n")
    assert snapshot(run_dir) == before
    for name in ("model-6.index", "model-6.data-00000-of-00001"):
        os.rename(run_dir / name, tmp_path / name)
    assert train("--config", trained[1], "-o", "cut", "--max-epoch", 3) == 0
    assert metrics_epochs(run_dir) == [1, 2, 3]  # epoch 2 trained again, its record not appended twice


@pytest.fixture(scope="module")
def compressed(trained):
    """train_log.base compressed at step 6, in a copy: (folder, run folder)."""
    folder = trained[0] / "compressed"
    shutil.copytree(trained[0] / "train_log.base", folder / "train_log.c")
    assert compress("--dir", folder / "train_log.c", "--step", 6, "--check-batches", 1) == 0
    return folder, folder / "train_log.c"


def test_a_full_disk_during_compression_is_one_line_and_leaves_nothing(trained, tmp_path, capsys):
    run_dir = copy_run(trained, tmp_path, "full")
    before = snapshot(run_dir)
    write = tf.train.Checkpoint.write

    def full(self, prefix, *args, **kwargs):
        if "compressed_model" in prefix:
            raise tf.errors.ResourceExhaustedError(None, None, f"{prefix}_temp/part-00000; No space left on device")
        return write(self, prefix, *args, **kwargs)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(tf.train.Checkpoint, "write", full)
        assert compress("--dir", run_dir, "--step", 3, "--check-batches", 1) == 1
    assert capsys.readouterr().err == f"error: {run_dir}/compressed_model_3: No space left on device (ENOSPC)\n"
    assert snapshot(run_dir) == before
    assert not [name for name in os.listdir(run_dir) if "compressed_model" in name]  # nor a temporary


def test_export_into_a_read_only_file_system_is_one_line(compressed, tmp_path, capsys):
    cfg = compressed[1] / "compressed_model_6.cfg"
    mkdir = os.mkdir

    def read_only(path, *args, **kwargs):  # as a read-only mount does (chmod does not stop root)
        if str(path).startswith(str(tmp_path)):
            raise OSError(errno.EROFS, "Read-only file system", path)
        return mkdir(path, *args, **kwargs)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(os, "mkdir", read_only)
        assert evaluate("--cfg", cfg, "--export", tmp_path / "saved") == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: {tmp_path}/.saved.epsilon_resnet-tmp.") and err.endswith(
        ": Read-only file system (EROFS)\n"), err
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("section, change, said", [
    ("architecture", {"image_shape": [0, 32, 3]}, "architecture: image_shape[0] must be a whole number >= 1, got 0"),
    ("architecture", {"image_shape": [32, 32]}, "architecture: image_shape must be [height, width, channels]"),
    (None, {"num_classes": 0}, "expected num_classes >= 1"),
])
def test_a_cfg_with_an_impossible_shape_is_one_line(compressed, tmp_path, capsys, section, change, said):
    raw = yaml.safe_load((compressed[1] / "compressed_model_6.cfg").read_text())
    (raw[section] if section else raw).update(change)
    raw["weights"] = str(compressed[1] / "compressed_model_6")
    (tmp_path / "bad.cfg").write_text(yaml.safe_dump(raw))
    assert evaluate("--cfg", tmp_path / "bad.cfg") == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: {tmp_path}/bad.cfg: ") and said in err and err.count("\n") == 1, err


def test_a_missing_weights_file_of_a_compressed_network_is_named_missing(compressed, tmp_path, capsys):
    folder = tmp_path / "c"
    shutil.copytree(compressed[1], folder)
    os.remove(folder / "compressed_model_6.data-00000-of-00001")
    assert evaluate("--cfg", folder / "compressed_model_6.cfg") == 1
    assert capsys.readouterr().err == (
        f"error: the checkpoint files of {folder}/compressed_model_6 are damaged ({folder}/compressed_model_6.data-"
        f"00000-of-00001 is missing): expected {folder}/compressed_model_6.index and its .data-* files complete, as "
        f"they were written; use another step's checkpoint\n")


def test_plot_runs_out_naming_a_file_is_one_line(trained, tmp_path, capsys):
    (tmp_path / "figures").write_text("a file")
    with pytest.raises(SystemExit) as exit_:
        plot_runs_module().main([str(trained[0] / "train_log.base"), "--out", str(tmp_path / "figures")])
    assert exit_.value.code == f"error: --out {tmp_path}/figures is a file; expected a folder for the PNGs"
    assert (tmp_path / "figures").read_text() == "a file"


@pytest.mark.parametrize("damage", ["folder", "binary", "not a record", "dangling symlink", "unreadable"])
def test_a_damaged_metrics_file_stops_compression_with_one_line(trained, tmp_path, capsys, damage):
    run_dir = copy_run(trained, tmp_path, "m")
    path = run_dir / "metrics.jsonl"
    os.remove(path)
    if damage == "folder":
        path.mkdir()
    elif damage == "binary":
        path.write_bytes(b'{"epoch": 1}\n\xff\xfe\n')
    elif damage == "not a record":
        path.write_text('{"epoch": 1}\n[1, 2]\n')
    elif damage == "dangling symlink":
        os.symlink(tmp_path / "gone", path)
    else:
        path.write_text('{"epoch": 1}\n')
    opened = open

    def unreadable(file, *args, **kwargs):
        if str(file) == str(path):
            raise PermissionError(errno.EACCES, "Permission denied", str(file))
        return opened(file, *args, **kwargs)
    with pytest.MonkeyPatch.context() as patch:
        if damage == "unreadable":
            patch.setattr("builtins.open", unreadable)
        assert compress("--dir", run_dir, "--step", 3, "--check-batches", 1) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    assert "metrics.jsonl" in err or "looked for a run folder" in err


def test_sigterm_during_the_compression_check_stops_it_and_writes_nothing(trained, tmp_path, capsys):
    run_dir = copy_run(trained, tmp_path, "s")
    before = snapshot(run_dir)
    batches = compression.run_batches

    def signalled(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)  # as the first batch is checked
        yield from batches(*args, **kwargs)

    def unhandled(signum, frame):
        raise AssertionError("compressModel left SIGTERM to its default action (the process would be killed)")
    previous = signal.signal(signal.SIGTERM, unhandled)
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(compression, "run_batches", signalled)
            assert compress("--dir", run_dir, "--step", 3, "--check-batches", 2) == 1
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert "error: stopped by SIGTERM during the check of step 3; nothing was written: run compressModel again\n" \
        in capsys.readouterr().err
    assert snapshot(run_dir) == before
