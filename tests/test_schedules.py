"""The adaptive learning rate (docs/original.md §5): lr traces epoch by epoch and restart epochs,
written out by hand from the original's tables and tensorpack's timing (a point (e, v) is in
force from epoch e + 1)."""
import numpy as np
import pytest

from epsilon_resnet import config as config_lib
from epsilon_resnet.schedules import AdaptiveLearningRate, piecewise, whole_blocks

CIFAR_I = [(0, 0.1), (82, 0.01), (123, 0.001), (300, 0.0002)]
CIFAR_R = [(0, 0.1), (41, 0.01), (61, 0.001), (150, 0.0002)]
SVHN_I = [(1, 0.1), (20, 0.01), (28, 0.001), (50, 0.0001)]
SVHN_R = [(1, 0.1), (10, 0.01), (14, 0.001), (25, 0.0001)]
IMAGENET = [(0, 0.1), (30, 0.01), (60, 0.001), (85, 1e-4), (95, 1e-5)]

# float32 moving averages of k blocks closed for good (0.99999946 per block; see whole_blocks)
ONE, TWO, THREE = 0.99999946, 1.99999893, 2.9999984


def table(segments, epochs):
    """[(first epoch, lr), ...] written by hand → the lr of every epoch 1..epochs."""
    lrs = []
    for epoch in range(1, epochs + 1):
        lrs.append([lr for first, lr in segments if first <= epoch][-1])
    return lrs


def trace(initial, restart, history, epochs, last_k=1):
    """lr in force in each epoch 1..epochs, given discarded_cnt at the end of each epoch."""
    policy = AdaptiveLearningRate(initial, restart, threshold=1, last_k=last_k)
    lr, lrs = policy.lr_at(1), []
    for epoch in range(1, epochs + 1):
        lrs.append(lr)
        assert policy.lr_at(epoch) == lr  # the callback sets lr_at(epoch) at each epoch start
        new = policy.after_epoch(epoch, [history(e) for e in range(1, epoch + 1)])
        lr = lr if new is None else new
    return lrs


def restarts(history, last_k=1):
    """The epochs after which the CIFAR policy restarts, for end-of-epoch discarded_cnt values."""
    policy, epochs = AdaptiveLearningRate(CIFAR_I, CIFAR_R, threshold=1, last_k=last_k), []
    for epoch in range(1, len(history) + 1):
        policy.after_epoch(epoch, history[:epoch])
        if policy.last_restart == epoch:
            epochs.append(epoch)
    return epochs


def from_epoch(first, count):
    """discarded_cnt that reads `count` from the end of epoch `first` on, 0 before."""
    return lambda epoch: count if epoch >= first else 0.0


def test_a_point_is_in_force_from_the_epoch_after_it():
    points = [(0, "a"), (3, "b"), (5, "c")]
    assert [piecewise(points, e, "default") for e in range(1, 8)] == ["a", "a", "a", "b", "b", "c", "c"]
    assert [piecewise([(150, 2.5)], e, 0.0) for e in (1, 150, 151)] == [0.0, 0.0, 2.5]


def test_cifar_without_restart_is_schedule_i():
    assert trace(CIFAR_I, CIFAR_R, lambda e: 0.0, 400) == table(
        [(1, 0.1), (83, 0.01), (124, 0.001), (301, 0.0002)], 400)


def test_cifar_one_restart_is_r_shifted_by_the_epoch():
    # A block closes in epoch 100: 0.1 from 101, R's 0.01 from 100+42, 0.001 from 162, 0.0002 from 251.
    lrs = trace(CIFAR_I, CIFAR_R, from_epoch(100, ONE), 300)
    assert lrs == table([(1, 0.1), (83, 0.01), (101, 0.1), (142, 0.01), (162, 0.001), (251, 0.0002)], 300)


def test_cifar_block_closing_in_the_last_steps_restarts_one_epoch_later():
    # Its average reads 0.6 at the end of epoch 50 and has settled by the end of epoch 51.
    history = lambda e: {50: 0.6}.get(e, ONE if e > 50 else 0.0)  # noqa: E731
    lrs = trace(CIFAR_I, CIFAR_R, history, 200)
    assert lrs == table([(1, 0.1), (52, 0.1), (93, 0.01), (113, 0.001), (202, 0.0002)], 200)


def test_cifar_two_restarts():
    history = lambda e: TWO if e >= 50 else ONE if e >= 10 else 0.0  # noqa: E731
    lrs = trace(CIFAR_I, CIFAR_R, history, 260)
    assert lrs == table([(1, 0.1), (11, 0.1), (51, 0.1), (92, 0.01), (112, 0.001), (201, 0.0002)], 260)


def test_svhn_without_restart():
    assert trace(SVHN_I, SVHN_R, lambda e: 0.0, 60) == table([(1, 0.1), (21, 0.01), (29, 0.001), (51, 0.0001)], 60)


def test_svhn_one_restart():
    # Restart after epoch 25: 0.1 from 26, 0.01 from 25+11, 0.001 from 40, 0.0001 from 51.
    lrs = trace(SVHN_I, SVHN_R, from_epoch(25, ONE), 70)
    assert lrs == table([(1, 0.1), (21, 0.01), (26, 0.1), (36, 0.01), (40, 0.001), (51, 0.0001)], 70)


def test_svhn_two_restarts():
    history = lambda e: TWO if e >= 30 else ONE if e >= 5 else 0.0  # noqa: E731
    lrs = trace(SVHN_I, SVHN_R, history, 70)
    assert lrs == table([(1, 0.1), (16, 0.01), (20, 0.001), (31, 0.1), (41, 0.01), (45, 0.001), (56, 0.0001)], 70)


def test_standard_schedule_without_restart_table_ignores_discarding():
    assert trace(IMAGENET, None, lambda e: float(e), 110) == table(
        [(1, 0.1), (31, 0.01), (61, 0.001), (86, 1e-4), (96, 1e-5)], 110)


@pytest.mark.parametrize("history, expected", [
    ([0, 0, 0, ONE, ONE, ONE], [4]),                      # a block closes early in epoch 4
    ([0, 0, 0, 0.6, ONE, ONE], [5]),                      # ... in the last steps of epoch 4
    ([0, ONE, TWO, THREE, THREE], [2, 3, 4]),             # one more block each epoch, float32 stall
    ([0, 0, TWO, TWO, TWO], [3]),                         # two blocks in the same epoch: one restart
    ([THREE, THREE, 4.0, 4.0], [3]),                      # 3 → 4 exactly: counted once
    ([0, ONE, ONE, 0.3, 0, 0, 0.7, ONE, ONE], [2, 8]),    # a block reopens (no restart), closes again
    ([0, 0.4, 0.8, 0.4, 0, 0.9, 0.5], []),                # a block that never settles closed
])
def test_every_newly_discarded_block_restarts_exactly_once(history, expected):
    assert restarts(history) == expected


def test_restart_needs_last_k_epochs_since_the_previous_one():
    # last_k=2: window of 3 values; epoch 10 ([0,0,1]) restarts; 11 is 1 < 2 epochs later;
    # 12 ([1,2,2]) restarts; 13 is too soon; 14 ([2,2,3]) restarts.
    history = [0] * 9 + [ONE, TWO, TWO, TWO, THREE]
    assert restarts(history, last_k=2) == [10, 12, 14]


def test_whole_blocks_forgives_the_float32_stall_only():
    assert [whole_blocks(x) for x in (0.0, 0.6, 0.998, ONE, TWO, 4.0, 375 * ONE)] == [0, 0, 0, 1, 2, 4, 375]


def test_state_round_trip_continues_the_same_trace():
    policy = AdaptiveLearningRate(CIFAR_I, CIFAR_R)
    history = [from_epoch(10, ONE)(e) for e in range(1, 13)]
    for epoch in range(1, 13):
        policy.after_epoch(epoch, history[:epoch])
    resumed = AdaptiveLearningRate(CIFAR_I, CIFAR_R)
    resumed.load_state(policy.state())
    assert (resumed.lr_at(51), resumed.lr_at(52), resumed.last_restart) == (0.1, 0.01, 10)


@pytest.mark.parametrize("name, initial, restart", [("cifar10", CIFAR_I, CIFAR_R), ("cifar100", CIFAR_I, CIFAR_R),
                                                    ("svhn", SVHN_I, SVHN_R), ("imagenet", IMAGENET, None)])
def test_shipped_configs_hold_the_original_tables(name, initial, restart):
    train = config_lib.shipped(name).train
    assert [tuple(p) for p in train.lr_schedule] == initial
    assert (None if train.lr_restart_schedule is None else [tuple(p) for p in train.lr_restart_schedule]) == restart
    if restart is not None:
        assert (train.lr_restart_threshold, train.lr_restart_last_k) == (1, 1)


def test_shipped_cifar_weight_decay_is_the_original():
    train = config_lib.shipped("cifar10").train
    assert (train.weight_decay, train.weight_decay_rate, train.weight_decay_steps, train.batch_size) == (
        0.0002, 0.2, 480000, 128)


def original_discarded_cnt(counts_per_epoch, steps_per_epoch=390, decay=0.95):
    """The original's discarded_cnt at each epoch end: ONE float32 moving average (TF1's
    shadow −= (shadow − x)·(1 − d), tensorpack's d = min(decay, (1 + t)/(10 + t))) of the
    per-step count of closed blocks, here `counts_per_epoch[e]` on every step of epoch e + 1."""
    shadow, one, ends, t = np.float32(0), np.float32(1), [], 0
    for count in counts_per_epoch:
        for _ in range(steps_per_epoch):
            d = min(np.float32(decay), np.float32(1 + t) / np.float32(10 + t))
            shadow = np.float32(shadow - np.float32((shadow - np.float32(count)) * (one - d)))
            t += 1
        ends.append(float(shadow))
    return ends


def test_original_float32_stall_restarts_only_some_single_closures():
    """One more block closed in each of epochs 2..18: the original's rule (a rise >= 1 between
    two epoch-end values, compared as Python floats) fires for exactly the closures of
    docs/original.md §5's table; whole blocks fire for every one of them."""
    history = original_discarded_cnt(range(18))   # epoch e ends with e − 1 blocks closed
    rises_to_one = {k for k in range(17) if history[k + 1] - history[k] >= 1}
    assert rises_to_one == {3, 5, 6, 7, 9, 10, 11, 12, 13, 14, 15}   # k → k+1 reaches 1
    assert set(range(17)) - rises_to_one == {0, 1, 2, 4, 8, 16}        # ... falls short
    assert restarts(history) == list(range(2, 19))  # the project: one restart per closure
