"""The run folder train_log.<output>/: its layout, file names and metric keys, and how files are
written into it, without TensorFlow (plots and the reproduction read runs through it too).

    config.yaml                 the run's config, written once
    log.log                     the human log, as the console prints it
    metrics.jsonl               one JSON record per epoch (`append_metrics`, `read_metrics`)
    train/, validation/         TensorBoard
    model-<step>.index/.data-*  the recent checkpoints (and one every 30 minutes; `checkpoints`)
    checkpoint                  which of them is the latest and which are recent (a hint)
    kept/model-<step>.*         checkpoints kept for good (train.keep_checkpoint_steps)
    compressed_model_<step>.*   compressModel.py's .cfg (`compressed_cfg`) and pruned weights
    evaluation.json             an evaluation's errors, when asked for (`write_evaluation`)
    .lock                       the PID of the process writing the folder (see `locked`)

Nothing here rewrites a file in place: new files are written under a temporary name and
renamed into place once complete. A kill -9 or a full disk during an append to metrics.jsonl
leaves its last line cut short: `read_metrics` steps past such a line (and past the cut text
an earlier version appended to) with a warning on the "epsilon_resnet" logger, and
`repair_cut_tail` moves it aside before a resumed run appends.
"""
import contextlib
import dataclasses
import fcntl
import itertools
import json
import logging
import os
import shutil

from epsilon_resnet import config as config_lib
from epsilon_resnet.atomic import temporary_writer, write_atomic
from epsilon_resnet.errors import CheckpointError, FileError, RunError


logger = logging.getLogger("epsilon_resnet")

RUN_PREFIX = "train_log."
CHECKPOINT_NAME = "model"
CHECKPOINT_HINT = "checkpoint"  # TensorFlow's name; names the latest checkpoint (a hint: `checkpoints`)
KEPT_FOLDER = "kept"
CONFIG_FILE = "config.yaml"
LOG_FILE = "log.log"
METRICS_FILE = "metrics.jsonl"
EVALUATION_FILE = "evaluation.json"
LOCK_FILE = ".lock"
RECORD_START = '{"epoch"'  # how every metrics record begins (`append_metrics`)


def run_dir_of(output):
    """The run folder of a run name: train_log.<output>, in the current folder."""
    return RUN_PREFIX + output


def compressed_name(step):
    """The prefix of compressModel.py's outputs for a step: compressed_model_<step>(.cfg, .index, ...)."""
    return f"compressed_model_{step}"


# ---- metric keys ----------------------------------------------------------------------------
# Each gate's moving averages (structures.GATE_METRICS) are recorded per block.
def block_metric(block, stat):
    """The metrics key of one gate's moving average (a GATE_METRICS name), e.g. "res2.9/is_discarded"."""
    return f"{block}/{stat}"


def block_metrics(record, stat):
    """{block: value} of one gate statistic in a metrics record, in the record's (network) order."""
    suffix = "/" + stat
    return {key[:-len(suffix)]: value for key, value in record.items() if key.endswith(suffix)}


# ---- checkpoint names -----------------------------------------------------------------------
def steps_in(folder):
    """Global steps of the model-<step> checkpoints in a folder, sorted."""
    if not os.path.isdir(folder):
        return []
    prefix, suffix = CHECKPOINT_NAME + "-", ".index"
    names = (f[len(prefix):-len(suffix)] for f in os.listdir(folder) if f.startswith(prefix) and f.endswith(suffix))
    return sorted(int(step) for step in names if step.isdigit())


def check_checkpoint(path):
    """Raise CheckpointError unless `path` is a checkpoint prefix (e.g. train_log.x/model-3900) whose .index exists."""
    if os.path.isfile(path + ".index"):
        return
    folder = os.path.dirname(path) or "."
    steps, kept = steps_in(folder), steps_in(os.path.join(folder, KEPT_FOLDER))
    raise CheckpointError(f"no checkpoint {path!r}: expected the file {path}.index"
                   + (f"; {folder} has checkpoints at steps {steps}" if steps else "")
                   + (f"; {os.path.join(folder, KEPT_FOLDER)} has steps {kept}" if kept else ""))


def checkpoint_path(run_dir, step):
    """The prefix of a run's checkpoint at `step`: model-<step>, or kept/model-<step> once rotated out."""
    recent = os.path.join(run_dir, f"{CHECKPOINT_NAME}-{step}")
    kept = os.path.join(run_dir, KEPT_FOLDER, f"{CHECKPOINT_NAME}-{step}")
    return kept if not os.path.isfile(recent + ".index") and os.path.isfile(kept + ".index") else recent


def is_run(folder):
    return all(os.path.isfile(os.path.join(folder, f)) for f in (CONFIG_FILE, METRICS_FILE))


def find_run(directory):
    """`directory` itself, or the one run folder (config.yaml and metrics.jsonl) below it."""
    if not os.path.isdir(directory):
        raise RunError(f"`directory` {directory!r} is not a folder")
    if is_run(directory):
        return directory
    runs = sorted(os.path.normpath(root) for root, _, _ in os.walk(directory) if is_run(root))
    if len(runs) != 1:
        found = f"several: {runs}; pass one of them" if runs else "none"
        raise RunError(f"looked for a run folder (with {CONFIG_FILE} and {METRICS_FILE}) in and below "
                               f"{directory!r} and found {found}")
    return runs[0]


def read_config(run_dir):
    return config_lib.load(os.path.join(run_dir, CONFIG_FILE))


def same_run(run_dir, config):
    """The config of the run already in run_dir (None if there is none), once it is checked to be
    the same run as `config`: the same network (model) and dataset (data), wherever the
    dataset's files are now (data.dir is not part of the run: a run resumes after its data moved)."""
    path = os.path.join(run_dir, CONFIG_FILE)
    if not os.path.exists(path):
        return None
    saved = config_lib.load(path)
    for section in ("model", "data"):
        ours, theirs = (dataclasses.replace(getattr(c, section), **({"dir": None} if section == "data" else {}))
                        for c in (saved, config))
        if ours != theirs:
            raise RunError(f"{run_dir} holds a run with a different '{section}' configuration ({ours} vs {theirs}); "
                           f"choose another `run_dir` or move that folder away")
    return saved


def prepare(run_dir, config, write=True):
    """Create the run folder, or check that an existing one holds the same run (`same_run`).

    config.yaml is written once and never edited; a resumed run may change training
    settings (e.g. more epochs) and where its data is, but not the network or dataset its
    checkpoints belong to. write=False (a non-chief worker) only checks.
    """
    if write:
        os.makedirs(run_dir, exist_ok=True)
    if same_run(run_dir, config) is None and write:
        write_new_file(os.path.join(run_dir, CONFIG_FILE), config_lib.dump(config))


@contextlib.contextmanager
def locked(run_dir, purpose, when_held="wait until it ends, or choose another `run_dir`"):
    """Hold the run folder for this process alone (creating the folder if needed) while it writes.

    An advisory flock on run_dir/.lock, which records the holder's PID and `purpose` for the
    message another process gets (`when_held` says what to do then). The kernel drops it when its holder exits, however it
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
            raise RunError(f"{run_dir} is in use by PID {holder}; {when_held}") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} ({purpose})\n".encode(), 0)
        remove_stale_temporaries(run_dir)
        yield
    finally:
        os.close(fd)


def _writer_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def remove_stale_temporaries(run_dir):
    """Delete the temporaries (`atomic.TEMPORARY`) of writers that are no longer alive, in the run
    folder and its kept/ (call only while holding `locked`). Only regular files and folders
    are deleted, never a symlink or anything it points to; a kept/ that is a symlink is not entered."""
    for folder in (run_dir, os.path.join(run_dir, KEPT_FOLDER)):
        if os.path.islink(folder) or not os.path.isdir(folder):
            continue
        for entry in os.scandir(folder):
            writer = temporary_writer(entry.name)
            if writer is None or entry.is_symlink() or _writer_alive(writer):
                continue
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path)
            elif entry.is_file(follow_symlinks=False):
                os.remove(entry.path)


def write_new_file(path, text):
    """Write text to a new file atomically (temporary file, fsync, rename); never replaces one."""
    if os.path.lexists(path):
        raise RunError(f"{path} exists already; it was left untouched")
    write_atomic(path, text)


# ---- metrics.jsonl ----------------------------------------------------------------------------
def append_metrics(path, record):
    """Append one epoch's record (a dict starting with "epoch") as a line, flushed to disk at once."""
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_metrics(run_dir):
    """The per-epoch records of a run's metrics.jsonl, one per epoch (the last written wins)."""
    path = os.path.join(run_dir, METRICS_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} does not exist: is {run_dir} a train_log.<output> folder of this project?")
    records = {}
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().split("\n")
    except UnicodeDecodeError as err:
        raise FileError(f"{path} is not UTF-8 text (byte {err.start}); expected one JSON record per line") from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        record = _record(path, number, line, last=number == len(lines))
        if record is None:
            continue
        if not isinstance(record, dict) or not isinstance(record.get("epoch"), int):
            raise FileError(f"{path}:{number} is not a record with an \"epoch\" (as training writes them)")
        records[record["epoch"]] = record
    return [records[e] for e in sorted(records)]


def _record(path, number, line, last):
    """The record on a line; None for a cut last line (the text after the final newline)."""
    try:
        return json.loads(line)
    except json.JSONDecodeError:
        pass
    if last:
        logger.warning("%s:%d is cut short (a write was interrupted); kept the %d lines before it", path, number,
                       number - 1)
        return None
    start = line.rfind(RECORD_START)
    try:
        record = json.loads(line[start:]) if start > 0 else None
    except json.JSONDecodeError:
        record = None
    if record is None:
        raise FileError(f"{path}:{number} is not valid JSON (expected one record per line, as training "
                        f"writes them)") from None
    logger.warning("%s:%d begins with a cut record (a write was interrupted); kept the epoch %s record that "
                   "follows it on that line", path, number, record.get("epoch"))
    return record


def repair_cut_tail(path):
    """Before appending: move a cut last line out of metrics.jsonl into metrics.jsonl.cut-line-<N>.

    The file is rewritten atomically (a temporary file renamed over it) with its complete
    lines only, so nothing is lost and the next record starts a line of its own. Returns a
    sentence saying what was done, or None when the file is whole.
    """
    if not os.path.isfile(path):
        return None
    with open(path, "rb") as f:
        text = f.read()
    if not text or text.endswith(b"\n"):
        return None
    kept, _, cut = text.rpartition(b"\n")
    number = kept.count(b"\n") + (2 if kept else 1)
    if _is_json(cut):  # only the newline is missing
        write_atomic(path, text + b"\n")
        return f"{path}:{number} lacked its newline; added it"
    saved = next(name for name in (f"{path}.cut-line-{number}" + (f".{k}" if k else "") for k in itertools.count())
                 if not os.path.exists(name))
    with open(saved, "xb") as f:
        f.write(cut)
        f.flush()
        os.fsync(f.fileno())
    write_atomic(path, kept + b"\n" if kept else b"")
    return (f"{path}:{number} was cut short (a write was interrupted); kept lines 1-{number - 1} and moved the "
            f"cut text to {saved}")


def _is_json(data):
    try:
        json.loads(data)
    except ValueError:
        return False
    return True


# ---- evaluation.json --------------------------------------------------------------------------
def write_evaluation(output, record):
    """Write an evaluation's record into train_log.<output>/evaluation.json, a new file; returns its path."""
    folder = run_dir_of(output)
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, EVALUATION_FILE)
    write_new_file(path, json.dumps(record, indent=1) + "\n")
    return path


def read_evaluation(run_dir):
    """The record `write_evaluation` wrote into a run folder."""
    with open(os.path.join(run_dir, EVALUATION_FILE)) as f:
        return json.load(f)
