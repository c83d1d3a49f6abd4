"""Reading a run's metrics.jsonl, without TensorFlow (plots and reports import it too)."""
import json
import os


def read_metrics(run_dir):
    """The per-epoch records of a run's metrics.jsonl, one per epoch (the last written wins)."""
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} does not exist: is {run_dir} a train_log.<output> folder of this project?")
    records = {}
    with open(path) as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                # Only the last line can be cut short (a kill during the write); anything else is damage.
                if f.read().strip():
                    raise ValueError(f"{path}:{number} is not valid JSON") from None
                break
            records[record["epoch"]] = record
    return [records[e] for e in sorted(records)]
