"""Pure schedule rules (no TensorFlow), so each can be tested alone against SPEC §4–5."""


def piecewise(points, epoch, default=None):
    """Value of the last (epoch, value) point at or before `epoch`; `default` before the first."""
    value = default
    for start, point_value in points:
        if start <= epoch:
            value = point_value
    return value


class AdaptiveLearningRate:
    """The original's adaptive learning rate (SPEC §5) as a policy object.

    Epochs count from 1; `initial` and `restart` are (epoch, lr) points. After each epoch N
    the policy looks at the per-epoch discarded_cnt history: when a block has been lost
    (the max of the last last_k+1 values is at least the first of them + threshold) and
    last_k epochs have passed since the last restart, the schedule restarts as `restart`
    shifted by N, so lr = restart's first value from epoch N+1 on. Otherwise the lr changes
    when epoch N+1 is a point of the current schedule. With restart=None it is the standard
    step schedule (ImageNet).
    """

    def __init__(self, initial, restart=None, threshold=1.0, last_k=1):
        self.initial = [tuple(p) for p in initial]
        self.restart = [tuple(p) for p in restart] if restart else None
        self.threshold, self.last_k = threshold, last_k
        self.schedule, self.last_restart = list(self.initial), 0

    def lr_at(self, epoch):
        """The lr in force during `epoch` under the current schedule."""
        return piecewise(self.schedule, epoch, default=self.schedule[0][1])

    def after_epoch(self, epoch, history):
        """Update after epoch `epoch` (history: discarded_cnt of epochs 1..epoch); the new lr or None."""
        window = history[-(self.last_k + 1):]
        if (self.restart and len(history) >= self.last_k + 1 and epoch - self.last_restart >= self.last_k
                and max(window) >= window[0] + self.threshold):
            self.schedule = [(epoch + start, lr) for start, lr in self.restart]
            self.last_restart = epoch
            return self.restart[0][1]
        return next((lr for start, lr in self.schedule if start == epoch + 1), None)

    def state(self):
        return {"schedule": [list(p) for p in self.schedule], "last_restart": self.last_restart}

    def load_state(self, state):
        self.schedule = [tuple(p) for p in state["schedule"]]
        self.last_restart = state["last_restart"]
