"""Pure schedule rules (no TensorFlow), so each can be tested alone against docs/original.md §4–5.

Epochs count from 1. Every epoch-scheduled value (learning rate, restart schedule, ε)
follows tensorpack's timing: a point (e, v) is applied after epoch e ends, so v is in force
from epoch e + 1; a point (0, v) is set before training.
"""
import math

# How far below a whole number of blocks discarded_cnt may sit and still count as that many
# blocks. Each gate's is_discarded is a float32 moving average of 0/1 that stalls a few ulps
# below 1 once the remaining increments round away (the original's stalled at 0.99999946),
# so k blocks closed for good sum to about k - k·5.4e-7, never k, and the original's rule
# "rise >= 1" missed most closures. 1e-3 covers that stall for up to ~1800 blocks (the
# deepest CIFAR network, ResNet-752, has 375) and is far below any real fraction of a block:
# a block that closes counts once its average is within 1e-3 of 1, ~135 steps after it closed.
DISCARDED_TOLERANCE = 1e-3


def piecewise(points, epoch, default=None):
    """The value in force during `epoch` for (epoch, value) points: that of the last point
    before `epoch` (a point takes effect after its epoch ends); `default` before the first."""
    value = default
    for start, point_value in points:
        if start < epoch:
            value = point_value
    return value


def epsilon_at(points, epoch, epsilon):
    """ε in force during `epoch` under an ε schedule: `epsilon` (model.epsilon, i.e. -e) before
    the first point and wherever a point's value is None (YAML null), so a schedule such as the
    original's later one, [[0, 0.0], [150, null]], still takes ε from -e."""
    value = piecewise(points, epoch, epsilon)
    return epsilon if value is None else value


def whole_blocks(discarded_cnt):
    """The number of blocks discarded_cnt stands for: its float32 stall below each integer
    is forgiven, a block still closing (the average between 0 and 1) does not count yet."""
    return math.floor(discarded_cnt + DISCARDED_TOLERANCE)


class AdaptiveLearningRate:
    """The original's adaptive learning rate (docs/original.md §5) as a policy object.

    `initial` and `restart` are (epoch, lr) points. After each epoch N the policy looks at
    the history of discarded_cnt, one value per epoch as it stands at the epoch's end, in
    whole blocks (whole_blocks). It restarts when the max of the last last_k+1 counts is at
    least the first of them + threshold and last_k epochs have passed since the last
    restart: the schedule becomes `restart` shifted by N, so restart's first lr is in force
    from epoch N+1. With whole blocks every newly discarded block restarts the schedule
    exactly once, whether it closed early in an epoch or in its last steps (its average
    then reads e.g. 0.6 at that epoch's end and 1.0 one epoch later: 0 → 0 → 1 blocks).
    With restart=None it is the standard step schedule (ImageNet).
    """

    def __init__(self, initial, restart=None, threshold=1.0, last_k=1):
        self.initial = [tuple(p) for p in initial]
        self.restart = [tuple(p) for p in restart] if restart else None
        self.threshold, self.last_k = threshold, last_k
        self.schedule, self.last_restart = list(self.initial), 0

    def lr_at(self, epoch):
        """The lr in force during `epoch` under the current schedule (its first lr before any point applies)."""
        return piecewise(self.schedule, epoch, default=self.schedule[0][1])

    def should_restart(self, epoch, history):
        """Whether the schedule restarts after `epoch`, given discarded_cnt of epochs 1..epoch."""
        if not self.restart or len(history) < self.last_k + 1 or epoch - self.last_restart < self.last_k:
            return False
        window = [whole_blocks(count) for count in history[-(self.last_k + 1):]]
        return max(window) >= window[0] + self.threshold

    def after_epoch(self, epoch, history):
        """Update after epoch `epoch`; the lr in force from epoch+1 if it changes (or restarts), else None."""
        if self.should_restart(epoch, history):
            self.schedule = [(epoch + start, lr) for start, lr in self.restart]
            self.last_restart = epoch
            return self.restart[0][1]
        return next((lr for start, lr in self.schedule if start == epoch), None)

    def state(self):
        """What a checkpoint must keep to continue the same schedule."""
        return {"schedule": [list(p) for p in self.schedule], "last_restart": self.last_restart}

    def load_state(self, state):
        self.schedule = [tuple(p) for p in state["schedule"]]
        self.last_restart = state["last_restart"]
