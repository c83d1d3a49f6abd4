"""model.width: the CIFAR pre-activation ResNet with its stage widths multiplied (WRN-d-k's shape
without dropout), from the architecture to training, compression, evaluation and export."""
import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from epsilon_resnet import checkpoints, compressed_cfg, compression, data, pruning
from epsilon_resnet import config as config_lib
from epsilon_resnet.cli import cifar_compressed_main, cifar_main, compress_main
from epsilon_resnet.config import ModelConfig
from epsilon_resnet.errors import ConfigError
from epsilon_resnet.gate import gates_of
from epsilon_resnet.networks import build_resnet
from epsilon_resnet.run_folder import read_metrics
from epsilon_resnet.structures import architecture_for, cifar_resnet
from cli_helpers import exit_code
from test_networks import expected_trainable_params, trainable
from test_pruning import assert_equal_at_inference, inputs

SAMPLE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data", "cifar10-sample")


def test_width_multiplies_the_stage_widths_and_not_the_stem():
    """WRN-16-4 ("Wide Residual Networks": conv1 of 16 channels, then groups of 16k, 32k, 64k): n 2, width 4."""
    wrn_16_4 = architecture_for(ModelConfig(n=2, width=4), "cifar")
    assert wrn_16_4 == cifar_resnet(2, 4) and wrn_16_4.stage_widths == (64, 128, 256) and wrn_16_4.stem.width == 16
    assert architecture_for(ModelConfig(n=2), "cifar").stage_widths == (16, 32, 64)  # the paper's, the default
    model = build_resnet(wrn_16_4, 10)
    assert trainable(model) == expected_trainable_params(2, 10, side=True, k=4)
    assert round(trainable(model) / 1e6, 1) == 2.7  # the README's figure; the WRN paper's for WRN-16-4
    assert model.get_layer("res1.0_conv1").kernel.shape == (3, 3, 16, 64)
    with pytest.raises(ConfigError, match=r"model.width must be >= 1, got 0"):
        config_lib.from_dict({"model": {"width": 0}})
    with pytest.raises(ConfigError, match=r"model.width widens the CIFAR/SVHN networks; an ImageNet network"):
        config_lib.from_dict({"data": {"name": "imagenet"}, "model": {"depth": 18, "width": 2}})


def test_the_first_stage_pads_the_stem_to_its_width():
    """With res1.0's branch zeroed, its output is the stem's 16 channels padded with 24 zeros on each side."""
    model = build_resnet(cifar_resnet(1, 4, gated=False, side_output=False), 10, pixel_scale=1 / 128)
    conv2 = model.get_layer("res1.0_conv2")
    conv2.kernel.assign(np.zeros(conv2.kernel.shape, np.float32))
    probe = keras.Model(model.input, [model.get_layer("conv0_relu").output, model.get_layer("res1.0_add").output])
    stem, out = (t.numpy() for t in probe(np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype(np.float32)))
    np.testing.assert_array_equal(out[..., 24:40], stem)
    assert not out[..., :24].any() and not out[..., 40:].any()


def test_a_wide_network_loses_its_closed_blocks_by_both_paths():
    architecture = cifar_resnet(2, 2)
    gated = build_resnet(architecture, 10, epsilon=0.0, pixel_mean=120.0, pixel_scale=1 / 128)
    for g in gates_of(gated):
        g.is_discarded.assign(1.0 if g.block in ("res1.0", "res2.1", "res3.0") else 0.0)
    compressed, kept = compression.compress_model(gated, architecture, compression.decide_at_inference(gated)[0])
    assert kept.units() == [(0, 0), (0, 1), (1, 0), (2, 0), (2, 1)] and kept.stage_widths == (32, 64, 128)
    x = inputs((32, 32, 3)) * 60 + 120
    assert_equal_at_inference(gated, compressed, x)
    assert_equal_at_inference(compressed, pruning.without_closed_blocks(gated), x)


def test_a_wide_resnet_trains_compresses_evaluates_and_exports(tmp_path, monkeypatch, capsys):
    """cifarEpsilonResnet.py → compressModel.py → cifarCompressedResnet.py --export on the sample data,
    for WRN-16-4's shape (n 2, model.width 4: stage widths 64, 128, 256)."""
    monkeypatch.chdir(tmp_path)
    config = {"data": {"name": "cifar10", "dir": SAMPLE}, "model": {"n": 2, "width": 4, "epsilon": 0.0},
              "train": {"batch_size": 8, "eval_batch_size": 50, "eval_batches": 1, "max_epoch": 1,
                        "steps_per_epoch": 2, "seed": 0}}
    (tmp_path / "wide.yaml").write_text(json.dumps(config))  # JSON is YAML
    assert exit_code(cifar_main, "--config", "wide.yaml", "-o", "wide") == 0
    assert read_metrics("train_log.wide")[-1]["global_step"] == 2
    assert exit_code(compress_main, "--dir", "train_log.wide", "--step", 2) == 0
    spec = compressed_cfg.read("train_log.wide/compressed_model_2.cfg")
    assert spec.architecture == cifar_resnet(2, 4).compressed(spec.discarded_blocks)
    assert spec.check["logits_equal"] and spec.check["gated_error"] == spec.check["compressed_error"]
    capsys.readouterr()

    assert exit_code(cifar_compressed_main, "--cfg", "train_log.wide/compressed_model_2.cfg", "-n", 2,
                     "--export", "exported") == 0
    assert capsys.readouterr().out.splitlines()[0] == f"Error: {spec.check['compressed_error']}"
    images = next(iter(data.get_source("cifar10", SAMPLE).eval_dataset(16)))[0]
    exported = tf.saved_model.load("exported/saved_model")  # kept while serving: it owns the variables
    served = exported.serve(images).numpy()
    expected = checkpoints.load_compressed(spec)(images, training=False)["logits"].numpy()
    assert compression.logits_equal(np.abs(served - expected).max(), np.abs(expected).max())
