"""Compression (docs/original.md §8): the blocks closed at inference go, weights are copied by
structure, the compressed network computes the gated network's inference logits at every batch
size, and the .cfg and checkpoint are written beside the run without touching it."""
import dataclasses
import os

import keras
import numpy as np
import pytest
import tensorflow as tf
import yaml

from benchmarks.inference_gate import discard_tolerance
from epsilon_resnet import checkpoints, compressed_cfg, export, pruning, run_folder, structures
from epsilon_resnet import compression as C
from epsilon_resnet import config as config_lib
from epsilon_resnet import data
from epsilon_resnet.cli import imagenet_compressed_main, imagenet_main
from epsilon_resnet.errors import CheckpointError, CompressionError, FileError, RunError, WeightsDoNotFit
from epsilon_resnet.gate import StrictIdentity, gates_of, per_batch_inference
from epsilon_resnet.networks import build_from_config, build_resnet
from epsilon_resnet.structures import cifar_resnet, imagenet_resnet
from epsilon_resnet.optimizers import TF1Momentum
from epsilon_resnet.training import TrainingState
from cli_helpers import exit_code, snapshot

RNG = np.random.default_rng(7)
SHUT = 1e6  # an ε above any |F| of these networks: the gate closes although F is not zero


def images(count=4, shape=(32, 32, 3)):
    return RNG.uniform(0, 255, (count, *shape)).astype(np.float32)


def randomize_batch_norms(model):
    """Distinct BN parameters and statistics everywhere, so a weight copied to the wrong layer shows."""
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            size = layer.gamma.shape
            layer.gamma.assign(RNG.uniform(0.5, 1.5, size))
            layer.beta.assign(RNG.uniform(-0.2, 0.2, size))
            layer.moving_mean.assign(RNG.uniform(-0.2, 0.2, size))
            layer.moving_variance.assign(RNG.uniform(0.5, 2.0, size))


def shut(model, blocks):
    """Close the gates of `blocks` at inference (is_discarded 1) and per batch (ε above max|F|);
    their branches stay non-zero."""
    for gate in gates_of(model):
        if gate.block in blocks:
            gate.epsilon.assign(SHUT)
            gate.is_discarded.assign(1.0)


def gated_cifar(n, closed):
    """A gated CIFAR network (ε = 0: every other gate is open) with the gates of `closed` shut."""
    model = build_resnet(cifar_resnet(n), 10, epsilon=0.0, pixel_mean=120.0, pixel_scale=1 / 128)
    randomize_batch_norms(model)
    shut(model, closed)
    return model


def assert_same_logits(gated, compressed, x):
    """Equal up to the order of float32 sums (evaluation.LOGIT_TOLERANCE), and not trivially."""
    expected = gated(x, training=False)["logits"].numpy()
    difference = np.abs(compressed(x, training=False)["logits"].numpy() - expected).max()
    assert C.logits_equal(difference, np.abs(expected).max()), difference
    assert np.abs(expected).max() > 0.1


# ---- the decision and the network transformation ------------------------------------------------
def test_the_gates_decide_and_the_compressed_network_computes_the_same_logits():
    closed = ["res1.1", "res2.0", "res2.2", "res3.1"]
    gated = gated_cifar(3, closed)
    discarded, flickering = C.decide_at_inference(gated)
    assert discarded == closed and flickering == []

    compressed, kept = C.compress_model(gated, cifar_resnet(3), discarded)
    assert kept == dataclasses.replace(cifar_resnet(3), gated=False, side_head=None, removed_blocks=tuple(closed))
    assert kept.units() == [(0, 0), (0, 2), (1, 0), (1, 1), (2, 0), (2, 2)]
    assert not gates_of(compressed) and set(compressed.output) == {"logits"}
    names = {layer.name for layer in compressed.layers}
    assert "res2.0_pool" in names and "res2.0_conv1" not in names and "res2.0_preact_bn" not in names
    assert "res1.1_conv1" not in names  # a block keeps its name (and its layers') after a removed one
    np.testing.assert_array_equal(compressed.get_layer("res1.2_conv1").kernel.numpy(),
                                  gated.get_layer("res1.2_conv1").kernel.numpy())
    np.testing.assert_array_equal(compressed.get_layer("res3.2_preact_bn").moving_variance.numpy(),
                                  gated.get_layer("res3.2_preact_bn").moving_variance.numpy())
    assert_same_logits(gated, compressed, images(4))  # inputs the decision never saw


@pytest.mark.parametrize("average, removed, reported", [
    (0.05, False, False), (0.3, False, True), (0.5, True, True), (0.7, True, True), (0.95, True, False)])
def test_a_gate_both_closed_and_open_in_training_goes_by_its_majority_and_is_reported(average, removed, reported):
    gated = gated_cifar(2, [])
    gates_of(gated)[3].is_discarded.assign(average)  # res2.1
    discarded, flickering = C.decide_at_inference(gated)
    assert discarded == (["res2.1"] if removed else [])
    assert flickering == ([{"block": "res2.1", "closed_rate": average, "closed_at_inference": removed}]
                          if reported else [])
    assert len(C._warnings({"logits_equal": True}, flickering)) == reported


def sample_and_random_images(count):
    """`count` CIFAR-10 sample images (the repository's data/cifar10-sample) and `count` random ones."""
    sample = data.get_source("cifar10", os.path.join(os.path.dirname(os.path.dirname(__file__)), "data",
                                                     "cifar10-sample"))
    real = next(iter(sample.eval_dataset(count)))[0].numpy()
    return real, images(count)


def test_compressed_logits_equal_the_gated_inference_logits_at_batch_1_7_and_128():
    """Closed at inference (is_discarded 1) while ε = 0 keeps every gate open per batch: the
    compressed network equals the gated one at inference on every input, whatever the batch, and
    the gated network's inference logits of an image do not depend on its batch."""
    gated = gated_cifar(2, [])
    for gate in gates_of(gated):
        gate.is_discarded.assign(1.0 if gate.block in ("res1.1", "res2.0", "res3.1") else 0.0)
    discarded, _ = C.decide_at_inference(gated)
    compressed, _ = C.compress_model(gated, cifar_resnet(2), discarded)
    for x in sample_and_random_images(128):
        whole = gated(x, training=False)["logits"].numpy()
        for size in (1, 7, 128):
            for start in range(0, 128, size)[:3]:
                part = x[start:start + size]
                assert_same_logits(gated, compressed, part)
                alone = gated(part, training=False)["logits"].numpy()
                assert C.logits_equal(np.abs(alone - whole[start:start + size]).max(), np.abs(whole).max())


@pytest.mark.parametrize("closed, units", [
    ([], [(s, k) for s in range(3) for k in range(2)]),
    (cifar_resnet(2).block_names(), [(0, 0), (1, 0), (2, 0)]),
])
def test_nothing_or_everything_discarded(closed, units):
    gated = gated_cifar(2, closed)
    compressed, kept = C.compress_model(gated, cifar_resnet(2), closed)
    assert (kept.units(), kept.block_names(), kept.gated, kept.side_head) == (
        units, [b for b in cifar_resnet(2).block_names() if b not in closed], False, None)
    if closed:  # only the stem, the stage shortcuts and the head are left
        weighted = sorted(layer.name for layer in compressed.layers if layer.weights)
        assert weighted == ["bnlast_bn", "conv0", "conv0_bn", "linear", "preprocess"]
    assert_same_logits(gated, compressed, images(4))


def test_bottleneck_network_keeps_the_shortcut_convolutions_of_discarded_first_blocks():
    """ImageNet blocks: group0/block0's widening convshortcut and group1/block0's both_preact
    BN + convshortcut survive when those blocks are discarded."""
    architecture = dataclasses.replace(imagenet_resnet(50, side_output=False, image_shape=(32, 32, 3)),
                                       stage_units=(1, 2, 2, 1))
    gated = build_resnet(architecture, 10, epsilon=0.0, pixel_mean=[120.0, 115.0, 100.0],
                         pixel_scale=[0.02, 0.02, 0.02])
    randomize_batch_norms(gated)
    closed = ["group0/block0", "group1/block0", "group2/block1"]
    shut(gated, closed)
    assert C.decide_at_inference(gated)[0] == closed
    compressed, kept = C.compress_model(gated, architecture, closed)
    assert kept.units() == [(0, 0), (1, 0), (1, 1), (2, 0), (3, 0)] and kept.removed_blocks == tuple(closed)
    names = {layer.name for layer in compressed.layers}
    assert {"group0_block0_convshortcut", "group1_block0_preact_bn", "group1_block0_convshortcut"} <= names
    assert "group1_block0_conv1" not in names and "group2_block1_conv1" not in names
    assert_same_logits(gated, compressed, images(4))


def test_weights_that_do_not_fit_are_errors_naming_the_layer():
    gated = gated_cifar(2, [])
    other_classes = build_resnet(cifar_resnet(2, gated=False, side_output=False), 100)
    with pytest.raises(CompressionError, match=r"layer 'linear'.*shape \(64, 100\).*\(64, 10\)"):
        pruning.copy_weights(gated, other_classes)
    imagenet = build_resnet(imagenet_resnet(18, gated=False, side_output=False, image_shape=(32, 32, 3)), 10)
    with pytest.raises(CompressionError, match=r"layer .preprocess.: weight .mean. has shape \(3,\)"):
        pruning.copy_weights(gated, imagenet)
    with pytest.raises(CompressionError, match=r"layer 'res1.2_preact_bn' of resnet has no layer of that name in "
                                               r"epsilon_resnet"):
        pruning.copy_weights(gated, build_resnet(cifar_resnet(3, gated=False, side_output=False), 10))
    with pytest.raises(CompressionError, match=r"cannot discard \['res4.0'\]"):
        C.compress_model(gated, cifar_resnet(2), ["res4.0"])


def test_network_cost_counts_conv_and_dense_macs_and_trainable_parameters():
    model = build_resnet(cifar_resnet(1), 10)
    convs = [(32, 3, 16), (32, 16, 16), (32, 16, 16), (16, 16, 32), (16, 32, 32), (8, 32, 64), (8, 64, 64)]
    macs = sum(side * side * 9 * c_in * c_out for side, c_in, c_out in convs) + 64 * 10
    bn_widths = [16, 16, 16, 32, 32, 64, 64]  # conv0; res1.0 conv1; res2.0, res3.0 preact + conv1; bnlast
    params = sum(9 * c_in * c_out for _, c_in, c_out in convs) + 2 * sum(bn_widths) + 64 * 10 + 10
    assert C.network_cost(model) == {"params": params, "macs": macs}  # the side head is not counted


# ---- "the is_discarded average reached 1" (the original's rule; here: no flickering) ----------------
def float32_ema_fixed_point(decay):
    """Where TF1's float32 update shadow −= (shadow − 1)·(1 − d) stops moving for a block closed forever."""
    ema, step = np.float32(0), np.float32(1) - np.float32(decay)  # 1 − d in float32, as the gate computes it
    while (new := ema - np.float32((ema - np.float32(1)) * step)) != ema:
        ema = new
    return ema


def tensorpack_ema_of_ones(steps, decay):
    """TF1's float32 moving average of x = 1 over `steps` updates with tensorpack's warm-up decay."""
    ema = np.float32(0)
    for t in range(steps):
        d = min(np.float32(decay), np.float32(1 + t) / np.float32(10 + t))
        ema = ema - np.float32((ema - np.float32(1)) * (np.float32(1) - d))
    return ema


def test_a_closed_block_stalls_at_or_below_one_in_float32_and_still_counts_as_discarded():
    layer = StrictIdentity(epsilon=1.0, block="res1.0", ema_decay=0.95)
    closed_step = tf.function(lambda: layer(tf.zeros((1, 2, 2, 1)), training=True))
    for _ in range(400):
        closed_step()
    stalled = float(layer.is_discarded.numpy())
    assert stalled == tensorpack_ema_of_ones(400, 0.95) <= 1.0
    assert 1.0 - discard_tolerance(0.95) <= stalled and layer.closed_at_inference()
    # Without the warm-up the average stalls lowest (0.99999946 at d = 0.95), and still counts.
    assert float32_ema_fixed_point(0.95) == np.float32(0.99999946)
    for decay in (0.5, 0.9, 0.95, 0.99, 0.999):
        assert float32_ema_fixed_point(decay) >= 1 - discard_tolerance(decay)


def test_a_block_open_within_the_last_hundred_steps_has_not_reached_one():
    for decay in (0.9, 0.95, 0.99):
        ema = np.float32(float32_ema_fixed_point(decay) * decay)  # open once (x = 0) ...
        for _ in range(100):                                     # ... then closed again
            ema = ema - np.float32((ema - np.float32(1)) * (np.float32(1) - np.float32(decay)))
        assert ema < 1 - discard_tolerance(decay)


# ---- a run folder ---------------------------------------------------------------------------------
class ArraySource:
    """The DataSource interface compression uses, over a few random images."""
    num_classes, image_shape, family = 10, (32, 32, 3), "cifar"

    def __init__(self, count=12):
        self.pixel_mean, self.pixel_scale = np.float32(110.0), np.float32(1 / 128)
        self.images, self.labels = images(count), RNG.integers(0, 10, count).astype(np.int32)

    def eval_dataset(self, batch_size):
        return tf.data.Dataset.from_tensor_slices((self.images, self.labels)).batch(batch_size)


RUN_CONFIG = {"data": {"name": "cifar10", "dir": None}, "model": {"n": 2, "epsilon": 0.0},
              "train": {"batch_size": 4, "eval_batch_size": 4}}
CLOSED = ["res1.1", "res2.0"]


def write_run(folder, source, steps=(6, 12), raw_config=RUN_CONFIG, closed=CLOSED):
    """A run folder as training leaves it: config.yaml, metrics.jsonl, checkpoints model-<step>.

    The checkpoints hold model, optimizer and state like the Trainer's, with the gates of
    `closed` shut (`shut`).
    """
    config = config_lib.from_dict(raw_config)
    run_folder.prepare(folder, config)
    gated = build_from_config(config.model, source)
    randomize_batch_norms(gated)
    shut(gated, closed)
    optimizer = TF1Momentum(0.1)
    optimizer.build(gated.trainable_variables)
    checkpoint = tf.train.Checkpoint(model=gated, optimizer=optimizer, state=TrainingState())
    blocks = [g.block for g in gates_of(gated)]
    averages = {b: 1.0 if b in closed else 0.0 for b in blocks}
    for epoch, step in enumerate(steps, 1):
        checkpoints.write_checkpoint(checkpoint, folder, f"{run_folder.CHECKPOINT_NAME}-{step}")
        run_folder.append_metrics(os.path.join(folder, run_folder.METRICS_FILE), {
            "epoch": epoch, "global_step": step, "val_error": 0.5 + epoch / 100, "val_error_side": 0.7,
            "epsilon": 0.0, **{run_folder.block_metric(b, structures.IS_DISCARDED): a for b, a in averages.items()}})
    return gated


@pytest.fixture(scope="module")
def source():
    return ArraySource()


@pytest.fixture(scope="module")
def run(tmp_path_factory, source):
    folder = str(tmp_path_factory.mktemp("runs") / "train_log.tiny")
    gated = write_run(folder, source)
    before = snapshot(folder)
    cfg_path, cfg = C.compress_run(os.path.dirname(folder), 12, source=source)  # found below
    return folder, gated, before, cfg_path, cfg


def test_compress_run_writes_cfg_and_weights_that_round_trip(run, source):
    folder, gated, _, cfg_path, spec = run
    assert cfg_path == os.path.join(folder, "compressed_model_12.cfg")
    assert compressed_cfg.read(cfg_path) == dataclasses.replace(spec, path=cfg_path)
    with open(cfg_path) as f:
        raw = yaml.safe_load(f)
    assert raw["dataset"] == "cifar10" and raw["step"] == 12 and raw["epoch"] == 2
    assert raw["source_checkpoint"] == "model-12" and raw["decision"] == C.DECISION
    assert raw["architecture"] == cifar_resnet(2).compressed(CLOSED).to_config()
    assert raw["architecture"]["removed_blocks"] == CLOSED and "discarded_blocks" not in raw  # one fact, said once
    assert raw["recorded_errors"] == {"val_error": 0.52, "val_error_side": 0.7}
    check = spec.check
    assert check["images"] == 12 and check["batches"] == 3 and check["logits_equal"] and check["batch_size"] == 4
    assert check["gated_error"] == check["compressed_error"] == check["per_batch_error"] and spec.warnings == ()
    assert spec.cost["compressed"]["params"] < spec.cost["full"]["params"]
    assert spec.cost["compressed"]["macs"] < spec.cost["full"]["macs"]
    assert spec.discarded_blocks == tuple(CLOSED)

    spec = compressed_cfg.read(cfg_path)
    model = checkpoints.load_compressed(spec)
    assert spec.architecture.units() == [(0, 0), (1, 0), (1, 1), (2, 0), (2, 1)]
    x = source.images[:4]
    np.testing.assert_allclose(model(x)["logits"].numpy(), gated(x, training=False)["logits"].numpy(), atol=1e-4)
    # The per-pixel mean came from the checkpoint, not from the data source.
    assert np.all(model.get_layer("preprocess").mean.numpy() == 110.0)


def test_the_run_folder_is_unchanged_except_for_the_new_files(run):
    folder, _, before, _, _ = run
    after = snapshot(folder)
    assert {k: v for k, v in after.items() if k in before} == before
    assert sorted(set(after) - set(before)) == ["compressed_model_12.cfg", "compressed_model_12.data-00000-of-00001",
                                                "compressed_model_12.index"]


def test_existing_outputs_are_never_overwritten(run, source):
    folder, _, _, _, _ = run
    before = snapshot(folder)
    with pytest.raises(CompressionError, match=r"already holds \['compressed_model_12.cfg'"):
        C.compress_run(folder, 12, source=source)
    assert snapshot(folder) == before


def test_a_step_without_checkpoint_lists_the_available_ones(tmp_path, source):
    folder = str(tmp_path / "run")
    write_run(folder, source)
    os.remove(os.path.join(folder, "model-6.index"))
    with pytest.raises(RunError, match=r"model-6.*checkpoints at steps \[12\]"):
        C.compress_run(folder, 6, source=source)
    assert not [f for f in os.listdir(folder) if f.startswith("compressed")]


def test_several_runs_below_the_folder_are_listed(tmp_path):
    for name in ("train_log.a", "train_log.b"):
        os.makedirs(tmp_path / name)
        for file in ("config.yaml", "metrics.jsonl"):
            (tmp_path / name / file).write_text("")
    with pytest.raises(RunError, match=r"several: \[.*train_log.a', .*train_log.b'\]"):
        run_folder.find_run(str(tmp_path))
    assert run_folder.find_run(str(tmp_path / "train_log.a")) == str(tmp_path / "train_log.a")
    os.makedirs(tmp_path / "empty")
    with pytest.raises(RunError, match="found none"):
        run_folder.find_run(str(tmp_path / "empty"))
    with pytest.raises(RunError, match="is not a folder"):
        run_folder.find_run(str(tmp_path / "missing"))


def test_the_check_reports_the_per_batch_error_beside_the_equal_logits(tmp_path, source):
    """res3.1 is closed at inference but open per batch (ε = 0 there): removed, logits equal, and
    the per-batch error is the one of the network that keeps it."""
    folder = str(tmp_path / "run")
    gated = write_run(folder, source)
    checkpoint = tf.train.Checkpoint(model=gated)
    checkpoint.read(os.path.join(folder, "model-12")).expect_partial()
    gates_of(gated)[-1].is_discarded.assign(1.0)  # res3.1
    tf.train.Checkpoint(model=gated).write(os.path.join(folder, "model-12"))
    _, spec = C.compress_run(folder, 12, source=source, check_batches=2)
    assert spec.discarded_blocks == (*CLOSED, "res3.1") and spec.check["logits_equal"]
    x, labels = source.images[:8], source.labels[:8]
    with per_batch_inference(gated):
        per_batch = np.concatenate([gated(x[i:i + 4], training=False)["logits"].numpy() for i in (0, 4)])
    assert spec.check["per_batch_error"] == pytest.approx(np.mean(per_batch.argmax(1) != labels))
    assert spec.check["gated_error"] == spec.check["compressed_error"]


# ---- reading .cfg files ----------------------------------------------------------------------------
EARLIER_CFG = os.path.join(os.path.dirname(__file__), "data", "earlier_cfg", "compressed_model_7.cfg")


@pytest.mark.parametrize("edit, message", [
    (lambda text: text + "\n  bad: [unclosed\n", "not valid YAML"),  # a FileError
    (lambda text: "- just a list\n", "expected a mapping"),
    (lambda text: text.replace("architecture:", "network:"), "missing key 'architecture'"),
    (lambda text: text.replace("dataset: cifar10", "dataset: mnist"), "unknown dataset 'mnist'"),
    (lambda text: text.replace("stage_units: [2, 2, 2]", "stage_units: [2, 2]"),
     r"architecture: stage_widths \[16, 32, 64\] and stage_units \[2, 2\] must name the same number"),
    (lambda text: text.replace("removed_blocks: [res1.1, res2.0]", "removed_blocks: [res1.1, res4.0]"),
     r"architecture: removed_blocks \['res4.0'\] are not blocks"),
    (lambda text: text.replace("  shortcut: pool_pad", "  shortcut: pool_pad\n  depth: 14"),
     r"architecture: architecture keys: unknown \['depth'\]"),
])
def test_malformed_cfg_is_a_clear_error(run, tmp_path, edit, message):
    with open(run[3]) as f:
        text = f.read()
    path = tmp_path / "edited.cfg"
    path.write_text(edit(text))
    assert path.read_text() != text
    with pytest.raises((CompressionError, FileError), match=message):
        compressed_cfg.read(str(path))


def test_a_cfg_of_the_earlier_form_loads_with_its_weights_and_computes_its_logits():
    """A .cfg written before it embedded the architecture (n, stage_units, first_block_kept) is
    read as the architecture it describes; its weights restore and give the logits it gave."""
    spec = compressed_cfg.read(EARLIER_CFG)
    assert spec.architecture == cifar_resnet(1, image_shape=(16, 16, 3)).compressed(["res2.0"])
    assert spec.discarded_blocks == ("res2.0",) and spec.step == 7 and spec.decision == C.DECISION
    expected = np.load(os.path.join(os.path.dirname(EARLIER_CFG), "logits.npz"))
    model = checkpoints.load_compressed(spec)
    np.testing.assert_array_equal(model(expected["images"], training=False)["logits"].numpy(), expected["logits"])
    assert compressed_cfg.loads(yaml.safe_load(compressed_cfg.dumps(spec)), EARLIER_CFG) == spec  # written anew


@pytest.mark.parametrize("edit, message", [
    (lambda text: text.replace("\nn: 1", "\nn: one"), "by one whole number, n or depth"),
    (lambda text: text.replace("\nn: 1", "\nn: 1\ndepth: 18"), "by one whole number, n or depth"),
    (lambda text: text.replace("first_block_kept: [true, false, true]", "first_block_kept: [true]"),
     r"first_block_kept \[True\] are not what n = 1 keeps without discarded_blocks \['res2.0'\]"),
    (lambda text: text.replace("stage_units: [1, 1, 1]", "stage_units: [1, 2, 1]"), r"stage_units \[1, 2, 1\]"),
    (lambda text: text.replace("discarded_blocks: [res2.0]", "discarded_blocks: [res2.1]"), r"cannot discard"),
])
def test_malformed_cfg_of_the_earlier_form_is_a_clear_error(tmp_path, edit, message):
    with open(EARLIER_CFG) as f:
        text = f.read()
    path = tmp_path / "edited.cfg"
    path.write_text(edit(text))
    assert path.read_text() != text
    with pytest.raises(CompressionError, match=message):
        compressed_cfg.read(str(path))


def test_weights_that_do_not_fit_the_cfg_are_refused(run, tmp_path):
    folder, _, _, cfg_path, _ = run
    with open(cfg_path) as f:
        raw = yaml.safe_load(f)
    raw["architecture"]["removed_blocks"], raw["weights"] = [], os.path.join(folder, raw["weights"])
    wrong = tmp_path / "wrong.cfg"
    wrong.write_text(yaml.safe_dump(raw))
    with pytest.raises(WeightsDoNotFit, match="do not fit the network"):
        checkpoints.load_compressed(compressed_cfg.read(str(wrong)))
    raw["architecture"]["removed_blocks"], raw["weights"] = CLOSED, "missing_weights"
    wrong.write_text(yaml.safe_dump(raw))
    with pytest.raises(CheckpointError, match=r"missing_weights.index does not exist"):
        checkpoints.load_compressed(compressed_cfg.read(str(wrong)))


def test_data_of_another_shape_or_class_count_is_refused(run):
    spec = compressed_cfg.read(run[3])
    compressed_cfg.check_source_fits(spec, ArraySource())
    wider = ArraySource()
    wider.num_classes = 100
    with pytest.raises(CompressionError, match=r"for 10 classes of \[32, 32, 3\].*has 100 classes"):
        compressed_cfg.check_source_fits(spec, wider)


def test_export_refuses_a_folder_that_is_not_empty(tmp_path):
    model = build_resnet(cifar_resnet(1, gated=False, side_output=False), 10)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    with pytest.raises(RunError, match="not an empty folder"):
        export.export(model, str(tmp_path / "full"))
    assert os.listdir(tmp_path / "full") == ["keep.txt"] and sorted(os.listdir(tmp_path)) == ["full"]


def test_imagenet_run_compresses_and_evaluates_top1_and_top5(tmp_path, capsys):
    """ResNet-18 on fake ImageNet (32×32, 20 classes): group1/block0 (convshortcut kept) and
    group2/block1 discarded; imagenetCompressedResnet.py prints the errors the check measured."""
    options = {"image_size": 32, "num_classes": 20, "num_train": 16, "num_eval": 12}
    raw = {"data": {"name": "fake-imagenet", "options": options}, "model": {"depth": 18, "epsilon": 0.0},
           "train": {"eval_batch_size": 4}}
    folder = str(tmp_path / "run")
    write_run(folder, data.get_source("fake-imagenet", **options), steps=(5,), raw_config=raw,
              closed=["group1/block0", "group2/block1"])
    cfg_path, spec = C.compress_run(folder, 5)
    assert spec.architecture == imagenet_resnet(18, image_shape=(32, 32, 3)).compressed(
        ["group1/block0", "group2/block1"])
    assert spec.check["logits_equal"] and spec.check["images"] == 12
    assert exit_code(imagenet_compressed_main, "--cfg", cfg_path) == 0
    top1, top5 = capsys.readouterr().out.splitlines()[:2]
    assert top1 == f"Top-1 error: {spec.check['compressed_error']}" and top5.startswith("Top-5 error: ")
    assert 0 <= float(top5.split(": ")[1]) <= float(top1.split(": ")[1])
    assert exit_code(imagenet_main, "--cfg", cfg_path) == 0  # imagenetEpsilonResnet.py --cfg, as in the original
    assert capsys.readouterr().out.splitlines()[:2] == [top1, top5]
    # ... which exports too (here to ONNX), each file checked on the 12 validation images.
    export_dir = tmp_path / "exported"
    assert exit_code(imagenet_main, "--cfg", cfg_path, "--export", export_dir, "--format", "onnx") == 0
    checks = capsys.readouterr().out.splitlines()[2:-1]
    assert [line.split(" input)")[0] for line in checks] == [f"{export_dir}/onnx/float32.onnx (float32",
                                                             f"{export_dir}/onnx/uint8.onnx (uint8"]
    assert all("on 12 images" in line and ": matches; error" in line for line in checks)
