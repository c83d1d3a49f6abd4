"""A run's metrics.jsonl, one JSON record per epoch and line: reading it, and repairing a cut
last line before a resumed run appends to it. Without TensorFlow (plots and reports import it too).

A kill -9 or a full disk during an append leaves the last line cut short. The reader steps
past such a line, and past the cut text that a run of an earlier version appended to, and
says so (a warning on the "epsilon_resnet" logger); any other damage is an error naming the line.
"""
import itertools
import json
import logging
import os

logger = logging.getLogger("epsilon_resnet")
RECORD_START = '{"epoch"'  # how MetricsWriter's records begin


def read_metrics(run_dir):
    """The per-epoch records of a run's metrics.jsonl, one per epoch (the last written wins)."""
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} does not exist: is {run_dir} a train_log.<output> folder of this project?")
    records = {}
    with open(path) as f:
        lines = f.read().split("\n")
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        record = _record(path, number, line, last=number == len(lines))
        if record is not None:
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
        raise ValueError(f"{path}:{number} is not valid JSON (expected one record per line, as training "
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
        _replace(path, text + b"\n")
        return f"{path}:{number} lacked its newline; added it"
    saved = next(name for name in (f"{path}.cut-line-{number}" + (f".{k}" if k else "") for k in itertools.count())
                 if not os.path.exists(name))
    with open(saved, "xb") as f:
        _write_synced(f, cut)
    _replace(path, kept + b"\n" if kept else b"")
    return (f"{path}:{number} was cut short (a write was interrupted); kept lines 1-{number - 1} and moved the "
            f"cut text to {saved}")


def _is_json(data):
    try:
        json.loads(data)
    except ValueError:
        return False
    return True


def _replace(path, data):
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            _write_synced(f, data)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _write_synced(f, data):
    f.write(data)
    f.flush()
    os.fsync(f.fileno())
