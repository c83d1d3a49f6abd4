"""The run folder train_log.<output>/ and its checkpoints: names, atomic publishing, restoring.

Training writes here and compression reads here (and adds its outputs beside the
checkpoints); both go through these functions, so the layout is declared once:

    config.yaml, log.log, metrics.jsonl, train/ and validation/ (TensorBoard),
    model-<step>.index/.data-*   the recent checkpoints (and one every 30 minutes),
    kept/model-<step>.*         checkpoints kept for good (train.keep_checkpoint_steps),
    compressed_model_<step>.*   compressModel.py's .cfg and pruned weights,
    .lock                       the PID of the process writing the folder (see `locked`).

Nothing here rewrites an existing file: new files are written under a temporary name
and renamed into place once complete.
"""
import contextlib
import fcntl
import os
import re
import shutil
import tempfile

import tensorflow as tf

from epsilon_resnet import config as config_lib
from epsilon_resnet import data
from epsilon_resnet.errors import CompressionError, RunError
from epsilon_resnet.networks import build_from_config

CHECKPOINT_NAME = "model"
KEPT_FOLDER = "kept"
CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.jsonl"
LOCK_FILE = ".lock"
# What write_new_file and write_checkpoint write before renaming: folder/name.tmp-<pid>, folder/.name.tmp-XXXX/.
TEMPORARY = re.compile(r"(.+\.tmp-\d+|\..+\.tmp-.+)")


def steps_in(folder):
    """Global steps of the model-<step> checkpoints in a folder, sorted."""
    if not os.path.isdir(folder):
        return []
    prefix, suffix = CHECKPOINT_NAME + "-", ".index"
    names = (f[len(prefix):-len(suffix)] for f in os.listdir(folder) if f.startswith(prefix) and f.endswith(suffix))
    return sorted(int(step) for step in names if step.isdigit())


def check_checkpoint(path):
    """Raise RunError unless `path` is a checkpoint prefix (e.g. train_log.x/model-3900) whose .index exists."""
    if os.path.isfile(path + ".index"):
        return
    folder = os.path.dirname(path) or "."
    steps, kept = steps_in(folder), steps_in(os.path.join(folder, KEPT_FOLDER))
    raise RunError(f"no checkpoint {path!r}: expected the file {path}.index"
                   + (f"; {folder} has checkpoints at steps {steps}" if steps else "")
                   + (f"; {os.path.join(folder, KEPT_FOLDER)} has steps {kept}" if kept else ""))


def checkpoint_path(run_dir, step):
    """The prefix of a run's checkpoint at `step`: model-<step>, or kept/model-<step> once rotated out."""
    recent = os.path.join(run_dir, f"{CHECKPOINT_NAME}-{step}")
    kept = os.path.join(run_dir, KEPT_FOLDER, f"{CHECKPOINT_NAME}-{step}")
    return kept if not os.path.isfile(recent + ".index") and os.path.isfile(kept + ".index") else recent


def latest_checkpoint(run_dir):
    return tf.train.latest_checkpoint(run_dir) if os.path.isdir(run_dir) else None


def is_run(folder):
    return all(os.path.isfile(os.path.join(folder, f)) for f in (CONFIG_FILE, METRICS_FILE))


def find_run(directory):
    """`directory` itself, or the one run folder (config.yaml and metrics.jsonl) below it."""
    if not os.path.isdir(directory):
        raise CompressionError(f"--dir {directory!r} is not a folder")
    if is_run(directory):
        return directory
    runs = sorted(os.path.normpath(root) for root, _, _ in os.walk(directory) if is_run(root))
    if len(runs) != 1:
        found = f"several: {runs}; pass one of them" if runs else "none"
        raise CompressionError(f"looked for a run folder (with {CONFIG_FILE} and {METRICS_FILE}) in and below "
                               f"{directory!r} and found {found}")
    return runs[0]


def read_config(run_dir):
    return config_lib.load(os.path.join(run_dir, CONFIG_FILE))


def prepare(run_dir, config, write=True):
    """Create the run folder, or check that an existing one belongs to the same model and data.

    config.yaml is written once; a resumed run may change training settings (e.g. more
    epochs) but not the network or dataset its checkpoints belong to. write=False (a
    non-chief worker) only checks.
    """
    if write:
        os.makedirs(run_dir, exist_ok=True)
    path = os.path.join(run_dir, CONFIG_FILE)
    if os.path.exists(path):
        saved = config_lib.load(path)
        for section in ("model", "data"):
            if getattr(saved, section) != getattr(config, section):
                raise RunError(f"{run_dir} holds a run with a different '{section}' configuration "
                               f"({getattr(saved, section)} vs {getattr(config, section)}); "
                               f"choose another output name (-o) or move that folder away")
    elif write:
        write_new_file(path, config_lib.dump(config))


@contextlib.contextmanager
def locked(run_dir, purpose):
    """Hold the run folder for this process alone (creating the folder if needed) while it writes.

    An advisory flock on run_dir/.lock, which records the holder's PID and `purpose` for the
    message another process gets. The kernel drops it when its holder exits, however it
    exits (kill -9 too), so a stale .lock file never blocks. Once the lock is held, any
    temporary file left by an earlier writer that was killed is removed.
    """
    path = os.path.join(run_dir, LOCK_FILE)
    try:
        os.makedirs(run_dir, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as err:
        raise RunError(f"cannot write into the run folder {run_dir}: {err.strerror}; "
                       f"{purpose} needs a folder it can write") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "a process that is starting"
            raise RunError(f"{run_dir} is in use by PID {holder}; wait until it ends, or choose another "
                           f"output name (-o)") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} ({purpose})\n".encode(), 0)
        remove_stale_temporaries(run_dir)
        yield
    finally:
        os.close(fd)


def remove_stale_temporaries(run_dir):
    """Delete the temporaries of a killed writer (call only while holding `locked`)."""
    for folder in (run_dir, os.path.join(run_dir, KEPT_FOLDER)):
        for name in os.listdir(folder) if os.path.isdir(folder) else ():
            path = os.path.join(folder, name)
            if TEMPORARY.fullmatch(name):
                shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)


def write_new_file(path, text):
    """Write text to a new file atomically (temporary file, fsync, rename); never replaces one."""
    if os.path.exists(path):
        raise RunError(f"{path} exists already; it was left untouched")
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_checkpoint(checkpoint, folder, name):
    """Write `checkpoint` as folder/name.* without ever showing a half-written one.

    The files are written into a temporary folder beside them and moved into place with
    the .index last (the index names the data files, so a reader never finds an index
    without its data). An existing checkpoint of that name is never replaced.
    """
    os.makedirs(folder, exist_ok=True)
    if os.path.exists(os.path.join(folder, name + ".index")):
        raise RunError(f"{os.path.join(folder, name)} exists already; it was left untouched")
    tmp = tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=folder)
    try:
        checkpoint.write(os.path.join(tmp, name))
        for file in sorted(os.listdir(tmp), key=lambda f: f.endswith(".index")):
            os.replace(os.path.join(tmp, file), os.path.join(folder, file))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return os.path.join(folder, name)


def restore_model(model, path, exact, error=RunError):
    """Load a model's weights from a checkpoint prefix written with tf.train.Checkpoint(model=...).

    exact: every value of the checkpoint must be used (a compressed network's own
    checkpoint); otherwise the rest of a training checkpoint (optimizer, run state) is
    ignored. Either way every weight of the model must be found, with its shape.
    """
    if not os.path.isfile(path + ".index"):
        raise error(f"no checkpoint {path!r}: the file {path}.index does not exist")
    try:
        status = tf.train.Checkpoint(model=model).read(path)
        if exact:
            status.assert_consumed()
        else:
            status.expect_partial()
            status.assert_existing_objects_matched()
    except (IndexError, tf.errors.DataLossError) as err:  # a cut .data file, a checksum that does not match
        raise error(f"the checkpoint files of {path} are damaged ({brief(err)}): expected {path}.index and its "
                    f".data-* files complete, as they were written; use another step's checkpoint") from None
    except (AssertionError, ValueError, tf.errors.OpError) as err:
        raise error(f"the weights in {path} do not fit the network {model.name!r}: {brief(err)}") from None


def brief(err):
    """TensorFlow's message for a checkpoint that cannot be read, without its op prefix and the
    values of the variables it lists (kilobytes of numbers): their names stand for them."""
    text = re.sub(r"\{\{function_node [^}]*\}\}\s*|\s*\[Op:\w+\]", "", str(err))
    names = re.findall(r"path=([^,]+), shape", text)
    if names:
        text = text.split(" Showing")[0].split(": [")[0].rstrip(".") + f", among them {', '.join(names[:5])}"
    return text.strip()


def load_network(config, checkpoint, data_dir=None, source=None, error=RunError):
    """(data source, the config's network with a checkpoint's weights), for evaluating or
    compressing it: ε, the gate averages and the pixel mean come from the checkpoint.

    The checkpoint is checked before the dataset is opened; `source` replaces the config's
    dataset (tests), `data_dir` its folder.
    """
    check_checkpoint(checkpoint)
    source = source or data.get_source(config.data.name, data_dir or config.data.dir, **config.data.options)
    model = build_from_config(config.model, source)
    restore_model(model, checkpoint, exact=False, error=error)
    return source, model
