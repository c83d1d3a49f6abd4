"""Keras callbacks of an ε-ResNet run. Epoch numbers passed to them count from 1, as the
original (tensorpack) and SPEC §5's tables do."""
import json
import logging
import os

import keras
import numpy as np

from epsilon_resnet.gate import MONITORED, gates_of
from epsilon_resnet.schedules import AdaptiveLearningRate, piecewise

logger = logging.getLogger("epsilon_resnet")


class LearningRateSetter(keras.callbacks.Callback):
    """Applies an AdaptiveLearningRate policy to the optimizer after every epoch.

    It keeps the per-epoch discarded_cnt history the policy needs; both are part of the
    run's checkpointed state, so a resumed run restarts the schedule exactly as before.
    """

    def __init__(self, policy: AdaptiveLearningRate, optimizer):
        super().__init__()
        self.policy, self.optimizer, self.history = policy, optimizer, []

    def on_epoch_end(self, epoch, logs=None):
        self.history.append(float(logs.get("discarded_cnt", 0.0)))  # a plain network discards nothing
        lr = self.policy.after_epoch(epoch, self.history)
        if lr is not None:
            if self.policy.last_restart == epoch:
                logger.info("discarded_cnt rose to %.2f: learning rate restarts at %g", self.history[-1], lr)
            self.optimizer.learning_rate = lr

    def state(self):
        return {**self.policy.state(), "history": self.history}

    def load_state(self, state):
        self.policy.load_state(state)
        self.history = list(state["history"])


class EpsilonScheduler(keras.callbacks.Callback):
    """Sets the model's shared ε at the start of each epoch from (epoch, ε) points."""

    def __init__(self, epsilon_variable, points, default):
        super().__init__()
        self.variable, self.points, self.default = epsilon_variable, points, default

    def on_epoch_begin(self, epoch, logs=None):
        self.variable.assign(piecewise(self.points, epoch, self.default))


def gate_summary(model):
    """Per-block moving averages plus discarded_cnt and discarded_ratio (over the gated blocks)."""
    gates = gates_of(model)
    logs = {f"{g.block}/{stat}": float(getattr(g, stat).numpy()) for g in gates for stat in MONITORED}
    count = sum(logs[f"{g.block}/is_discarded"] for g in gates)
    return {"discarded_cnt": count, "discarded_ratio": count / max(len(gates), 1), **logs}


class GateMonitor(keras.callbacks.Callback):
    """Adds gate_summary to the epoch logs; listed before the writers so they record it."""

    def on_epoch_end(self, epoch, logs=None):
        if gates_of(self.model):
            logs.update(gate_summary(self.model))


class MetricsWriter(keras.callbacks.Callback):
    """Appends one JSON object per epoch to metrics.jsonl, flushed to disk at once.

    A resumed run appends epochs again after its checkpoint; read_metrics keeps the last
    record of each epoch, so lines from a lost stretch of training are superseded.
    """

    def __init__(self, path):
        super().__init__()
        self.path = path

    def on_epoch_end(self, epoch, logs=None):
        record = {"epoch": epoch, **{k: _plain(v) for k, v in logs.items()}}
        record["global_step"] = int(record["global_step"])  # Keras turns the logs into floats
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())


class EpochLogger(keras.callbacks.Callback):
    """Writes every epoch metric to the human log (log.log), one per line, as tensorpack did."""

    def on_epoch_end(self, epoch, logs=None):
        logger.info("epoch %d done: " + ", ".join(f"{k}={_plain(v):.6g}" for k, v in logs.items()
                                                   if "/" not in k and isinstance(_plain(v), (int, float))), epoch)
        for key in sorted(k for k in logs if "/" in k):
            logger.debug("%s: %.6g", key, logs[key])


def _plain(value):
    return value.item() if isinstance(value, np.generic) else value
