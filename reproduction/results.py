"""The results document: every run's record, read back from its kept network (reproduction/kept.py)
through the project's own readers (metrics.jsonl, the .cfg), the selection, the final summaries,
the targets."""
import dataclasses
import hashlib
import os

from epsilon_resnet import compressed_cfg, run_folder, structures
from epsilon_resnet.structures import cifar_resnet
from reproduction import kept, shown
from reproduction.selection import SELECTION_RULE, TOLERANCE, choose_epsilon, stats

SCHEMA = 2
CURVES = ("epoch", "global_step", "val_error", "train_error", "discarded_cnt", "learning_rate", "epsilon")
RESPONSE = "response_abs_max"  # moving average of max|F| over the batch: what ε is compared with


def sha256_file(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def training_record(entry, invocation):
    """Whether this invocation trained the run (from scratch or resumed) or found it finished; all sessions."""
    sessions = entry["sessions"]
    here = [s for s in sessions if s["invocation"] == invocation]
    status = ("found finished" if not here else "trained in this invocation" if here[0]["from_epoch"] == 0
              else f"resumed from epoch {here[0]['from_epoch']} in this invocation")
    return {"this_invocation": status, "cpu_minutes": sum(s["cpu_seconds"] for s in sessions) / 60,
            "sessions": sessions}


def compression_record(run, entry, last, evaluation):
    """What compressModel.py wrote at the last step and what the compressed network scored."""
    step = last["global_step"]
    cfg = os.path.join(run.kept_dir, run_folder.compressed_name(step) + ".cfg")
    spec = compressed_cfg.read(cfg)
    check, cost, stages = spec.check, spec.cost, entry["stages"]
    return {
        "step": step, "cfg": shown(cfg), "discarded_blocks": list(spec.discarded_blocks),
        "removed": len(spec.discarded_blocks),
        "params": {"full": cost["full"]["params"], "compressed": cost["compressed"]["params"]},
        "macs": {"full": cost["full"]["macs"], "compressed": cost["compressed"]["macs"]},
        "check": {key: check[key] for key in ("images", "max_abs_logit_difference", "logit_tolerance",
                                              "logits_equal", "gated_error", "compressed_error", "per_batch_error",
                                              "batch_size")},
        "flickering": [{"block": f["block"], "closed_rate": f["closed_rate"]} for f in spec.flickering_blocks],
        "compressed_error": evaluation["val_error"],  # cifarCompressedResnet.py's score of the compressed network
        # Lossless: compressModel.py found the logits equal to the inference-mode gated network's on every image.
        "lossless": check["logits_equal"],
        "warnings": list(spec.warnings),
        "cpu_minutes": {stage: stages[stage]["cpu_seconds"] / 60 for stage in ("compress", "evaluate", "keep")},
    }


def run_record(run, invocation):
    """Everything the results say about one run, from its kept network: metrics.jsonl, .cfg, scores, run.json."""
    records = run_folder.read_metrics(run.kept_dir)
    last, done, recorded = records[-1], kept.read_json(run.kept_dir, kept.RUN_FILE), kept.recorded_numbers(run.kept_dir)
    entry = done["ledger"]
    gates = {block: [r.get(run_folder.block_metric(block, structures.IS_DISCARDED)) for r in records]
             for block in run_folder.block_metrics(last, structures.IS_DISCARDED)}
    responses = {block: [r.get(run_folder.block_metric(block, RESPONSE)) for r in records]
                 for block in run_folder.block_metrics(last, RESPONSE)}
    compression = compression_record(run, entry, last, done["compressed_evaluation"])
    blocks = cifar_resnet(run.config["model"]["n"]).gated_blocks
    return {
        "name": run.name, "phase": run.phase, "kind": run.kind, "split": run.split, "holdout": run.holdout,
        "seed": run.seed, "epsilon": run.epsilon,
        "config": {"path": shown(run.config_path), "sha256": run.sha256, "made_from": shown(run.base),
                   "content": run.config},
        "run_dir": shown(run.run_dir), "kept": shown(run.kept_dir), "training": training_record(entry, invocation),
        "epochs": last["epoch"], "global_step": last["global_step"], "blocks": blocks,
        # error: inference mode, held-out for a selection run, test for a final run; error_per_batch: the
        # original's per-batch gates at the eval batch size; scores: at each eval batch size, both semantics
        **{key: recorded[key] for key in ("error", "error_per_batch", "scores")},
        "closed_at_end": last.get("discarded_cnt"),
        "curves": {key: [r.get(key) for r in records] for key in CURVES},
        "gates": gates, "responses": responses, "compression": compression,
        "compressed_depth": 2 * (blocks - compression["removed"]) + 2,
    }


def selection_summary(records, protocol):
    """The held-out numbers per candidate, and the choice made from them."""
    chosen = [r for r in records if r["phase"] == "select"]
    plain = [r for r in chosen if r["kind"] == "plain"]
    candidates = []
    for epsilon in protocol.selection.epsilons:
        runs = [r for r in chosen if r["kind"] == "eps" and r["epsilon"] == float(epsilon)]
        candidates.append({"epsilon": float(epsilon), "runs": [r["name"] for r in runs],
                           "error": stats(r["error"] for r in runs),
                           "error_per_batch": stats(r["error_per_batch"] for r in runs),
                           "removed": stats(r["compression"]["removed"] for r in runs),
                           "lossless": all(r["compression"]["lossless"] for r in runs)})
    plain_error, blocks = stats(r["error"] for r in plain), chosen[0]["blocks"]
    epsilon, reason = choose_epsilon(plain_error["mean"], candidates, blocks, protocol.targets)
    return {"plain": {"runs": [r["name"] for r in plain], "error": plain_error,
                      "error_per_batch": stats(r["error_per_batch"] for r in plain)}, "candidates": candidates,
            "blocks": blocks, "chosen_epsilon": epsilon, "reason": reason}


def final_summary(records, kind):
    """Mean ± sd over the seeds of one configuration's final runs."""
    runs = [r for r in records if r["phase"] == "final" and r["kind"] == kind]
    compression = [r["compression"] for r in runs]
    return {
        "runs": [r["name"] for r in runs], "seeds": [r["seed"] for r in runs], "epsilon": runs[0]["epsilon"],
        "blocks": runs[0]["blocks"], "depth": 2 * runs[0]["blocks"] + 2, "epochs": runs[0]["epochs"],
        "test_error": stats(r["error"] for r in runs),
        "test_error_per_batch": stats(r["error_per_batch"] for r in runs),
        "batch_sizes": {size: {key: stats(r["scores"]["batch_sizes"][size][key] for r in runs)
                               for key in ("val_error", "val_error_per_batch")}
                        for size in runs[0]["scores"]["batch_sizes"]},
        "cpu_minutes": stats(r["training"]["cpu_minutes"] for r in runs),
        "removed": stats(c["removed"] for c in compression),
        "compressed_depth": stats(r["compressed_depth"] for r in runs),
        "params": {"full": compression[0]["params"]["full"],
                   "compressed": stats(c["params"]["compressed"] for c in compression)},
        "macs": {"full": compression[0]["macs"]["full"],
                 "compressed": stats(c["macs"]["compressed"] for c in compression)},
        "compressed_error": stats(c["compressed_error"] for c in compression),
        "lossless_runs": sum(c["lossless"] for c in compression),
        "logit_check": logit_check(compression),
    }


def logit_check(compression):
    """compressModel.py's check over runs: the largest |logit difference| and the range of the runs' tolerances
    (each run's is relative to its largest logit)."""
    checks = [c["check"] for c in compression]
    tolerances = [c["logit_tolerance"] for c in checks]
    return {"max_abs_logit_difference": max(c["max_abs_logit_difference"] for c in checks),
            "logit_tolerance": {"min": min(tolerances), "max": max(tolerances)}}


def logit_check_text(check):
    low, high = (f"{check['logit_tolerance'][end]:.3g}" for end in ("min", "max"))
    return (f"max |logit difference| {check['max_abs_logit_difference']:.3g}"
            f", tolerance {low if low == high else f'{low} to {high}'}")


def in_points(fraction):
    """An error difference in percentage points: 0.01 -> "1 point"."""
    value = fraction * 100
    return f"{value:g} point{'' if value == 1 else 's'}"


def check_targets(records, final, protocol):
    """The reproduction's targets, each met or missed, with the numbers."""
    plain, eps = final["plain"], final["eps"]
    targets, budget = protocol.targets, protocol.budget_cpu_minutes
    removed = eps["removed"]["mean"] / eps["blocks"]
    increase = eps["test_error"]["mean"] - plain["test_error"]["mean"]
    slowest = max(r["training"]["cpu_minutes"] for r in records)
    return [
        {"target": f"mean blocks discarded >= {targets.min_discarded_fraction:.0%} of the gated blocks",
         "met": removed >= targets.min_discarded_fraction - TOLERANCE,
         "measured": f"{eps['removed']['mean']:.2f} of {eps['blocks']} ({removed:.1%})"},
        {"target": f"mean ε-ResNet test error <= mean plain test error + {in_points(targets.max_error_increase)}",
         "met": increase <= targets.max_error_increase + TOLERANCE,
         "measured": f"{eps['test_error']['mean']:.2%} vs {plain['test_error']['mean']:.2%}: "
                     f"{increase * 100:+.2f} points"},
        {"target": "compressed network = inference-mode gated network in every ε-ResNet run (compressModel.py's "
                   "check: equal logits on every test image)",
         "met": eps["lossless_runs"] == len(eps["runs"]),
         "measured": f"{eps['lossless_runs']} of {len(eps['runs'])} runs; {logit_check_text(eps['logit_check'])}"},
        {"target": f"every training run <= {budget} CPU-minutes",
         "met": slowest <= budget, "measured": f"at most {slowest:.1f} over {len(records)} runs"},
    ]


def build_results(runs, protocol, context):
    """The results document: every run, the selection, the final summaries, the targets."""
    records = [run_record(run, context["invocation"]["date"]) for run in runs]
    final = {kind: final_summary(records, kind) for kind in ("plain", "eps")}
    return {
        "schema": SCHEMA, "command": context["command"],
        "protocol": {"path": shown(context["protocol_path"]), "sha256": sha256_file(context["protocol_path"]),
                     "content": dataclasses.asdict(protocol)},
        "selection_rule": SELECTION_RULE, "data": context["data"], "invocation": context["invocation"],
        "runs": records, "selection": selection_summary(records, protocol), "final": final,
        "targets": check_targets(records, final, protocol), "files": None, "figures": None,
    }
