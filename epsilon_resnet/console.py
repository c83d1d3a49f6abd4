"""What a user sees on the console: this project's log lines and progress bar, not
TensorFlow's start-up notices (oneDNN, CUDA probing on a machine without a GPU), unless
they ask for them with --verbose or EPSILON_RESNET_VERBOSE=1."""
import logging
import os
import sys
import tempfile

logger = logging.getLogger("epsilon_resnet")
VERBOSE_VARIABLE = "EPSILON_RESNET_VERBOSE"


def quiet_tensorflow(verbose=False):
    """Import TensorFlow without its start-up noise; must run before anything else imports it.

    TF_CPP_MIN_LOG_LEVEL=3 hides the C++ log's INFO, WARNING and ERROR lines (on a CPU
    machine its "errors" are the failed CUDA probes); the lines its libraries print while
    loading, before that setting applies, go to a temporary file and are shown only if the
    import fails. Real failures later still raise Python exceptions.
    """
    if verbose or os.environ.get(VERBOSE_VARIABLE, "") not in ("", "0"):
        import tensorflow  # noqa: F401
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    saved_stderr = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            import tensorflow  # noqa: F401
        except BaseException:
            os.dup2(saved_stderr, 2)
            sink.seek(0)
            sys.stderr.write(sink.read().decode(errors="replace"))
            raise
        finally:
            os.dup2(saved_stderr, 2)
            os.close(saved_stderr)
    logging.getLogger("tensorflow").setLevel(logging.ERROR)


def setup_logging(run_dir):
    """log.log in the run folder (appended, never truncated; none when run_dir is None) plus the console."""
    logger.setLevel(logging.DEBUG)
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    formatter = logging.Formatter("[%(asctime)s] %(message)s", "%m%d %H:%M:%S")
    if run_dir is not None:
        file_handler = logging.FileHandler(os.path.join(run_dir, "log.log"))
        file_handler.setFormatter(formatter)
        logger.addHandler(file_handler)
    console = logging.StreamHandler(sys.stdout)
    console.setFormatter(formatter)
    console.setLevel(logging.INFO)
    logger.addHandler(console)
    logger.propagate = False
