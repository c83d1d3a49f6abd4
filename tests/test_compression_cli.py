"""compressModel.py and cifarCompressedResnet.py end to end: a short ε-ResNet run on a tiny
CIFAR-10 whose blocks all close (ε = 1e3, EMA decay 0.5), compressed at its last step,
evaluated, exported; and the command lines' errors."""
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from data_fixtures import write_cifar10_python
from epsilon_resnet import checkpoints, compressed_cfg, data, scoring
from epsilon_resnet import config as config_lib
from epsilon_resnet.run_folder import read_metrics
from epsilon_resnet.cli import (compress_main, cifar_compressed_main, imagenet_compressed_main, imagenet_main,
                                cifar_main, svhn_compressed_main)
from cli_helpers import exit_code, snapshot, write_tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def python(*args, cwd, pythonpath=ROOT):
    env = {**os.environ, "PYTHONPATH": pythonpath, "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.run([sys.executable, *map(str, args)], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """train_log.tiny/ after 3 epochs of 10 steps of ResNet-8 (n=1), every gate closed throughout."""
    work = tmp_path_factory.mktemp("work")
    data_dir = write_cifar10_python(str(work / "data"), num_train=40, num_test=16, seed=0)
    config = {"data": {"name": "cifar10", "dir": data_dir},
              "model": {"n": 1, "epsilon": 1e3, "gate_ema_decay": 0.5},
              "train": {"batch_size": 8, "eval_batch_size": 8, "max_epoch": 3, "steps_per_epoch": 10, "seed": 0}}
    (work / "tiny.yaml").write_text(json.dumps(config))  # JSON is YAML
    done = python(os.path.join(ROOT, "scripts", "cifarEpsilonResnet.py"), "--config", "tiny.yaml", "-o", "tiny",
                  cwd=work)
    assert done.returncode == 0, done.stderr[-3000:]
    return work, work / "train_log.tiny", data_dir


def test_compress_evaluate_and_export_reproduce_the_gated_network(trained, tmp_path, capsys):
    work, run_dir, data_dir = trained
    record = read_metrics(str(run_dir))[-1]
    step = record["global_step"]
    assert step == 30 and record["discarded_cnt"] == pytest.approx(3.0, abs=1e-6)  # every average reached 1
    before = snapshot(run_dir)

    assert exit_code(compress_main, "--dir", work, "--step", step) == 0
    out = capsys.readouterr().out
    assert "discarded 3 of 3 blocks" in out and "logits equal (max |difference| 0," in out
    assert f"the original's per-batch gates at batch 8: error {record['val_error_per_batch']:.4f}" in out
    after = snapshot(run_dir)
    assert {k: v for k, v in after.items() if k in before} == before  # byte for byte
    assert sorted(set(after) - set(before)) == [f"compressed_model_{step}.cfg",
                                                f"compressed_model_{step}.data-00000-of-00001",
                                                f"compressed_model_{step}.index"]
    cfg_path = run_dir / f"compressed_model_{step}.cfg"
    spec = compressed_cfg.read(str(cfg_path))
    assert spec.architecture.units() == [(0, 0), (1, 0), (2, 0)]
    assert spec.discarded_blocks == ("res1.0", "res2.0", "res3.0")

    # A second compression of the same step is refused and changes nothing.
    assert exit_code(compress_main, "--dir", run_dir, "--step", step) == 1
    assert "already holds" in capsys.readouterr().err and snapshot(run_dir) == after

    export = tmp_path / "exported"
    assert exit_code(cifar_compressed_main, "--cfg", cfg_path, "--cifar10", "--export", export, "--format",
                     "saved_model", "onnx", "litert", "--quantize", "int8") == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == f"Error: {record['val_error']}"
    # Every file checked in its runtime on the 16 test images, int8 beside the float network.
    checks = printed[1:-1]
    assert len(checks) == 6 and printed[-1] == f"exported the network to {export}"
    for line, name in zip(checks, ["saved_model (float32", "saved_model (uint8", "onnx/float32.onnx (float32",
                                   "onnx/uint8.onnx (uint8", "litert_int8/float32.tflite (float32",
                                   "litert_int8/uint8.tflite (uint8"]):
        assert line.startswith(f"{export}/{name} input): largest |logit difference| to the TensorFlow network ")
        assert "on 16 images" in line and f"(TensorFlow network {record['val_error']:.4f})" in line
        assert ("int8: not expected to equal" in line) == ("litert_int8" in name) != ("matches" in line)
    calibration = json.loads((export / "litert_int8" / "calibration.json").read_text())
    assert calibration["indices"] == list(range(40))  # all 40 training images: never a test image
    assert sorted(os.listdir(export)) == ["litert_int8", "onnx", "saved_model"]

    # The SavedModel runs with TensorFlow alone (no epsilon_resnet on the path) and gives the same
    # logits, on float32 and on uint8 pixels.
    images = np.concatenate([x.numpy() for x, _ in data.get_source("cifar10", data_dir).eval_dataset(8)])
    np.save(tmp_path / "images.npy", images)
    script = ("import sys, numpy as np, tensorflow as tf\n"
              "model = tf.saved_model.load('exported/saved_model')  # kept: a temporary would lose its variables\n"
              "logits = model.serve(tf.constant(np.load('images.npy'))).numpy()\n"
              "pixels = tf.constant(np.load('images.npy').astype(np.uint8))\n"
              "assert np.array_equal(model.serve(pixels).numpy(), logits)\n"
              "assert 'epsilon_resnet' not in sys.modules\n"
              "np.save('served.npy', logits)\n")
    served = python("-c", script, cwd=tmp_path, pythonpath="")
    assert served.returncode == 0, served.stderr[-3000:]
    expected = checkpoints.load_compressed(spec)(images)["logits"].numpy()
    np.testing.assert_allclose(np.load(tmp_path / "served.npy"), expected, rtol=1e-5, atol=1e-5)

    # An export folder that is not empty is refused before anything is evaluated.
    assert exit_code(cifar_compressed_main, "--cfg", cfg_path, "--export", export) == 1
    captured = capsys.readouterr()
    assert "not an empty folder" in captured.err and "Error:" not in captured.out


def test_a_short_all_closed_run_compresses_to_the_network_its_val_error_scored(trained, capsys):
    """At step 10 every gate has been closed for 10 steps, and its average is past 1/2 though below 1:
    every block is removed, the compressed network equals the gated one at inference, and its
    error is the val_error recorded at that step."""
    _, run_dir, _ = trained
    record = read_metrics(str(run_dir))[0]
    assert record["global_step"] == 10 and 1.5 < record["discarded_cnt"] < 3.0
    assert exit_code(compress_main, "--dir", run_dir, "--step", 10) == 0
    out = capsys.readouterr().out
    assert "discarded 3 of 3 blocks (closed at inference: is_discarded moving average >= 0.5)" in out
    found = re.search(r"logits equal .*error gated (\S+), compressed (\S+)", out)
    assert found.group(1) == found.group(2) == f"{record['val_error']:.4f}"
    spec = compressed_cfg.read(str(run_dir / "compressed_model_10.cfg"))
    assert spec.architecture.units() == [(0, 0), (1, 0), (2, 0)]
    assert spec.discarded_blocks == ("res1.0", "res2.0", "res3.0")


def test_the_evaluation_script_prints_what_scoring_returns(trained, capsys):
    """cifarCompressedResnet.py is flags in, scoring.evaluate_compressed out, its lines printed."""
    work, run_dir, _ = trained
    cfg = run_dir / "compressed_model_30.cfg"
    if not cfg.exists():  # this test may run alone
        assert exit_code(compress_main, "--dir", run_dir, "--step", 30) == 0
    evaluated = scoring.evaluate_compressed(str(cfg), ("cifar10",), size=1)
    assert evaluated.lines == [f"Error: {evaluated.errors['val_error']}"] and evaluated.spec.dataset == "cifar10"
    capsys.readouterr()
    assert exit_code(cifar_compressed_main, "--cfg", cfg, "--cifar10", "-n", 1) == 0
    assert capsys.readouterr().out.splitlines() == evaluated.lines


def test_the_evaluation_scripts_take_the_original_flags(trained, tmp_path, monkeypatch, capsys):
    work, run_dir, _ = trained
    cfg = run_dir / "compressed_model_30.cfg"
    if not cfg.exists():  # this test may run alone
        assert exit_code(compress_main, "--dir", run_dir, "--step", 30) == 0
    capsys.readouterr()
    monkeypatch.chdir(tmp_path)
    assert exit_code(cifar_compressed_main, "--cfg", cfg, "-n", 1, "-o", "eval") == 0
    error = float(capsys.readouterr().out.splitlines()[0].split(": ")[1])
    written = json.loads((tmp_path / "train_log.eval" / "evaluation.json").read_text())
    assert written["val_error"] == error and written["cfg"] == str(cfg)
    assert exit_code(cifar_compressed_main, "--cfg", cfg, "--num_units", 2) == 1
    assert "pruned from a network with n = 1, not -n 2" in capsys.readouterr().err
    assert exit_code(imagenet_main, "--cfg", cfg) == 1  # imagenetEpsilonResnet.py --cfg evaluates ImageNet only
    assert "evaluates imagenet or fake-imagenet" in capsys.readouterr().err


def test_command_line_errors_exit_nonzero_with_the_reason(trained, tmp_path, capsys):
    work, run_dir, _ = trained
    failed = python(os.path.join(ROOT, "scripts", "compressModel.py"), "--dir", run_dir, "--step", 25, cwd=work)
    assert failed.returncode == 1 and "has checkpoints at steps [10, 20, 30]" in failed.stderr

    assert exit_code(compress_main, "--dir", run_dir, "--step", 20, "--check-batches", 0) == 2
    os.makedirs(tmp_path / "two" / "a"), os.makedirs(tmp_path / "two" / "b")
    for folder in ("a", "b"):
        for name in ("config.yaml", "metrics.jsonl"):
            (tmp_path / "two" / folder / name).write_text("")
    assert exit_code(compress_main, "--dir", tmp_path / "two", "--step", 20) == 1
    assert "found several" in capsys.readouterr().err

    cfg = run_dir / "compressed_model_30.cfg"
    if not cfg.exists():  # this test may run alone
        assert exit_code(compress_main, "--dir", run_dir, "--step", 30) == 0
    capsys.readouterr()
    for main, argv, message in [
        (cifar_compressed_main, ["--cifar100"], "a compressed cifar10 network; this command evaluates cifar100"),
        (svhn_compressed_main, [], "evaluates svhn"),
        (imagenet_compressed_main, [], "evaluates imagenet or fake-imagenet"),
    ]:
        assert exit_code(main, "--cfg", cfg, *argv) == 1
        assert message in capsys.readouterr().err

    broken = tmp_path / "broken.cfg"
    text = cfg.read_text().replace("weights: compressed_model_30", f"weights: {run_dir}/compressed_model_30")
    broken.write_text(text.replace("num_classes: 10", "num_classes: 100"))
    assert exit_code(cifar_compressed_main, "--cfg", broken) == 1
    assert "do not fit the network" in capsys.readouterr().err
    broken.write_text(text.replace("weights:", "weight_file:"))
    assert exit_code(cifar_compressed_main, "--cfg", broken) == 1
    assert "missing key 'weights'" in capsys.readouterr().err


def test_a_run_trained_with_a_relative_data_folder_compresses_from_another_folder(tmp_path, monkeypatch, tiny_cifar):
    work, elsewhere = tmp_path / "work", tmp_path / "elsewhere"
    work.mkdir(), elsewhere.mkdir()
    monkeypatch.chdir(work)
    config = write_tiny_config(str(work), tiny_cifar, max_epoch=1)
    relative = os.path.relpath(tiny_cifar, work)
    assert exit_code(cifar_main, "--config", config, "--data", relative, "-o", "rel") == 0
    assert config_lib.load(str(work / "train_log.rel" / "config.yaml")).data.dir == os.path.abspath(tiny_cifar)
    monkeypatch.chdir(elsewhere)  # where `relative` leads nowhere
    assert exit_code(compress_main, "--dir", work / "train_log.rel", "--step", 3, "--check-batches", 1) == 0


def test_export_flags_that_do_not_fit_are_refused_before_anything_runs(tmp_path, capsys):
    cfg = tmp_path / "missing.cfg"
    assert exit_code(cifar_compressed_main, "--cfg", cfg, "--format", "onnx") == 1
    assert capsys.readouterr().err == "error: --format and --quantize say what --export DIR writes: add --export DIR\n"
    assert exit_code(cifar_compressed_main, "--cfg", cfg, "--export", tmp_path / "x", "--format", "onnx",
                     "--quantize", "int8") == 1
    assert capsys.readouterr().err == "error: --quantize 'int8': only int8, and only with the litert format\n"
    assert exit_code(imagenet_main, "--export", tmp_path / "x") == 2  # a usage error: it goes with --cfg
    assert "they go with --cfg" in capsys.readouterr().err and os.listdir(tmp_path) == []
