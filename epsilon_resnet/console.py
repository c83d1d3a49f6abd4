"""What a user sees on the console: this project's log lines and progress, not TensorFlow's
start-up notices (oneDNN, CUDA probing on a machine without a GPU), unless they ask for them
with --verbose or EPSILON_RESNET_VERBOSE=1.

The package's __init__ calls quiet_tensorflow_import, so `from epsilon_resnet import gate`
is as quiet as the scripts; the scripts' --verbose undoes it before TensorFlow is imported.
"""
import importlib.util
import logging
import os
import sys
import tempfile
import time

logger = logging.getLogger("epsilon_resnet")
VERBOSE_VARIABLE = "EPSILON_RESNET_VERBOSE"
TF_LOG_LEVEL_VARIABLE = "TF_CPP_MIN_LOG_LEVEL"
# Redirected output gets a progress line at every epoch's end and at most this often within an epoch.
PROGRESS_LINE_SECONDS = 60


class _QuietTensorFlowImport:
    """A meta-path finder that imports `tensorflow`, the first time anything does, with file
    descriptor 2 held: the lines its C++ libraries print while they load (before
    TF_CPP_MIN_LOG_LEVEL applies) go to a temporary file, shown only if the import fails."""

    def find_spec(self, name, path=None, target=None):
        if name != "tensorflow":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.loader is not None:
            exec_module = spec.loader.exec_module
            spec.loader.exec_module = lambda module: _with_stderr_held(exec_module, module)
        return spec


def _with_stderr_held(function, *args):
    saved_stderr = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            function(*args)
        except BaseException:
            os.dup2(saved_stderr, 2)
            sink.seek(0)
            sys.stderr.write(sink.read().decode(errors="replace"))
            raise
        finally:
            os.dup2(saved_stderr, 2)
            os.close(saved_stderr)
    logging.getLogger("tensorflow").setLevel(logging.ERROR)


_QUIET_IMPORT = _QuietTensorFlowImport()
_quiet_log_level_set = False  # whether TF_CPP_MIN_LOG_LEVEL is this module's default, not the user's


def quiet_tensorflow_import():
    """Make TensorFlow's coming import quiet, unless EPSILON_RESNET_VERBOSE asks for its logs.

    TF_CPP_MIN_LOG_LEVEL=3 (unless the user set a level) hides the C++ log's INFO, WARNING and
    ERROR lines (on a CPU machine its "errors" are the failed CUDA probes); the lines printed
    while its libraries load are held back (_QuietTensorFlowImport). Real failures later still
    raise Python exceptions. Does nothing once TensorFlow is imported.
    """
    global _quiet_log_level_set
    if "tensorflow" in sys.modules or os.environ.get(VERBOSE_VARIABLE, "") not in ("", "0"):
        return
    if TF_LOG_LEVEL_VARIABLE not in os.environ:
        os.environ[TF_LOG_LEVEL_VARIABLE] = "3"
        _quiet_log_level_set = True
    if _QUIET_IMPORT not in sys.meta_path:
        sys.meta_path.insert(0, _QUIET_IMPORT)


def quiet_tensorflow(verbose=False):
    """Import TensorFlow now: quietly (quiet_tensorflow_import), or with all its logs if verbose."""
    if verbose and "tensorflow" not in sys.modules:
        if _QUIET_IMPORT in sys.meta_path:
            sys.meta_path.remove(_QUIET_IMPORT)
        if _quiet_log_level_set:
            del os.environ[TF_LOG_LEVEL_VARIABLE]
    import tensorflow  # noqa: F401


class RunLog(logging.FileHandler):
    """log.log: a write that fails (a full disk) stops the run with that error, one line
    (cli.command), instead of logging's traceback for every line written after it."""

    def handleError(self, record):
        raise  # the error being handled, which logging.Handler.emit caught


def setup_logging(run_dir):
    """log.log in the run folder (appended, never truncated; none when run_dir is None) plus the console."""
    logger.setLevel(logging.DEBUG)
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    formatter = logging.Formatter("[%(asctime)s] %(message)s", "%m%d %H:%M:%S")
    if run_dir is not None:
        file_handler = RunLog(os.path.join(run_dir, "log.log"))
        file_handler.setFormatter(formatter)
        logger.addHandler(file_handler)
    console = logging.StreamHandler(sys.stdout)
    console.setFormatter(formatter)
    console.setLevel(logging.INFO)
    logger.addHandler(console)
    logger.propagate = False


def epoch_progress(epoch, max_epoch, steps, images_per_step, first_step=0, show=True):
    """The progress display of one epoch: Keras' live bar when stdout is a terminal, plain
    lines (ProgressLines) when it is redirected, nothing when show is False. update(step,
    [(name, value)]) after a step; end_line() when the epoch is cut short."""
    if show and not sys.stdout.isatty():
        return ProgressLines(epoch, max_epoch, steps, images_per_step, first_step)
    if show:
        print(f"Epoch {epoch}/{max_epoch}")
    return TerminalBar(steps, show)


LATEST_VALUE_METRICS = ("cost", "discarded_cnt")  # shown as they stand; the others as means over the epoch


class TerminalBar:
    """Keras' Progbar, redrawn in place (backspaces and colour codes: for a terminal only)."""

    def __init__(self, steps, show):
        import keras  # not at the package's import: TensorFlow comes after the flags (see cli)

        self.show = show
        self.bar = keras.utils.Progbar(steps, stateful_metrics=LATEST_VALUE_METRICS, verbose=1 if show else 0)

    def update(self, step, values=()):
        self.bar.update(step, values)

    def end_line(self):
        if self.show:
            print()


class ProgressLines:
    """An epoch's progress for a console that is not a terminal (a log file): whole lines with
    the step, the rate (steps/s and images/s since the epoch (re)started) and the time left,
    one at the epoch's end (its ETA is the run's remaining training steps at this rate,
    evaluation not counted) and at most one every PROGRESS_LINE_SECONDS before it."""

    def __init__(self, epoch, max_epoch, steps, images_per_step, first_step=0, clock=time.monotonic,
                 interval=PROGRESS_LINE_SECONDS):
        self.epoch, self.max_epoch, self.steps, self.images_per_step = epoch, max_epoch, steps, images_per_step
        self.first_step, self.clock, self.interval = first_step, clock, interval
        self.start = self.last_line = clock()
        self.sums = {}

    def update(self, step, values=()):
        for name, value in values:
            total, count = self.sums.get(name, (0.0, 0))
            self.sums[name] = (value, 1) if name in LATEST_VALUE_METRICS else (total + value, count + 1)
        now = self.clock()
        if step < self.steps and now - self.last_line < self.interval:
            return
        self.last_line = now
        elapsed = now - self.start
        rate = (step - self.first_step) / elapsed if elapsed > 0 else 0.0
        left = self.steps - step if step < self.steps else (self.max_epoch - self.epoch) * self.steps
        eta = f"{'ETA' if step < self.steps else 'run ETA'} {format_duration(left / rate) if rate else '?'}"
        metrics = "".join(f" - {name} {total / count:.4f}" for name, (total, count) in self.sums.items())
        print(f"epoch {self.epoch}/{self.max_epoch} step {step}/{self.steps} - {elapsed:.0f} s, "
              f"{rate:.2f} steps/s, {rate * self.images_per_step:.0f} img/s - {eta}{metrics}", flush=True)

    def end_line(self):
        """Nothing to end: every line is whole."""


def format_duration(seconds):
    """h:mm:ss, or m:ss under an hour."""
    minutes, seconds = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes}:{seconds:02d}"
