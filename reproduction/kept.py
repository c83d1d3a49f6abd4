"""A kept network: what the results keep of a finished run, in the repository, so that the run
can be re-scored without training and the results re-built without its run folder.

<results>/networks/<run name>/ is laid out as a run folder (scripts and library read it as one):
config.yaml and metrics.jsonl copied from the run, model-<step> the gated network at the last
step with its weights only (no optimizer state), compressed_model_<step>.cfg as compressModel.py
wrote it; then scores.json (reproduction/score.py: the errors at each evaluation batch size in
both semantics, and the compression re-made from the kept weights) and, last, run.json (the
run's config hash, its ledger entry and the compressed network's evaluation.json), whose
presence marks the run done.
"""
import json
import os

from epsilon_resnet import compressed_cfg, run_folder
from epsilon_resnet.atomic import write_atomic
from reproduction import read_text

SCORES_FILE = "scores.json"
RUN_FILE = "run.json"
BATCH_SIZES = (1, 10, 128)  # evaluation batch sizes scored for every kept network


def kept_dir(root, name):
    return os.path.join(root, name)


def read_json(folder, name):
    return json.loads(read_text(os.path.join(folder, name)))


def is_done(folder, sha256):
    """Whether the folder holds a finished kept run of the config with this SHA-256."""
    path = os.path.join(folder, RUN_FILE)
    return os.path.isfile(path) and read_json(folder, RUN_FILE)["config_sha256"] == sha256


def copy_run_files(run_dir, step, folder):
    """The run's config, metrics and .cfg into the kept folder (the weights come from score.py)."""
    os.makedirs(folder, exist_ok=True)
    for name in (run_folder.CONFIG_FILE, run_folder.METRICS_FILE, run_folder.compressed_name(step) + ".cfg"):
        write_atomic(os.path.join(folder, name), read_text(os.path.join(run_dir, name)))


def write_run_file(folder, sha256, ledger_entry, evaluation):
    write_atomic(os.path.join(folder, RUN_FILE), json.dumps(
        {"config_sha256": sha256, "ledger": ledger_entry, "compressed_evaluation": evaluation},
        indent=1, ensure_ascii=False) + "\n")


def recorded_numbers(folder):
    """The numbers a kept network's files record, in the shape of a run of the results file: the
    error at the last step in both semantics, scores.json, the compressed network's error and blocks."""
    last = run_folder.read_metrics(folder)[-1]
    spec = compressed_cfg.read(os.path.join(folder, run_folder.compressed_name(last["global_step"]) + ".cfg"))
    return {"error": last["val_error"], "error_per_batch": last["val_error_per_batch"],
            "scores": read_json(folder, SCORES_FILE),
            "compression": {"compressed_error": read_json(folder, RUN_FILE)["compressed_evaluation"]["val_error"],
                            "discarded_blocks": list(spec.discarded_blocks)}}
