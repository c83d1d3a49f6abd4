"""Exact resume: a run stopped at an epoch end or mid-epoch (SIGINT) and resumed equals one that never
stopped; --resume, kept checkpoints and the seekable training stream."""
import functools
import json
import os
import signal

import keras
import numpy as np
import pytest
import tensorflow as tf

from epsilon_resnet import config as config_lib
from epsilon_resnet import data, run_folder, training
from epsilon_resnet.errors import Interrupted
from epsilon_resnet.run_folder import read_metrics
from epsilon_resnet.cli import cifar_main
from cli_helpers import exit_code, write_tiny_config

run = functools.partial(exit_code, cifar_main)
write_config = functools.partial(write_tiny_config, max_epoch=1)

STEPS = 3  # per epoch


@pytest.fixture(scope="module", autouse=True)
def op_determinism_off_afterwards():
    """train.deterministic switches op determinism on for the whole process; switch it off for later tests."""
    yield
    from tensorflow.python.framework import config as tf_config  # the switch back has no public name

    tf_config.disable_op_determinism()


def restart_config(data_dir, **train):
    """ε = 0 in epoch 1 (nothing discarded), then huge from epoch 2 (the point after epoch 1): every
    block closes in epoch 2 (moving-average decay 0: the averages are the last step's values), and
    the learning rate restarts after epoch 2: lr 0.05, 0.05, 0.08, 0.08 (R's 0.03 would start at 5)."""
    return config_lib.from_dict({
        "data": {"name": "cifar10", "dir": data_dir},
        "model": {"n": 1, "epsilon": 2.5, "epsilon_schedule": [[0, 0.0], [1, 1000.0]], "gate_ema_decay": 0.0},
        "train": {"batch_size": 8, "eval_batch_size": 8, "max_epoch": 4, "steps_per_epoch": STEPS, "seed": 0,
                  "deterministic": True, "keep_checkpoints": 10, "lr_schedule": [[0, 0.05], [3, 0.02]],
                  "lr_restart_schedule": [[0, 0.08], [2, 0.03]], **train}})


class SignalAt(keras.callbacks.Callback):
    """Sends this process SIGINT, as Ctrl-C would, once the given global step is done."""

    def __init__(self, step):
        super().__init__()
        self.step = step

    def on_train_batch_end(self, batch, logs=None):
        if int(self.model.optimizer.iterations.numpy()) == self.step:
            os.kill(os.getpid(), signal.SIGINT)


def checkpoint_values(path):
    """Every tensor of a checkpoint (weights, optimizer slots, step, data seed, training state) but save_counter
    and the rotation's state (the times of the saves)."""
    reader = tf.train.load_checkpoint(path)
    values = {}
    for key in reader.get_variable_to_shape_map():
        if key.startswith(("save_counter", "rotation/")) or key == "_CHECKPOINTABLE_OBJECT_GRAPH":
            continue
        value = reader.get_tensor(key)
        values[key] = json.loads(value) if isinstance(value, bytes) else value
    return values


def assert_same_records(first, second):
    assert [r["epoch"] for r in first] == [r["epoch"] for r in second]
    for a, b in zip(first, second):
        assert set(a) == set(b)
        for key in a:
            np.testing.assert_allclose(a[key], b[key], rtol=1e-5, atol=1e-6, err_msg=f"epoch {a['epoch']} {key}")


@pytest.fixture
def ctrl_c_interrupts():
    """SIGINT as in a terminal, even where the tests were started ignoring it (as a background job)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_stopped_and_resumed_runs_equal_a_straight_run(tmp_path, tiny_cifar, ctrl_c_interrupts):
    config = restart_config(tiny_cifar)
    straight = str(tmp_path / "straight")
    training.train_and_evaluate(config_lib.replace(config, **{"train.max_epoch": 5}), straight, progress=False)
    records = read_metrics(straight)
    assert [r["learning_rate"] for r in records][:4] == pytest.approx([0.05, 0.05, 0.08, 0.08]), "no lr restart"
    assert records[1]["discarded_cnt"] >= records[0]["discarded_cnt"] + 1

    stopped = str(tmp_path / "stopped")
    training.train_and_evaluate(config_lib.replace(config, **{"train.max_epoch": 1}), stopped, progress=False)
    # Ctrl-C after step 7 reaches the loop with step 8: a checkpoint mid-epoch 3, just after the restart.
    with pytest.raises(Interrupted, match=r"SIGINT at global step 8 \(step 2 of epoch 3\)"):
        training.train_and_evaluate(config, stopped, progress=False, extra_callbacks=[SignalAt(7)])
    assert tf.train.latest_checkpoint(stopped).endswith("model-8")
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handler is put back
    # Stopped on the last step of epoch 4: the resumed run has only that epoch's end to do.
    with pytest.raises(Interrupted, match=r"global step 12 \(step 3 of epoch 4\)"):
        training.train_and_evaluate(config, stopped, resume=True, progress=False, extra_callbacks=[SignalAt(11)])
    training.train_and_evaluate(config, stopped, resume=True, progress=False)
    # model-12 stays the checkpoint of the stop (a checkpoint is never overwritten): epoch 4's end is redone from it.
    assert checkpoint_values(os.path.join(stopped, "model-12"))["state/.ATTRIBUTES/py_state"]["epoch"] == 3
    training.train_and_evaluate(config_lib.replace(config, **{"train.max_epoch": 5}), stopped, resume=True,
                                progress=False)

    expected, got = (checkpoint_values(os.path.join(folder, "model-15")) for folder in (straight, stopped))
    state = [values.pop("state/.ATTRIBUTES/py_state") for values in (expected, got)]
    assert state[0] == state[1]  # lr schedule, last restart, discarded_cnt history, epoch
    assert set(expected) == set(got)
    for key in expected:  # bit for bit: train.deterministic with a seed
        np.testing.assert_array_equal(got[key], expected[key], err_msg=key)
    # the history holds the count before epoch 1 and at the end of each epoch
    assert state[0]["lr"]["last_restart"] == 2 and len(state[0]["lr"]["history"]) == 6
    assert_same_records(records, read_metrics(stopped))
    lines = [open(os.path.join(folder, "metrics.jsonl")).read().count("\n") for folder in (straight, stopped)]
    assert lines == [5, 5]  # an interrupted epoch writes its record once, when it ends


def test_resume_needs_a_run_folder_with_a_checkpoint(tmp_path, monkeypatch, capsys, tiny_cifar):
    monkeypatch.chdir(tmp_path)
    config = write_config(str(tmp_path), tiny_cifar)
    assert run("--config", config, "-o", "new", "--resume") == 1
    assert "train_log.new does not exist" in capsys.readouterr().err
    assert not (tmp_path / "train_log.new").exists()
    (tmp_path / "train_log.empty").mkdir()
    assert run("--config", config, "-o", "empty", "--resume") == 1
    assert "train_log.empty has no checkpoint" in capsys.readouterr().err
    assert os.listdir(tmp_path / "train_log.empty") == []
    assert run("--config", config, "-o", "r") == 0
    assert run("--config", config, "-o", "r", "--resume", "--load", "train_log.r/model-3") == 1
    assert "give only one of them" in capsys.readouterr().err
    assert run("--config", config, "-o", "r", "--resume", "--max-epoch", "2") == 0
    assert [r["global_step"] for r in read_metrics("train_log.r")] == [3, 6]


def test_last_k_checkpoints_plus_named_steps_are_kept(tmp_path, monkeypatch, capsys, tiny_cifar):
    monkeypatch.chdir(tmp_path)
    config = write_config(str(tmp_path), tiny_cifar, max_epoch=4)
    assert run("--config", config, "-o", "k", "--keep-checkpoints", "2", "--keep-step", "3", "--keep-step", "6") == 0
    run_dir = tmp_path / "train_log.k"
    assert sorted(f for f in os.listdir(run_dir) if f.endswith(".index")) == ["model-12.index", "model-9.index"]
    assert sorted(os.listdir(run_dir / "kept")) == ["model-3.data-00000-of-00001", "model-3.index",
                                                    "model-6.data-00000-of-00001", "model-6.index"]
    assert run_folder.checkpoint_path(str(run_dir), 3) == str(run_dir / "kept" / "model-3")
    assert run_folder.checkpoint_path(str(run_dir), 9) == str(run_dir / "model-9")
    trainer = training.Trainer(config_lib.load(config), str(run_dir))
    trainer.resume(run_folder.checkpoint_path(str(run_dir), 6))
    assert trainer.global_step == 6 and trainer.state.values["epoch"] == 2

    assert run("--config", config, "-o", "k2", "--keep-step", "4") == 1
    assert "[4] are not checkpoints this run will write" in capsys.readouterr().err
    assert run("--config", config, "-o", "k3", "--keep-checkpoints", "0") == 2
    assert "--keep-checkpoints: expected a whole number >= 1, got 0" in capsys.readouterr().err


def test_one_checkpoint_per_interval_is_kept_beyond_the_last_k(tmp_path, monkeypatch, tiny_cifar):
    """tensorpack's saver kept the last 10 checkpoints plus one every 30 minutes: with an interval
    shorter than an epoch every checkpoint is kept, with a long one only the last K."""
    monkeypatch.chdir(tmp_path)
    for name, minutes, expected in (("short", 1e-6, [3, 6, 9]), ("long", 30, [9])):
        config = write_config(str(tmp_path), tiny_cifar, max_epoch=3, keep_checkpoints=1,
                              keep_checkpoint_every_minutes=minutes)
        assert run("--config", config, "-o", name) == 0
        assert run_folder.steps_in(str(tmp_path / f"train_log.{name}")) == expected


@pytest.mark.parametrize("pipelines", [1, 2])
def test_training_stream_continues_from_any_step(tiny_cifar, pipelines):
    """The stream started at step k gives exactly the batches k, k+1, ... of the stream started at 0,
    across the reshuffle at each pass over the data (40 images, batches of 8: a pass is 5 steps)."""
    source = data.get_source("cifar10", tiny_cifar)

    def batches(start, count, pipeline):
        context = tf.distribute.InputContext(pipelines, pipeline, pipelines) if pipelines > 1 else None
        dataset = source.train_dataset(8, seed=3, input_context=context, start_step=start)
        return [(x.numpy(), y.numpy()) for x, y in dataset.take(count)]

    for pipeline in range(pipelines):
        straight = batches(0, 10, pipeline)
        for start in (1, 4, 7):
            for (x, y), (x0, y0) in zip(batches(start, 3, pipeline), straight[start:]):
                np.testing.assert_array_equal(x, x0)
                np.testing.assert_array_equal(y, y0)


class UnseekableSource(data.DataSource):
    """Examples 0..39 behind a shuffle buffer, as tfds records are: the stream cannot jump ahead."""

    def __init__(self):
        super().__init__("unseekable", 10, (32, 32, 3), 40, 0, np.zeros((32, 32, 3), np.float32), 1.0)

    def _train_examples(self, seed, shard):
        return tf.data.Dataset.range(40).repeat().shuffle(40, seed=seed).map(
            lambda i: (tf.fill([32, 32, 3], tf.cast(i, tf.uint8)), tf.cast(i % 10, tf.int32)))


def test_a_stream_that_cannot_seek_restarts_from_a_seed_derived_from_the_step():
    source = UnseekableSource()

    def first_images(start):
        images, _ = next(iter(source.train_dataset(8, seed=3, start_step=start)))
        return images.numpy()[:, 0, 0, 0].tolist()

    assert first_images(5) == first_images(5)  # reproducible ...
    assert first_images(5) not in (first_images(0), first_images(6))  # ... and not a replay of the run's start
