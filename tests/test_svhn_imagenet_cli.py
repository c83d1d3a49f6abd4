"""svhnEpsilonResnet.py and imagenetEpsilonResnet.py end to end: short SVHN and --fake ImageNet
runs, --eval --load, and the refusals (NCHW without a GPU, bad flags, a checkpoint of another net)."""
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
import yaml

import data_fixtures as fx
from epsilon_resnet import config as config_lib
from epsilon_resnet.run_folder import read_metrics
from epsilon_resnet.cli import imagenet_main, svhn_main
from cli_helpers import exit_code, snapshot

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def svhn_dir(tmp_path_factory):
    """A tiny SVHN in the official .mat layout: 24 train + 16 extra images, 16 test images."""
    folder = tmp_path_factory.mktemp("svhn")
    rng = np.random.default_rng(0)
    for split, count in (("train", 24), ("extra", 16), ("test", 16)):
        images = rng.integers(0, 256, (count, 32, 32, 3), dtype=np.uint8)
        fx.write_svhn_mat(str(folder / f"{split}_32x32.mat"), images, np.arange(count) % 10)
    return str(folder)


def test_svhn_short_run_uses_the_shipped_config_and_trains_on_train_plus_extra(tmp_path, monkeypatch, svhn_dir):
    monkeypatch.chdir(tmp_path)
    assert exit_code(svhn_main, "-n", "1", "--batch-size", "8", "--max-epoch", "1", "--data", svhn_dir) == 0
    run_dir = tmp_path / "train_log.svhn-e_1.5-n_1"  # the default name svhn-e_<ε>-n_<n>
    saved = config_lib.load(str(run_dir / "config.yaml"))
    assert saved.data.name == "svhn" and saved.data.options == {"use_extra": True}
    assert saved.train.lr_schedule == [[1, 0.1], [20, 0.01], [28, 0.001], [50, 0.0001]]
    assert saved.train.lr_restart_schedule == [[1, 0.1], [10, 0.01], [14, 0.001], [25, 0.0001]]
    (record,) = read_metrics(str(run_dir))
    assert record["global_step"] == (24 + 16) // 8  # an epoch covers train + extra
    assert record["learning_rate"] == pytest.approx(0.1) and record["epsilon"] == 1.5
    assert {f"{block}/is_discarded" for block in ("res1.0", "res2.0", "res3.0")} <= set(record)
    assert 0.0 <= record["val_error"] <= 1.0
    assert (run_dir / "model-5.index").exists()


@pytest.mark.skipif(bool(tf.config.list_physical_devices("GPU")), reason="the refusal is for machines without a GPU")
def test_nchw_without_a_gpu_is_refused_by_the_script(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([REPO, os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, os.path.join(REPO, "scripts", "imagenetEpsilonResnet.py"), "--fake",
                             "-d", "18", "--image-size", "32", "--data_format", "NCHW", "--max-epoch", "1"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    assert "NCHW" in result.stderr and "GPU" in result.stderr and "--data_format NHWC" in result.stderr
    assert os.listdir(tmp_path) == []  # no run folder


@pytest.fixture(scope="module")
def fake_config(tmp_path_factory):
    """The shipped ImageNet config on a small fake ImageNet: 20 classes (so top-5 is reported), 12 val images."""
    config = config_lib.replace(config_lib.shipped("imagenet"), **{
        "data.options": {"image_size": 224, "num_classes": 20, "num_train": 64, "num_eval": 12},
        "train.eval_batch_size": 8, "train.seed": 0})
    path = tmp_path_factory.mktemp("config") / "fake.yaml"
    path.write_text(config_lib.dump(config))
    return str(path)


def fake_run(depth, fake_config, *extra):
    return exit_code(imagenet_main, "--config", fake_config, "--fake", "-d", str(depth), "--image-size", "64",
                     "--batch-size", "4", "--steps-per-epoch", "2", "--max-epoch", "1", *extra)


@pytest.mark.slow
def test_fake_resnet50_short_run(tmp_path, monkeypatch, fake_config):
    monkeypatch.chdir(tmp_path)
    assert fake_run(50, fake_config) == 0
    run_dir = tmp_path / "train_log.imagenet-d_50-e_2"  # the default name imagenet-d_<depth>-e_<ε>
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    # --image-size changes only the image size; the config's other data options stay.
    assert saved["data"] == {"name": "fake-imagenet", "dir": None,
                             "options": {"image_size": 64, "num_classes": 20, "num_train": 64, "num_eval": 12}}
    assert saved["model"]["depth"] == 50 and saved["train"]["nesterov"] is True
    (record,) = read_metrics(str(run_dir))
    assert record["global_step"] == 2 and record["learning_rate"] == pytest.approx(0.1)
    assert {"group0/block0/is_discarded", "group3/block2/is_discarded", "val_error_top5",
            "val_error_side"} <= set(record)
    assert (run_dir / "model-2.index").exists()


def test_fake_resnet18_run_then_eval_prints_the_checkpoints_errors_and_writes_nothing(
        tmp_path, monkeypatch, capsys, fake_config):
    monkeypatch.chdir(tmp_path)
    assert fake_run(18, fake_config, "-o", "fake18") == 0
    run_dir = tmp_path / "train_log.fake18"
    (record,) = read_metrics(str(run_dir))
    before, entries = snapshot(run_dir), sorted(os.listdir(tmp_path))
    capsys.readouterr()

    checkpoint = str(run_dir / "model-2")
    assert exit_code(imagenet_main, "--eval", "--load", checkpoint, "--config", fake_config, "--fake",
                     "-d", "18", "--image-size", "64") == 0
    printed = capsys.readouterr().out
    values = {key: float(value) for key, value in re.findall(r"^(top-1 error|top-5 error|val_cost): (\S+)$",
                                                             printed, re.MULTILINE)}
    # The training run evaluated exactly these weights at the end of epoch 1.
    assert values == pytest.approx({"top-1 error": record["val_error"], "top-5 error": record["val_error_top5"],
                                    "val_cost": record["val_cost"]}, rel=1e-4, abs=1e-5)
    assert snapshot(run_dir) == before and sorted(os.listdir(tmp_path)) == entries
    assert "on 12 fake-imagenet validation images in batches of 8\n" in printed  # the config's eval batch

    # With a null eval batch, --eval scores in batches of 128 as the original did, whatever the GPUs
    # (training validates on 256 // GPUs, 64 on these 4).
    null_batch = tmp_path / "null-batch.yaml"
    null_batch.write_text(config_lib.dump(config_lib.replace(config_lib.load(fake_config),
                                                             **{"train.eval_batch_size": None})))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # --gpu sets it; restored after the test
    assert exit_code(imagenet_main, "--eval", "--load", checkpoint, "--config", str(null_batch), "--fake",
                     "-d", "18", "--image-size", "64", "--gpu", "0,1,2,3") == 0
    assert "on 12 fake-imagenet validation images in batches of 128\n" in capsys.readouterr().out

    # A checkpoint of another depth is refused with a clear message.
    assert exit_code(imagenet_main, "--eval", "--load", checkpoint, "--config", fake_config, "--fake",
                     "-d", "34", "--image-size", "64") == 1
    assert "is not a checkpoint of this network (ResNet-34" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [(["--eval"], "--eval needs --load"),
                                           (["-d", "20"], "invalid choice: 20"),
                                           (["--image-size", "0"], "--image-size: expected a whole number >= 1, got 0"),
                                           (["--data_format", "NCWH"], "invalid choice: 'NCWH'")])
def test_bad_flags_are_usage_errors(argv, message, capsys):
    assert exit_code(imagenet_main, *argv) == 2
    assert message in capsys.readouterr().err


def test_missing_checkpoint_for_eval_names_it(tmp_path, monkeypatch, capsys, fake_config):
    monkeypatch.chdir(tmp_path)
    assert exit_code(imagenet_main, "--eval", "--load", str(tmp_path / "model-7"), "--config", fake_config,
                     "--fake", "-d", "18", "--image-size", "32") == 1
    assert "model-7.index" in capsys.readouterr().err
    assert os.listdir(tmp_path) == []


def test_the_configs_data_format_reaches_the_network():
    from epsilon_resnet import data
    from epsilon_resnet.networks import build_from_config

    config = config_lib.replace(config_lib.shipped("imagenet"), **{
        "data.name": "fake-imagenet", "model.depth": 18, "model.data_format": "channels_first",
        "data.options": {"image_size": 32, "num_classes": 20, "num_train": 8, "num_eval": 4}})
    model = build_from_config(config.model, data.get_source(config.data.name, **config.data.options))
    assert model.get_layer("conv0").data_format == "channels_first"


def test_svhn_without_extra_names_a_spelling_the_command_line_takes(tmp_path, monkeypatch, capsys, svhn_dir):
    monkeypatch.chdir(tmp_path)
    data_dir = tmp_path / "svhn"
    data_dir.mkdir()
    for split in ("train", "test"):
        os.symlink(os.path.join(svhn_dir, f"{split}_32x32.mat"), data_dir / f"{split}_32x32.mat")
    quick = ("-n", "1", "--batch-size", "8", "--max-epoch", "1", "--data", data_dir)
    assert exit_code(svhn_main, *quick) == 1
    assert "data.options.use_extra: false in the config, use_extra=False in code" in \
        capsys.readouterr().err
    shipped = open(os.path.join(REPO, "configs", "svhn.yaml")).read()
    (tmp_path / "svhn.yaml").write_text(shipped.replace("use_extra: true", "use_extra: false"))
    assert exit_code(svhn_main, "--config", "svhn.yaml", *quick) == 0
    (record,) = read_metrics(str(tmp_path / "train_log.svhn-e_1.5-n_1"))
    assert record["global_step"] == 24 // 8  # train only
