"""The run's callbacks on a tiny gated network whose gate averages are set by hand: the
learning-rate restarts read the gates at each epoch's end (docs/original.md §5), ε follows
its schedule, discarded_ratio counts over the gated blocks, the writers record the epoch."""
import dataclasses
import json
import logging

import keras
import numpy as np
import pytest
import tensorflow as tf

from epsilon_resnet import callbacks as cbs
from epsilon_resnet import gate, structures
from epsilon_resnet.run_folder import read_metrics
from epsilon_resnet.networks import build_resnet
from epsilon_resnet.structures import cifar_resnet
from epsilon_resnet.optimizers import TF1Momentum
from epsilon_resnet.schedules import DISCARDED_TOLERANCE, AdaptiveLearningRate, whole_blocks

ONE = 0.99999946  # a float32 is_discarded average of a block closed for good

# Two short schedules, so that a restart is visible within a few epochs.
INITIAL, RESTART = [(0, 0.1), (2, 0.01)], [(0, 0.2), (3, 0.02)]
# End-of-epoch is_discarded of the three gates, epochs 1..10: block 1 closes in the last steps
# of epoch 3 (0.6 at its end), block 2 early in epoch 8. The epoch means of the count (what
# the logs may hold) never rise by a whole block within two epochs.
GATE_VALUES = [[0, 0, 0], [0, 0, 0], [0.6, 0, 0]] + [[ONE, 0, 0]] * 4 + [[ONE, ONE, 0]] * 3
EPOCH_MEANS = [0, 0, 0.01, 0.95, ONE, ONE, ONE, 1.5, 2.0, 2.0]
# By hand: 0.1 in epochs 1-2, 0.01 in 3-4; restart after epoch 4 (block 1 whole): 0.2 from 5,
# R's 0.02 from 4+3+1 = 8; restart after epoch 8 (block 2): 0.2 from 9.
EXPECTED_LR = [0.1, 0.1, 0.01, 0.01, 0.2, 0.2, 0.2, 0.02, 0.2, 0.2]


@pytest.fixture(scope="module")
def model():
    """Three gated blocks res1.1, res2.0, res3.0; res1.0 is a discarded block's shortcut (no gate)."""
    architecture = dataclasses.replace(cifar_resnet(2, side_output=False, image_shape=(8, 8, 3)),
                                       removed_blocks=("res1.0", "res2.1", "res3.1"))
    return build_resnet(architecture, 10)


def set_gates(model, values):
    for g, value in zip(gate.gates_of(model), values):
        g.is_discarded.assign(value)


def run_epochs(model, setter, epochs, before=()):
    """Drive the callbacks as the training loop does; the lr in force in each epoch."""
    optimizer, lrs = setter.optimizer, []
    callbacks = keras.callbacks.CallbackList([*before, setter, cbs.GateMonitor()], model=model)
    for epoch in epochs:
        callbacks.on_epoch_begin(epoch)
        lrs.append(float(keras.ops.convert_to_numpy(optimizer.learning_rate)))
        set_gates(model, GATE_VALUES[epoch - 1])  # the epoch's steps leave the averages here
        callbacks.on_epoch_end(epoch, {"discarded_cnt": EPOCH_MEANS[epoch - 1]})
    return lrs


def new_setter():
    return cbs.LearningRateSetter(AdaptiveLearningRate(INITIAL, RESTART, threshold=1, last_k=1), TF1Momentum(0.1))


def test_discarded_ratio_is_the_count_over_the_gated_blocks(model):
    set_gates(model, [1.0, 0.0, 0.5])
    summary = cbs.gate_summary(model)
    assert [g.block for g in gate.gates_of(model)] == ["res1.1", "res2.0", "res3.0"]
    assert summary["discarded_cnt"] == pytest.approx(1.5)
    assert summary["discarded_ratio"] == pytest.approx(1.5 / 3)  # 3 gated blocks, not 4 units
    assert {k for k in summary if "/" in k} == {f"{b}/{s}" for b in ("res1.1", "res2.0", "res3.0")
                                                for s in structures.GATE_METRICS}


@pytest.mark.parametrize("monitor_first", [False, True])
def test_each_newly_discarded_block_restarts_once_whatever_the_logs_hold(model, monitor_first):
    before = [cbs.GateMonitor()] if monitor_first else []
    lrs = run_epochs(model, new_setter(), range(1, 11), before)
    assert lrs == pytest.approx(EXPECTED_LR)


def test_resumed_setter_continues_the_same_schedule(model):
    first = new_setter()
    lrs = run_epochs(model, first, range(1, 7))
    resumed = new_setter()
    resumed.load_state(json.loads(json.dumps(first.state())))  # checkpoints keep it as JSON
    lrs += run_epochs(model, resumed, range(7, 11))
    assert lrs == pytest.approx(EXPECTED_LR)


def test_epsilon_follows_its_schedule_from_the_epoch_after_each_point(model):
    scheduler = cbs.EpsilonScheduler([(1, 0.0), (3, 2.5)], default=1.0)
    callbacks = keras.callbacks.CallbackList([scheduler], model=model)
    seen = []
    for epoch in range(1, 6):
        callbacks.on_epoch_begin(epoch)
        seen.append([float(keras.ops.convert_to_numpy(g.epsilon)) for g in gate.gates_of(model)])
        assert gate.epsilon_of(model) == seen[-1][0]
    assert seen == [[e] * 3 for e in (1.0, 0.0, 0.0, 2.5, 2.5)]


def test_writers_record_the_epoch_with_the_gate_summary(model, tmp_path, caplog, monkeypatch):
    monkeypatch.setattr(logging.getLogger("epsilon_resnet"), "propagate", True)  # a run's set-up may stop it
    set_gates(model, [ONE, 0.0, 0.0])
    callbacks = keras.callbacks.CallbackList(
        [cbs.GateMonitor(), cbs.EpochLogger(), cbs.MetricsWriter(str(tmp_path / "metrics.jsonl"))], model=model)
    with caplog.at_level(logging.INFO, logger="epsilon_resnet"):
        callbacks.on_epoch_end(1, {"cost": np.float32(2.5), "global_step": 100.0})
    [record] = read_metrics(str(tmp_path))
    assert (record["epoch"], record["global_step"], record["cost"]) == (1, 100, 2.5)
    assert record["discarded_cnt"] == pytest.approx(ONE) and record["res1.1/is_discarded"] == pytest.approx(ONE)
    assert "epoch 1 done: cost=2.5" in caplog.text


def test_tolerance_covers_the_real_gates_float32_stall():
    """A gate closed for 600 steps: its is_discarded stalls where 375 of them still count whole."""
    layer = gate.StrictIdentity(epsilon=1.0, block="b")
    zeros = tf.zeros([2, 4, 4, 3])  # max|F| = 0 < ε: the gate is closed on every step

    @tf.function
    def steps():
        for _ in tf.range(600):
            layer(zeros, training=True)

    layer(zeros)  # build
    steps()
    stall = 1.0 - float(layer.is_discarded.numpy())
    assert 375 * stall < DISCARDED_TOLERANCE / 2
    assert whole_blocks(375 * (1.0 - stall)) == 375
