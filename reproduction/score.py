"""python -m reproduction.score: score kept networks (reproduction/kept.py) without training.

    python -m reproduction.score keep --run-dir D --step S --out KEPT --data DATA
    python -m reproduction.score check --results reproduction/results/cifar10_reproduction.json --data DATA
    python -m reproduction.score check --kept reproduction/results/networks/RUN ... --data DATA

`keep` makes the kept network of a finished run and writes its scores.json; `check` re-scores
every kept network of a results file into memory and compares each number with the file (or,
with --kept, each named kept network with its own files, before a results file exists), exit
code 1 if one differs. A score is the gated network's error at each evaluation batch
size of kept.BATCH_SIZES in both semantics (inference mode: the stored gates; per batch: the
original's), and its compression made again from the kept weights by compression.compress_run,
checked against the inference-mode gated network on every image. Unlike the rest of the
package this module imports TensorFlow: it runs as a process of its own.
"""
import argparse
import json
import os
import shutil
import sys
import tempfile

from epsilon_resnet import checkpoints, compressed_cfg, compression, run_folder, scoring  # first: a quiet TF import
from epsilon_resnet import config as config_lib
from epsilon_resnet.atomic import write_atomic
from epsilon_resnet.errors import RunError, UserError

import tensorflow as tf  # noqa: E402,I001

from reproduction import REPO, kept

CHECK_KEYS = ("images", "max_abs_logit_difference", "logit_tolerance", "logits_equal", "gated_error",
              "compressed_error", "per_batch_error", "batch_size")


def last_step(folder):
    return run_folder.read_metrics(folder)[-1]["global_step"]


def keep(run_dir, step, folder, data_dir):
    """The kept network of a run at `step` (its files and the gated weights alone), with its scores."""
    kept.copy_run_files(run_dir, step, folder)
    _, _, gated, _ = compression.load_gated(run_dir, step, data_dir)
    name = f"{run_folder.CHECKPOINT_NAME}-{step}"
    if not os.path.isfile(os.path.join(folder, name + ".index")):
        checkpoints.write_checkpoint(tf.train.Checkpoint(model=gated), folder, name)
    scores = score(folder, data_dir)
    write_atomic(os.path.join(folder, kept.SCORES_FILE), json.dumps(scores, indent=1) + "\n")
    return scores


def errors_by_batch_size(folder, step, data_dir):
    """{batch size: {val_error, val_error_per_batch}} of the kept gated network."""
    config = run_folder.read_config(folder)
    path = run_folder.checkpoint_path(folder, step)
    errors = {}
    for size in kept.BATCH_SIZES:
        sized = config_lib.replace(config, **{"train.eval_batch_size": size, "train.eval_batches": None,
                                              "model.gate_inference": "stored", "data.dir": data_dir})
        result, _ = scoring.score_checkpoint(sized, path)
        errors[str(size)] = {key: result[key] for key in ("val_error", "val_error_per_batch")}
    return errors


def remade_compression(folder, step, data_dir):
    """compress_run on a copy of the kept network (the kept folder is only read): its check, and its blocks."""
    with tempfile.TemporaryDirectory() as tmp:
        for name in os.listdir(folder):
            if name in (run_folder.CONFIG_FILE, run_folder.METRICS_FILE) or name.startswith(
                    f"{run_folder.CHECKPOINT_NAME}-{step}."):
                shutil.copyfile(os.path.join(folder, name), os.path.join(tmp, name))
        _, spec = compression.compress_run(tmp, step, data_dir=data_dir)
    return {**{key: spec.check[key] for key in CHECK_KEYS}, "discarded_blocks": list(spec.discarded_blocks)}


def score(folder, data_dir):
    """A kept network's scores: errors by evaluation batch size, and its compression made again."""
    step = last_step(folder)
    recorded = compressed_cfg.read(os.path.join(folder, run_folder.compressed_name(step) + ".cfg"))
    compression_check = remade_compression(folder, step, data_dir)
    return {"step": step, "batch_sizes": errors_by_batch_size(folder, step, data_dir),
            "compression": {**compression_check,
                            "same_blocks_as_recorded": compression_check["discarded_blocks"]
                            == list(recorded.discarded_blocks)}}


def differences(run, fresh):
    """What the fresh scores of a run say otherwise than its recorded numbers, as lines."""
    images = fresh["compression"]["images"]

    def same(a, b):  # errors are counts of images
        return round(a * images) == round(b * images)

    at_128 = fresh["batch_sizes"]["128"]
    pairs = [("error", run["error"], at_128["val_error"]),
             ("error_per_batch", run["error_per_batch"], at_128["val_error_per_batch"])]
    pairs += [(f"batch {size} {key}", run["scores"]["batch_sizes"][size][key], value)
              for size, errors in fresh["batch_sizes"].items() for key, value in errors.items()]
    compressed = run["compression"]
    pairs += [("compressed_error", compressed["compressed_error"], fresh["compression"]["compressed_error"])]
    lines = [f"{what}: recorded {a:.4f}, re-scored {b:.4f}" for what, a, b in pairs if not same(a, b)]
    if not fresh["compression"]["logits_equal"]:
        lines.append(f"the re-made compressed network's logits differ by {fresh['compression']['max_abs_logit_difference']:.3g}")
    if fresh["compression"]["discarded_blocks"] != compressed["discarded_blocks"]:
        lines.append(f"blocks removed: recorded {compressed['discarded_blocks']}, re-made "
                     f"{fresh['compression']['discarded_blocks']}")
    return lines


def runs_of(results_path):
    """(name, recorded numbers, kept folder) of every run of a results file."""
    with open(results_path) as f:
        results = json.load(f)
    if any("kept" not in run for run in results["runs"]):
        raise RunError(f"{results_path} names no kept network for its runs (results of protocol version 1): "
                       f"expected a results file written by python -m reproduction since version 2")
    return [(run["name"], run, os.path.join(REPO, run["kept"])) for run in results["runs"]]


def kept_runs(folders):
    """(name, recorded numbers, kept folder) of kept networks named by their folders."""
    return [(os.path.basename(os.path.normpath(folder)), kept.recorded_numbers(folder), folder) for folder in folders]


def check(runs, data_dir):
    """Re-score every (name, recorded numbers, kept folder); returns the number of runs whose numbers differ."""
    differing = 0
    for name, recorded, folder in runs:
        lines = differences(recorded, score(folder, data_dir))
        differing += bool(lines)
        print(f"{name}: {'DIFFERS' if lines else 'same numbers'}" + "".join(f"\n  {line}" for line in lines),
              flush=True)
    return differing


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m reproduction.score", description=__doc__.split("\n\n")[0],
                                     allow_abbrev=False)
    commands = parser.add_subparsers(dest="command", required=True)
    keeping = commands.add_parser("keep", help="make a finished run's kept network and its scores.json",
                                  allow_abbrev=False)
    keeping.add_argument("--run-dir", required=True)
    keeping.add_argument("--step", type=int, required=True)
    keeping.add_argument("--out", required=True, help="the kept network's folder")
    checking = commands.add_parser("check", help="re-score every kept network of a results file and compare",
                                   allow_abbrev=False)
    checked = checking.add_mutually_exclusive_group()
    checked.add_argument("--results", default=os.path.join("reproduction", "results", "cifar10_reproduction.json"),
                         help="compare with this results file (default %(default)s)")
    checked.add_argument("--kept", nargs="+", metavar="DIR",
                         help="instead: these kept networks, each compared with the numbers its own files record")
    for sub in (keeping, checking):
        sub.add_argument("--data", required=True, help="folder with cifar-10-batches-py")
    args = parser.parse_args(argv)
    try:
        if args.command == "keep":
            keep(args.run_dir, args.step, args.out, os.path.abspath(args.data))
            return
        source = " ".join(args.kept) if args.kept else args.results
        differing = check(kept_runs(args.kept) if args.kept else runs_of(args.results), os.path.abspath(args.data))
    except (UserError, OSError) as err:
        sys.exit(f"error: {err}")
    if differing:
        sys.exit(f"{differing} run(s) re-score to other numbers than {source}")
    print(f"every run re-scores to the numbers of {source}")


if __name__ == "__main__":
    main()
