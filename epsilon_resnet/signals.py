"""Ctrl-C and SIGTERM as a request to stop cleanly: keep a checkpoint, then exit."""
import signal
import sys
import threading

import tensorflow as tf


class StopRequest:
    """Turns SIGINT (Ctrl-C) and SIGTERM into a request that the run stops at the next step boundary.

    Training feeds the request into its next step, where it is summed across replicas, so
    every worker of a multi-worker run sees it after the same step and takes part in the
    same save; evaluation checks it between batches. A second signal acts at once: the
    previous handlers are back after the first. A signal the process was started ignoring
    stays ignored (a non-interactive shell starts background jobs ignoring SIGINT).
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.signal, self._previous = None, {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():  # Python only signals the main thread
            self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS
                              if signal.getsignal(s) is not signal.SIG_IGN}
        return self

    def __exit__(self, *exc):
        self._restore()

    def _handle(self, signum, frame):
        self.signal = signal.Signals(signum).name
        self._restore()
        print(f"\n{self.signal}: keeping a checkpoint of the current step, then stopping "
              f"(send it again to stop at once without saving)", file=sys.stderr, flush=True)

    def _restore(self):
        for number, handler in self._previous.items():
            signal.signal(number, handler)
        self._previous = {}

    def tensor(self):
        return tf.constant(self.signal is not None)
