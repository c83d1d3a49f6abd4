"""Keras callbacks of an ε-ResNet run.

Epoch numbers passed to them count from 1, as in the original (tensorpack) and the tables of
docs/original.md §5. Scheduled values follow tensorpack's timing (epsilon_resnet.schedules):
they are set at the start of the epoch in which they are in force.
"""
import logging
import os

import keras
import numpy as np

from epsilon_resnet import gate, run_folder
from epsilon_resnet.schedules import AdaptiveLearningRate, epsilon_at, whole_blocks
from epsilon_resnet.structures import GATE_METRICS

logger = logging.getLogger("epsilon_resnet")


def gate_summary(model):
    """The gates' moving averages as they stand now (after the last step run), per block
    (`<block>/<stat>`), plus discarded_cnt, the sum of is_discarded, and discarded_ratio,
    that count over the number of gated blocks (a pruned network's shortcut-only units have
    no gate and do not count)."""
    gates = gate.gates_of(model)
    logs = {run_folder.block_metric(g.block, stat): float(getattr(g, stat).numpy())
            for g in gates for stat in GATE_METRICS}
    count = float(gate.discarded_count(gates))
    return {"discarded_cnt": count, "discarded_ratio": count / len(gates) if gates else 0.0, **logs}


class LearningRateSetter(keras.callbacks.Callback):
    """Applies an AdaptiveLearningRate policy to the optimizer (docs/original.md §5).

    At each epoch start it sets the lr the policy has in force for that epoch, which it adds
    to the epoch's logs as learning_rate; at each epoch end it reads discarded_cnt from the
    model's gates itself (`gate.discarded_count`: the value at the end of the epoch, whatever
    the epoch logs hold and wherever this callback is in the list) and lets the policy decide
    on a restart. The policy's state and the per-epoch history are
    what a checkpoint must keep (state/load_state) for a resumed run to restart the
    schedule exactly as before.
    """

    def __init__(self, policy: AdaptiveLearningRate, optimizer):
        super().__init__()
        self.policy, self.optimizer, self.history = policy, optimizer, []

    def on_train_begin(self, logs=None):
        # The count before the first epoch (0, or what a --load checkpoint had discarded) opens
        # the history, so a block closed in epoch 1 is newly discarded too: the original's
        # history began at epoch 1's end, so such a block never restarted the schedule.
        if not self.history:
            self.history.append(self.discarded_count())

    def on_epoch_begin(self, epoch, logs=None):
        self.optimizer.learning_rate = self.policy.lr_at(epoch)

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:  # the optimizer's value, as it holds it
            logs["learning_rate"] = float(keras.ops.convert_to_numpy(self.optimizer.learning_rate))
        self.history.append(self.discarded_count())
        lr = self.policy.after_epoch(epoch, self.history)
        if self.policy.last_restart == epoch:
            logger.info("discarded_cnt reached %.6g (%d whole blocks) at the end of epoch %d: the learning rate "
                        "restarts at %g from epoch %d", self.history[-1], whole_blocks(self.history[-1]), epoch,
                        lr, epoch + 1)

    def discarded_count(self):
        return float(gate.discarded_count(gate.gates_of(self.model)))  # 0 for a plain network

    def state(self):
        return {**self.policy.state(), "history": list(self.history)}

    def load_state(self, state):
        self.policy.load_state(state)
        self.history = list(state["history"])


class EpsilonScheduler(keras.callbacks.Callback):
    """Sets ε of every gate at the start of each epoch from (epoch, ε) points, `default`
    before the first point is in force and for points whose ε is None (a point (e, ε) holds
    from epoch e + 1); adds the ε in force to the epoch's logs as epsilon."""

    def __init__(self, points, default):
        super().__init__()
        self.points, self.default, self.in_force = [tuple(p) for p in points], default, None

    def on_epoch_begin(self, epoch, logs=None):
        self.in_force = epsilon_at(self.points, epoch, self.default)
        gate.set_epsilon(self.model, self.in_force)

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["epsilon"] = self.in_force


class GateMonitor(keras.callbacks.Callback):
    """Adds gate_summary to the epoch logs; listed before the writers so they record it."""

    def on_epoch_end(self, epoch, logs=None):
        if gate.gates_of(self.model):
            logs.update(gate_summary(self.model))


class MetricsWriter(keras.callbacks.Callback):
    """Appends one JSON object per epoch to metrics.jsonl, flushed to disk at once.

    An epoch the file already holds is not appended again: a run interrupted after an
    epoch's record and before its checkpoint trains that epoch again when it resumes, and
    its first record stands. A last line cut by a kill or a full disk is first moved aside
    (run_folder.repair_cut_tail).
    """

    def __init__(self, path):
        super().__init__()
        self.path, self.held = path, set()

    def on_train_begin(self, logs=None):
        repaired = run_folder.repair_cut_tail(self.path)
        if repaired:
            logger.warning("%s", repaired)
        if os.path.exists(self.path):
            self.held = {record["epoch"] for record in run_folder.read_metrics(os.path.dirname(self.path) or ".")}

    def on_epoch_end(self, epoch, logs=None):
        if epoch in self.held:
            logger.info("%s already holds epoch %d (written before the run was interrupted): kept that record",
                        self.path, epoch)
            return
        record = {"epoch": epoch, **{k: _plain(v) for k, v in logs.items()}}
        if "global_step" in record:
            record["global_step"] = int(record["global_step"])  # Keras turns the logs into floats
        run_folder.append_metrics(self.path, record)
        self.held.add(epoch)


class EpochLogger(keras.callbacks.Callback):
    """Writes every epoch metric to the human log (log.log), one per line, as tensorpack did."""

    def on_epoch_end(self, epoch, logs=None):
        logger.info("epoch %d done: " + ", ".join(f"{k}={_plain(v):.6g}" for k, v in logs.items()
                                                   if "/" not in k and isinstance(_plain(v), (int, float))), epoch)
        for key in sorted(k for k in logs if "/" in k):
            logger.debug("%s: %.6g", key, logs[key])


def _plain(value):
    return value.item() if isinstance(value, np.generic) else value
