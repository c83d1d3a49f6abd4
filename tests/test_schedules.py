"""The adaptive learning rate (SPEC §5): lr traces epoch by epoch, written out by hand from the spec."""
import pytest

from epsilon_resnet import config as config_lib
from epsilon_resnet.schedules import AdaptiveLearningRate, piecewise

CIFAR_I = [(0, 0.1), (82, 0.01), (123, 0.001), (300, 0.0002)]
CIFAR_R = [(0, 0.1), (41, 0.01), (61, 0.001), (150, 0.0002)]
SVHN_I = [(1, 0.1), (20, 0.01), (28, 0.001), (50, 0.0001)]
SVHN_R = [(1, 0.1), (10, 0.01), (14, 0.001), (25, 0.0001)]


def trace(initial, restart, discarded, epochs):
    """lr used in each epoch 1..epochs, given discarded_cnt at the end of each epoch."""
    policy = AdaptiveLearningRate(initial, restart, threshold=1, last_k=1)
    lr, lrs, history = policy.lr_at(1), [], []
    for epoch in range(1, epochs + 1):
        lrs.append(lr)
        history.append(discarded(epoch))
        new = policy.after_epoch(epoch, history)
        lr = lr if new is None else new
    return lrs


def expected(segments, epochs):
    """[(first epoch, lr), ...] → the lr of every epoch 1..epochs."""
    return [piecewise(segments, e) for e in range(1, epochs + 1)]


def step_at(*epochs_and_counts):
    """discarded_cnt as a step function: count c from epoch e on."""
    return lambda epoch: piecewise(list(epochs_and_counts), epoch, default=0.0)


def test_cifar_without_restart_is_the_standard_schedule():
    assert trace(CIFAR_I, CIFAR_R, lambda e: 0.0, 400) == expected(
        [(1, 0.1), (82, 0.01), (123, 0.001), (300, 0.0002)], 400)


def test_cifar_one_restart():
    # A block is lost during epoch 100: lr 0.1 from epoch 101, 0.01 from 141, 0.001 from 161, 0.0002 from 250.
    lrs = trace(CIFAR_I, CIFAR_R, step_at((100, 1.0)), 300)
    assert lrs == expected([(1, 0.1), (82, 0.01), (101, 0.1), (141, 0.01), (161, 0.001), (250, 0.0002)], 300)


def test_cifar_two_restarts_and_slow_rise_below_threshold():
    # Epoch 10: +1 (restart); 20..23: +0.4 a time (never +1 within last_k+1 = 2 epochs); 50: +2 (restart).
    counts = step_at((10, 1.0), (20, 1.4), (21, 1.8), (22, 2.2), (23, 2.6), (50, 4.6))
    lrs = trace(CIFAR_I, CIFAR_R, counts, 260)
    assert lrs == expected([(1, 0.1), (11, 0.1), (51, 0.1), (91, 0.01), (111, 0.001), (200, 0.0002)], 260)


def test_restart_needs_last_k_epochs_since_the_previous_one():
    policy = AdaptiveLearningRate(CIFAR_I, CIFAR_R, threshold=1, last_k=2)
    history, restarts = [], []
    for epoch, count in enumerate([0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 2, 2, 2, 3], start=1):
        history.append(count)
        policy.after_epoch(epoch, history)
        if policy.last_restart == epoch:
            restarts.append(epoch)
    # last_k=2: window of 3 values; epoch 10 ([0,0,1]) restarts; 11 is 1 < 2 epochs later; 12 ([1,2,2]) restarts;
    # 14 is 2 epochs after 12 and [2,2,3] rose by 1.
    assert restarts == [10, 12, 14]


def test_svhn_without_restart():
    assert trace(SVHN_I, SVHN_R, lambda e: 0.0, 60) == expected([(1, 0.1), (20, 0.01), (28, 0.001), (50, 0.0001)], 60)


def test_svhn_one_restart():
    lrs = trace(SVHN_I, SVHN_R, step_at((25, 1.0)), 70)
    # Restart after epoch 25: R shifted by 25 → 0.1 at 26, 0.01 at 35, 0.001 at 39, 0.0001 at 50.
    assert lrs == expected([(1, 0.1), (20, 0.01), (26, 0.1), (35, 0.01), (39, 0.001), (50, 0.0001)], 70)


def test_svhn_two_restarts():
    lrs = trace(SVHN_I, SVHN_R, step_at((5, 1.0), (30, 2.0)), 70)
    assert lrs == expected([(1, 0.1), (15, 0.01), (19, 0.001), (30, 0.0001), (31, 0.1), (40, 0.01),
                            (44, 0.001), (55, 0.0001)], 70)


def test_standard_schedule_without_restart_table_ignores_discarding():
    imagenet = [(0, 0.1), (30, 0.01), (60, 0.001), (85, 1e-4), (95, 1e-5)]
    assert trace(imagenet, None, lambda e: float(e), 110) == expected(
        [(1, 0.1), (30, 0.01), (60, 0.001), (85, 1e-4), (95, 1e-5)], 110)


def test_state_round_trip_continues_the_same_trace():
    counts = step_at((10, 1.0))
    policy = AdaptiveLearningRate(CIFAR_I, CIFAR_R)
    history = [counts(e) for e in range(1, 13)]
    for epoch in range(1, 13):
        policy.after_epoch(epoch, history[:epoch])
    resumed = AdaptiveLearningRate(CIFAR_I, CIFAR_R)
    resumed.load_state(policy.state())
    assert resumed.lr_at(40) == 0.1 and resumed.lr_at(51) == 0.01 and resumed.last_restart == 10


@pytest.mark.parametrize("name, initial, restart", [("cifar10", CIFAR_I, CIFAR_R), ("cifar100", CIFAR_I, CIFAR_R)])
def test_shipped_configs_hold_the_spec_tables(name, initial, restart):
    train = config_lib.shipped(name).train
    assert [tuple(p) for p in train.lr_schedule] == initial
    assert [tuple(p) for p in train.lr_restart_schedule] == restart
    assert (train.lr_restart_threshold, train.lr_restart_last_k, train.batch_size) == (1, 1, 128)
    assert (train.weight_decay, train.weight_decay_rate, train.weight_decay_steps) == (0.0002, 0.2, 480000)
