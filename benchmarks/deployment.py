"""The compressed network where it is deployed: latency, throughput, file size and accuracy of
ResNet-110 against its compressed versions in TensorFlow, onnxruntime and LiteRT (float32, int8).

Timing: ResNet-110 (random weights; timing does not depend on them) without gates, and the
networks compression.compress_model makes of it with 22% and 83% of its 54 blocks removed (the
paper's shares; the blocks are spread evenly over the stages, each stage's first kept), each
exported by epsilon_resnet.export (every file checked against the Keras network; int8
calibrated on CIFAR-10 training images). Five runtimes per network: Keras' `model.predict`
(how this project's scripts run a network today), the SavedModel's tf.function `serve`,
onnxruntime, LiteRT float32 and LiteRT int8, each with every core; latency per image at batch 1
and throughput at batch 32. All 30 variants are timed in interleaved rounds
(benchmarks/common.py), a block of calls each, and every ratio is the geometric mean of the
per-round ratios with a 95% interval.

Accuracy: the reproduction's kept final ε-ResNet networks (reproduction/results/networks/,
real CIFAR-10 training), compressed as compressModel.py does and exported in every format,
int8 calibrated on 500 training images; their test errors are reported, never chosen on.

Targets (judged on the whole interval):
1. in every runtime, compressed / full latency (batch 1) <= MAC ratio + 0.10;
2. compressed / full file size <= parameter ratio + 0.10, in every format;
3. int8 LiteRT costs at most 1 point of test error on the kept networks, and is at least 1.5x
   as fast as float32 LiteRT on the same network (batch 1);
4. compressed (83%) int8 LiteRT at batch 1 answers at least 30x as fast as the full float32
   network through model.predict.

    python -m benchmarks.deployment [--minutes 5]; then --render puts the report into
    docs/deployment.md and its summary into README.md
"""
import argparse
import glob
import importlib.metadata
import json
import os
import sys
import tempfile
import time

from benchmarks import REPO, RESULTS_DIR, common  # common first: it quietens TensorFlow's C++ log

import keras
import numpy as np

from epsilon_resnet import compression, data, export
from epsilon_resnet.networks import build_resnet
from epsilon_resnet.provenance import splice_readme
from epsilon_resnet.structures import architecture_for, cifar_resnet

NAME = "deployment"
SHARES = (0.22, 0.83)
RUNTIMES = ("tf_predict", "tf_function", "onnxruntime", "litert_float32", "litert_int8")
BATCHES = (1, 32)
KEPT_RUNS = os.path.join("reproduction", "results", "networks", "final-eps7.5-s1*")
MARKERS = ("<!-- deployment: begin -->", "<!-- deployment: end -->")  # in both pages
REPORT_PAGE, SUMMARY_PAGE = os.path.join("docs", "deployment.md"), "README.md"
MARGIN, INT8_POINTS, INT8_SPEEDUP, DEPLOYED_SPEEDUP = 0.10, 1.0, 1.5, 30.0
TIMED_CALIBRATION = 100  # training images calibrating the timed (random-weight) networks' int8 files
PACKAGES = ("tensorflow", "keras", "onnxruntime", "ai-edge-litert", "tf2onnx", "onnx")


def removed_blocks(architecture, share):
    """round(share × blocks) blocks, an equal number per stage, spread evenly over units 1.. of
    each (unit 0 only in a stage of one unit: tiny smoke runs)."""
    per_stage = round(share * architecture.gated_blocks / len(architecture.stage_units))
    first = [1 if units > 1 else 0 for units in architecture.stage_units]
    return [architecture.block_name(stage, int(unit)) for stage, units in enumerate(architecture.stage_units)
            for unit in np.unique(np.round(np.linspace(first[stage], units - 1, min(per_stage, units - first[stage]))))]


def timed_networks(n, pixel_mean):
    """{name: (plain network, removed blocks)}: full ResNet-(6n+2) and its compressed versions."""
    architecture = cifar_resnet(n, side_output=False)
    keras.utils.set_random_seed(0)
    gated = build_resnet(architecture, 10, epsilon=0.0, pixel_mean=pixel_mean, pixel_scale=1 / 128)
    networks = {}
    for name, share in (("full", 0.0), *((f"removed_{round(s * 100)}%", s) for s in SHARES)):
        discarded = removed_blocks(architecture, share) if share else []
        networks[name] = (compression.compress_model(gated, architecture, discarded)[0], discarded)
    return networks


def file_size(path):
    if os.path.isfile(path):
        return os.path.getsize(path)
    return sum(os.path.getsize(os.path.join(root, f)) for root, _, files in os.walk(path) for f in files)


def export_all(network, folder, check_batches, calibration):
    """Export to every format and int8, float32 input (uint8 files differ by a cast);
    {(format, quantize, "float32"): check result}."""
    _, report, _ = export.export(network, os.path.join(folder, "float"), export.FORMATS, check_batches,
                                 dtypes=("float32",))
    _, int8, _ = export.export(network, os.path.join(folder, "int8"), ("litert",), check_batches, "int8",
                               calibration, dtypes=("float32",))
    return {**report, **int8}


def runners(network, report):
    """{runtime: function(float32 images) -> logits}, every runtime on every core."""
    threads = common.cores()
    path = {key[:2]: result["file"] for key, result in report.items() if key[2] == "float32"}
    by_batch = {}  # one Keras model per batch size: model.predict traces once per model and input shape

    def predict(images):
        return by_batch.setdefault(len(images), export.logits_model(network)).predict(images, verbose=0)
    return {"tf_predict": predict,
            "tf_function": export.load_runner("saved_model", path[("saved_model", None)]),
            "onnxruntime": export.load_runner("onnx", path[("onnx", None)], threads=threads),
            "litert_float32": export.load_runner("litert", path[("litert", None)], threads=threads),
            "litert_int8": export.load_runner("litert", path[("litert", "int8")], threads=threads)}


def timing_blocks(runs, block_seconds):
    """{(network, runtime, batch): (block, calls)}: a block makes as many calls as fill about
    block_seconds (measured after two warm-up calls)."""
    blocks = {}
    for network, by_runtime in runs.items():
        for runtime, run in by_runtime.items():
            for batch in BATCHES:
                images = common.random_cifar_batch(batch, seed=batch)[0].astype(np.float32)
                run(images), run(images)
                start = time.perf_counter()
                run(images)
                calls = max(1, round(block_seconds / (time.perf_counter() - start)))
                blocks[(network, runtime, batch)] = (common.repeat(lambda run=run, images=images: run(images), calls),
                                                     calls)
    return blocks


def kept_accuracy(pattern, cifar_data, folder):
    """{run: {format: test error}} of the kept ε-ResNet networks, compressed and exported."""
    accuracy = {}
    for run_dir in sorted(glob.glob(pattern)):
        cfg = sorted(glob.glob(os.path.join(run_dir, "compressed_model_*.cfg")))[-1]
        step = int(cfg.rsplit("_", 1)[1].split(".")[0])
        config, source, gated, _ = compression.load_gated(run_dir, step, cifar_data)
        discarded, _ = compression.decide_at_inference(gated)
        network = compression.compress_model(gated, architecture_for(config.model, source.family, source.image_shape),
                                               discarded)[0]
        batches = [(x.numpy(), y.numpy()) for x, y in source.eval_dataset(500)]
        report = export_all(network, os.path.join(folder, os.path.basename(run_dir)), batches,
                            export.calibration_from(source))
        errors = {"tensorflow": next(iter(report.values()))["network_error"]}
        for (fmt, quantize, dtype), result in report.items():
            errors[f"{export.entry_name(fmt, quantize)}_{dtype}"] = result["error"]
        accuracy[os.path.basename(run_dir)] = {
            "step": step, "removed_blocks": len(discarded), "test_images": source.num_eval, "errors": errors,
            "int8_minus_float_points": 100 * (errors["litert_int8_float32"] - errors["tensorflow"]),
            "max_abs_logit_difference": {f"{export.entry_name(f, q)}_{d}": r["max_abs_logit_difference"]
                                         for (f, q, d), r in report.items()}}
    return accuracy


def undecided(ratio, limit):
    """The reason of an interval verdict's MISS when the interval straddles the limit."""
    return (f"the interval {ratio['low']:.3f}–{ratio['high']:.3f} reaches past {limit:.3f}: the machine's noise "
            f"(see machine.other_processes_cpu_share) leaves it undecided" if ratio["low"] <= limit else None)


def latency_reason(result, name, runtime, limit):
    """Why a latency ratio misses: noise, or a per-call cost that removing blocks does not shrink."""
    ratio = result["ratios"][f"{name}/full {runtime} batch 1"]
    seconds = result["seconds_per_image"]
    full, small = (1e3 * seconds[f"{n} {runtime} batch 1"] for n in ("full", name))
    batched = result["ratios"][f"{name}/full {runtime} batch 32"]["ratio"]
    return undecided(ratio, limit) or (
        f"a cost per call that removing blocks does not shrink: at batch 1 the compressed network takes "
        f"{small:.2f} ms against the full network's {full:.2f} ms, where its MACs alone would take "
        f"{result['networks'][name]['mac_ratio'] * full:.2f} ms; per image at batch 32 the ratio is {batched:.3f}")


def judge(result):
    """The four targets, each with its measured value, verdict and, for a miss, the measured reason."""
    targets, ratios, nets = [], result["ratios"], result["networks"]
    for name in nets:
        if name == "full":
            continue
        limit = nets[name]["mac_ratio"] + MARGIN
        for runtime in RUNTIMES:
            ratio = ratios[f"{name}/full {runtime} batch 1"]
            verdict = common.interval_verdict(ratio, limit)
            targets.append({"target": f"{name}: {runtime} latency ratio <= MAC ratio + {MARGIN:.2f} = {limit:.3f}",
                            "measured": ratio, "verdict": verdict,
                            "reason": latency_reason(result, name, runtime, limit) if verdict == "MISS" else None})
        limit = nets[name]["param_ratio"] + MARGIN
        for fmt, size in result["file_sizes"][name].items():
            value = size / result["file_sizes"]["full"][fmt]
            verdict = common.verdict(value, limit)
            weights = nets[name]["params"] * (1 if fmt.endswith("int8") else 4) / 1e6
            targets.append({"target": f"{name}: {fmt} file size ratio <= parameter ratio + {MARGIN:.2f} = {limit:.3f}",
                            "measured": value, "verdict": verdict,
                            "reason": f"a part that does not shrink with the weights: the file holds {size / 1e6:.2f} MB "
                                      f"for about {weights:.2f} MB of weights" if verdict == "MISS" else None})
    for run, scores in result["accuracy"].items():
        verdict = common.verdict(scores["int8_minus_float_points"], INT8_POINTS)
        errors = scores["errors"]
        targets.append({"target": f"{run}: int8 LiteRT test error - TensorFlow's <= {INT8_POINTS:g} point",
                        "measured": scores["int8_minus_float_points"], "verdict": verdict,
                        "reason": f"calibrated int8 error {100 * errors['litert_int8_float32']:.2f}% against float "
                                  f"{100 * errors['tensorflow']:.2f}%" if verdict == "MISS" else None})
    for name in nets:
        ratio, limit = ratios[f"{name} litert_int8/litert_float32 batch 1"], 1 / INT8_SPEEDUP
        verdict = common.interval_verdict(ratio, limit)
        batched = ratios[f"{name} litert_int8/litert_float32 batch 32"]["ratio"]
        targets.append({"target": f"{name}: int8 / float32 LiteRT latency <= 1/{INT8_SPEEDUP:g}", "measured": ratio,
                        "verdict": verdict,
                        "reason": (undecided(ratio, limit) or f"int8 kernels save less than that on this CPU: "
                                   f"{ratio['ratio']:.3f} at batch 1, {batched:.3f} per image at batch 32")
                        if verdict == "MISS" else None})
    deployed = f"removed_{round(SHARES[-1] * 100)}%"
    ratio, limit = ratios[f"{deployed} litert_int8 / full tf_predict batch 1"], 1 / DEPLOYED_SPEEDUP
    verdict = common.interval_verdict(ratio, limit)
    targets.append({"target": f"{deployed} int8 LiteRT / full model.predict latency <= 1/{DEPLOYED_SPEEDUP:g}",
                    "measured": ratio, "verdict": verdict,
                    "reason": undecided(ratio, limit) or f"{1 / ratio['ratio']:.1f}x faster, not {DEPLOYED_SPEEDUP:g}x"
                    if verdict == "MISS" else None})
    return targets


def measured(value):
    if isinstance(value, dict):
        return f"{value['ratio']:.3f} ({value['low']:.3f}–{value['high']:.3f})"
    return f"{value:.3f}"


def measured_on(result):
    """Where and with what the results were measured: CPU, date, commit, runtime versions."""
    machine = result["machine"]
    versions = ", ".join(f"{k} {v}" for k, v in result["runtime_versions"].items())
    return (f"{machine['cpu_model']}, {machine['cores']} cores, {result['date'][:10]}, commit "
            f"{(result['commit'] or '?')[:7]}; {versions}")


def latency_table(result):
    """Milliseconds per image at batch 1 / 32 per runtime and network, and the ratios to the full one."""
    nets = result["networks"]
    lines = ["| runtime | " + " | ".join(nets) + " | " + " | ".join(f"{n} / full" for n in nets if n != "full") + " |",
             "|---|" + "---|" * (2 * len(nets) - 1)]
    for runtime in RUNTIMES:
        cells = [f"{1e3 * result['seconds_per_image'][f'{n} {runtime} batch 1']:.2f} / "
                 f"{1e3 * result['seconds_per_image'][f'{n} {runtime} batch 32']:.2f}" for n in nets]
        cells += [measured(result["ratios"][f"{n}/full {runtime} batch 1"]) for n in nets if n != "full"]
        lines.append(f"| {runtime} | " + " | ".join(cells) + " |")
    return lines


def render_summary(result):
    """The README's few lines: the latency table and the targets' count, linking the report."""
    verdicts = [t["verdict"] for t in result["targets"]]
    return "\n".join([f"{measured_on(result)}. Milliseconds per image at batch 1 / at batch 32, and the "
                      f"compressed / full ratio at batch 1 (95% interval):", "", *latency_table(result), "",
                      f"Targets: {verdicts.count('PASS')} of {len(verdicts)} met, {len(verdicts) - verdicts.count('PASS')} "
                      f"missed; file sizes, int8 accuracy and every target with its measured reason are in "
                      f"[docs/deployment.md](docs/deployment.md)."]) + "\n"


def render_markdown(result):
    """docs/deployment.md's report: a function of the results file alone."""
    machine, nets = result["machine"], result["networks"]
    lines = [f"{measured_on(result)}. ResNet-{6 * result['args']['n'] + 2} (random weights) "
             f"and its compressed versions: "
             + "; ".join(f"{name} {nets[name]['removed_blocks']} blocks removed, MAC ratio {nets[name]['mac_ratio']:.3f}, "
                         f"parameter ratio {nets[name]['param_ratio']:.3f}" for name in nets if name != "full")
             + f". {result['rounds']} interleaved rounds; other processes kept "
               f"{machine['other_processes_cpu_share']:.0%} of the cores busy"
             + (" (a CIFAR training among them)" if machine["other_training_running"] else "")
             + ". Milliseconds per image at batch 1 / at batch 32, and the compressed / full ratio at batch 1 "
               "(95% interval):", "", *latency_table(result)]
    lines += ["", "File sizes (MB): " + "; ".join(
        f"{fmt} " + " / ".join(f"{result['file_sizes'][n][fmt] / 1e6:.2f}" for n in nets)
        for fmt in result["file_sizes"]["full"]) + f" ({' / '.join(nets)}).", ""]
    if result["accuracy"]:
        formats = list(next(iter(result["accuracy"].values()))["errors"])
        lines += ["Test error (%) of the reproduction's kept ε-ResNet-32 networks (CIFAR-10, 10,000 test images), "
                  "compressed and exported; reported, never chosen on:", "",
                  "| network | " + " | ".join(formats) + " |", "|---|" + "---|" * len(formats)]
        for run, scores in result["accuracy"].items():
            lines.append(f"| {run} | " + " | ".join(f"{100 * scores['errors'][f]:.2f}" for f in formats) + " |")
        lines.append("")
    lines += ["| target | measured | verdict | reason of a miss (measured) |", "|---|---|---|---|"]
    lines += [f"| {t['target']} | {measured(t['measured'])} | {t['verdict']} | {t['reason'] or ''} |"
              for t in result["targets"]]
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--n", type=int, default=18, help="CIFAR ResNet depth 6n+2 of the timed networks (18: ResNet-110)")
    parser.add_argument("--minutes", type=float, default=5.0, help="time budget of the timed rounds")
    parser.add_argument("--rounds", type=int, default=1000, help="timed rounds at most")
    parser.add_argument("--block-seconds", type=float, default=0.1, help="about how long one timed block runs")
    parser.add_argument("--cifar-data", default="/tmp/cifar10", help="CIFAR-10 folder: calibration and test images")
    parser.add_argument("--runs", default=KEPT_RUNS, help="run folders of the kept networks to score ('' for none)")
    parser.add_argument("--render", action="store_true",
                        help=f"only render results/{NAME}.json: the report into {REPORT_PAGE}, its summary into "
                             f"{SUMMARY_PAGE}, each between its deployment markers")
    args = parser.parse_args(argv)
    if args.render:
        with open(os.path.join(RESULTS_DIR, f"{NAME}.json"), encoding="utf-8") as f:
            result = json.load(f)
        for page, render in ((REPORT_PAGE, render_markdown), (SUMMARY_PAGE, render_summary)):
            splice_readme(os.path.join(REPO, page), render(result), MARKERS)
        return print(f"rendered results/{NAME}.json into {REPORT_PAGE} and {SUMMARY_PAGE}")
    watch = common.MachineWatch()
    cifar = data.get_source("cifar10", args.cifar_data)
    with tempfile.TemporaryDirectory(prefix="deployment-") as folder:
        accuracy = kept_accuracy(args.runs, args.cifar_data, folder) if args.runs else {}
        networks = timed_networks(args.n, cifar.pixel_mean)
        calibration = export.calibration_from(cifar, count=TIMED_CALIBRATION)  # random weights: for timing only
        check = [(common.random_cifar_batch(32, seed=5)[0].astype(np.float32), None)]
        runs, sizes, costs = {}, {}, {}
        for name, (network, _) in networks.items():
            report = export_all(network, os.path.join(folder, name), check, calibration)
            runs[name] = runners(network, report)
            sizes[name] = {f"{export.entry_name(f, q)}": file_size(r["file"]) for (f, q, d), r in report.items()
                           if d == "float32"}
            costs[name] = compression.network_cost(network)
        blocks = timing_blocks(runs, args.block_seconds)
        times = common.interleaved_times({key: block for key, (block, _) in blocks.items()}, args.rounds, warmup=1,
                                         budget=args.minutes * 60)["wall"]
    per_image = {" ".join((n, r, f"batch {b}")): [t / calls / b for t in times[(n, r, b)]]
                 for (n, r, b), (_, calls) in blocks.items()}
    ratios = {}
    for name in networks:
        for batch in BATCHES:
            for runtime in RUNTIMES:
                if name != "full":
                    ratios[f"{name}/full {runtime} batch {batch}"] = common.paired_ratio(
                        per_image, f"{name} {runtime} batch {batch}", f"full {runtime} batch {batch}")
            ratios[f"{name} litert_int8/litert_float32 batch {batch}"] = common.paired_ratio(
                per_image, f"{name} litert_int8 batch {batch}", f"{name} litert_float32 batch {batch}")
    deployed = f"removed_{round(SHARES[-1] * 100)}%"
    ratios[f"{deployed} litert_int8 / full tf_predict batch 1"] = common.paired_ratio(
        per_image, f"{deployed} litert_int8 batch 1", "full tf_predict batch 1")
    full = costs["full"]
    result = {"networks": {name: {"removed_blocks": len(networks[name][1]), **costs[name],
                                  "mac_ratio": costs[name]["macs"] / full["macs"],
                                  "param_ratio": costs[name]["params"] / full["params"],
                                  "removed": networks[name][1]} for name in networks},
              "seconds_per_image": {key: float(np.median(values)) for key, values in per_image.items()},
              "calls_per_block": {" ".join((n, r, f"batch {b}")): calls for (n, r, b), (_, calls) in blocks.items()},
              "rounds": len(next(iter(times.values()))), "ratios": ratios, "file_sizes": sizes,
              "accuracy": accuracy, "timed_calibration_images": len(calibration.record["indices"]),
              "kept_calibration_images": export.CALIBRATION_IMAGES,
              "runtime_versions": {p: importlib.metadata.version(p) for p in PACKAGES}}
    result["targets"] = judge(result)
    for target in result["targets"]:
        print(f"{target['verdict']}: {target['target']}: measured {measured(target['measured'])}"
              + (f"; {target['reason']}" if target["reason"] else ""))
    result = common.finish(NAME, parser, args, result, watch)
    print(render_markdown(result))
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
