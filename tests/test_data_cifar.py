"""CIFAR-10/100 loading in every on-disk form, the dataset registry, and the shared training pipeline."""
import hashlib
import importlib.util
import os
import pickle
import subprocess
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest
import tensorflow as tf

import data_fixtures as fx
from epsilon_resnet.data import augment, get_source
from epsilon_resnet.errors import DataError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_TRAIN, NUM_TEST, SEED = 30, 10, 0


def eval_arrays(source, batch_size=4):
    batches = list(source.eval_dataset(batch_size))
    for images, labels in batches:
        assert images.dtype == tf.float32 and labels.dtype == tf.int32
    return (np.concatenate([b[0].numpy() for b in batches]), np.concatenate([b[1].numpy() for b in batches]),
            [len(b[1]) for b in batches])


def assert_reads(source, num_classes, train, test):
    assert (source.num_classes, source.image_shape) == (num_classes, (32, 32, 3))
    assert (source.num_train, source.num_eval) == (len(train[0]), len(test[0]))
    np.testing.assert_allclose(source.pixel_mean, train[0].astype(np.float64).mean(axis=0), rtol=1e-6)
    assert source.pixel_mean.dtype == np.float32 and source.pixel_mean.shape == (32, 32, 3)
    assert source.pixel_scale.dtype == np.float32 and float(source.pixel_scale) == 1 / 128
    images, labels, _ = eval_arrays(source)
    np.testing.assert_array_equal(images, test[0])
    np.testing.assert_array_equal(labels, test[1])


def write_cifar10(kind, dir):
    if kind.startswith("python"):
        fx.write_cifar10_python(dir, NUM_TRAIN, NUM_TEST, SEED)
        folder, tarball = "cifar-10-batches-py", "cifar-10-python.tar.gz"
    else:
        fx.write_cifar10_binary(dir, NUM_TRAIN, NUM_TEST, SEED)
        folder, tarball = "cifar-10-batches-bin", "cifar-10-binary.tar.gz"
    if kind.endswith("tarball"):
        fx.tar_folder(dir, folder, tarball)
    return str(dir)


@pytest.mark.parametrize("kind", ["python-folder", "python-tarball", "binary-folder", "binary-tarball"])
def test_cifar10_every_format_reads_the_written_pixels_and_labels(tmp_path, kind):
    source = get_source("cifar10", write_cifar10(kind, tmp_path))
    assert source.name == "cifar10"
    assert_reads(source, 10, *fx.cifar_splits(NUM_TRAIN, NUM_TEST, 10, SEED))


def test_cifar10_data_dir_may_be_the_data_folder_itself(tmp_path):
    fx.write_cifar10_python(tmp_path, NUM_TRAIN, NUM_TEST, SEED)
    source = get_source("cifar10", str(tmp_path / "cifar-10-batches-py"))
    assert (source.num_train, source.num_eval) == (NUM_TRAIN, NUM_TEST)


def test_cifar10_from_a_folder_tensorflow_datasets_prepared(tmp_path):
    fx.tar_folder(write_cifar10("binary-folder", tmp_path / "manual"), "cifar-10-batches-bin", "cifar-10-binary.tar.gz")
    data_dir = fx.prepare_tfds(str(tmp_path / "tfds"), "cifar10", str(tmp_path / "manual"))
    source = get_source("cifar10", data_dir)
    train, test = fx.cifar_splits(NUM_TRAIN, NUM_TEST, 10, SEED)
    assert (source.num_train, source.num_eval) == (NUM_TRAIN, NUM_TEST)
    np.testing.assert_allclose(source.pixel_mean, train[0].astype(np.float64).mean(axis=0), rtol=1e-6)
    images, labels, _ = eval_arrays(source)  # tfds stores examples in its own order
    by_pixels = lambda ims, lbs: sorted((im.astype(np.uint8).tobytes(), int(lb)) for im, lb in zip(ims, lbs))
    assert by_pixels(images, labels) == by_pixels(*test)
    held = smallest_hashes(train[0], 8)  # the held-out split does not depend on the storage order
    images, labels, _ = eval_arrays(get_source("cifar10", data_dir, holdout=8))
    assert by_pixels(images, labels) == by_pixels(train[0][held], train[1][held])


@pytest.mark.parametrize("kind", ["python", "binary"])
def test_cifar100_reads_the_fine_labels(tmp_path, kind):
    writer = fx.write_cifar100_python if kind == "python" else fx.write_cifar100_binary
    source = get_source("cifar100", str(writer(tmp_path, 200, 100, SEED)))
    assert source.name == "cifar100"
    assert_reads(source, 100, *fx.cifar_splits(200, 100, 100, SEED))


def test_missing_data_says_where_it_looked_and_what_to_put_there(tmp_path):
    with pytest.raises(DataError) as error:
        get_source("cifar10", str(tmp_path))
    message = str(error.value)
    for text in ("cifar10", str(tmp_path / "cifar-10-batches-py"), str(tmp_path / "cifar-10-python.tar.gz"),
                 str(tmp_path / "cifar-10-batches-bin"), str(tmp_path / "cifar-10-binary.tar.gz"),
                 os.path.join(str(tmp_path), "cifar10", "<version>"), "data_batch_1"):
        assert text in message
    with pytest.raises(DataError, match="cifar-100-python.tar.gz"):
        get_source("cifar100", str(tmp_path))


def test_a_missing_batch_is_named(tmp_path):
    fx.write_cifar10_python(tmp_path, NUM_TRAIN, NUM_TEST, SEED)
    os.remove(tmp_path / "cifar-10-batches-py" / "data_batch_4")
    with pytest.raises(DataError, match="data_batch_4"):
        get_source("cifar10", str(tmp_path))


def truncate(path, keep=0.45):
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[:int(len(data) * keep)])


@pytest.mark.parametrize("kind, damaged, expected", [
    ("python-folder", "cifar-10-batches-py/data_batch_2", "data_batch_2.*cannot unpickle"),
    ("binary-folder", "cifar-10-batches-bin/test_batch.bin", "test_batch.bin.*3073-byte records"),
    ("python-tarball", "cifar-10-python.tar.gz", "cifar-10-python.tar.gz.*unreadable"),
])
def test_a_truncated_file_is_named(tmp_path, kind, damaged, expected):
    write_cifar10(kind, tmp_path)
    truncate(tmp_path / damaged)
    with pytest.raises(DataError, match=expected):
        get_source("cifar10", str(tmp_path))


def test_a_batch_of_the_wrong_shape_is_named(tmp_path):
    fx.write_cifar10_python(tmp_path, NUM_TRAIN, NUM_TEST, SEED)
    with open(tmp_path / "cifar-10-batches-py" / "test_batch", "wb") as f:
        pickle.dump({b"data": np.zeros((10, 1024), np.uint8), b"labels": [0] * 10}, f)
    with pytest.raises(DataError, match=r"test_batch.*\(10, 1024\).*3072"):
        get_source("cifar10", str(tmp_path))


def test_unknown_names_and_options_are_refused():
    with pytest.raises(DataError, match="cifar10, cifar100, svhn, imagenet, fake-imagenet"):
        get_source("mnist")
    with pytest.raises(DataError, match="use_extr;.*use_extra, holdout"):
        get_source("svhn", "/nonexistent", use_extr=False)
    with pytest.raises(ValueError):  # DataError is a ValueError, for callers that catch those
        get_source("cifar10", "/nonexistent", num_eval=5)


# --- the registry ------------------------------------------------------------------------

def test_each_dataset_has_one_family_and_the_source_carries_it(tmp_path):
    from epsilon_resnet import data, structures

    assert {name: data.family_of(name) for name in data.DATASETS} == {
        "cifar10": "cifar", "cifar100": "cifar", "svhn": "cifar", "imagenet": "imagenet", "fake-imagenet": "imagenet"}
    assert set(data.family_of(name) for name in data.DATASETS) <= set(structures.FAMILIES)
    with pytest.raises(DataError, match="'mnist'.*cifar10, cifar100, svhn, imagenet, fake-imagenet"):
        data.family_of("mnist")
    fx.write_cifar10_python(tmp_path, NUM_TRAIN, NUM_TEST, SEED)
    assert get_source("cifar10", str(tmp_path)).family == "cifar"
    assert get_source("fake-imagenet", num_train=4).family == "imagenet"


def test_importing_the_package_does_not_import_tensorflow():
    # The command lines import it before --gpu sets CUDA_VISIBLE_DEVICES, read at TF's import.
    code = ("import sys\nimport epsilon_resnet.data as data\n"
            "assert data.family_of('svhn') == 'cifar'\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras')))\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, *filter(None, [os.environ.get("PYTHONPATH")])]))
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip() == "[]"


# --- the training pipeline, on the tiny CIFAR-10 -----------------------------------------

@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    directory = fx.write_cifar10_python(str(tmp_path_factory.mktemp("cifar")), NUM_TRAIN, NUM_TEST, SEED)
    train, _ = fx.cifar_splits(NUM_TRAIN, NUM_TEST, 10, SEED)
    return get_source("cifar10", directory), train


def first_batches(dataset, count):
    return [(x.numpy(), y.numpy()) for x, y in dataset.take(count)]


def identify(image, train_images):
    """(source index, top, left, flipped) such that the image is that 32x32 window of the
    zero-padded 40x40 training image (flipped left-right if flipped), or None."""
    padded = np.pad(train_images, ((0, 0), (4, 4), (4, 4), (0, 0)))
    for flipped, candidates in ((False, padded), (True, padded[:, :, ::-1])):
        for top in range(9):
            for left in range(9):
                hits = np.flatnonzero((candidates[:, top:top + 32, left:left + 32] == image).all(axis=(1, 2, 3)))
                if hits.size:
                    return int(hits[0]), top, left, flipped
    return None


def test_train_batches_have_the_promised_shape_type_and_range(tiny):
    source, _ = tiny
    dataset = source.train_dataset(8, seed=1)
    assert dataset.element_spec[0].shape.as_list() == [8, 32, 32, 3]
    for images, labels in first_batches(dataset, 6):  # 48 images: more than one epoch of 30, so it repeats
        assert images.shape == (8, 32, 32, 3) and images.dtype == np.float32
        assert labels.shape == (8,) and labels.dtype == np.int32
        assert images.min() >= 0 and images.max() <= 255


def test_train_stream_is_fixed_by_the_seed(tiny):
    source, _ = tiny
    first, again, other = (first_batches(source.train_dataset(8, seed=s), 5) for s in (3, 3, 4))
    for (x1, y1), (x2, y2) in zip(first, again):
        np.testing.assert_array_equal(x1, x2)
        np.testing.assert_array_equal(y1, y2)
    assert any(not np.array_equal(x1, x3) for (x1, _), (x3, _) in zip(first, other))


def test_augmentation_is_a_flipped_or_not_crop_of_the_padded_image(tiny):
    source, (train_images, train_labels) = tiny
    found = []
    for images, labels in first_batches(source.train_dataset(10, seed=5), 6):  # two epochs
        for image, label in zip(images, labels):
            match = identify(image, train_images)
            assert match is not None, "not a window of a padded training image"
            assert label == train_labels[match[0]]
            found.append(match)
    assert {m[0] for m in found[:30]} == set(range(30)), "one epoch shows every image once"
    assert {m[3] for m in found} == {False, True}, "flips happen, and not always"
    assert len({(m[1], m[2]) for m in found}) > 5, "crops move"


def test_input_context_gives_per_replica_batches_from_disjoint_shards(tiny):
    source, train = tiny
    seen = []
    for pipeline in range(2):
        context = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=pipeline,
                                             num_replicas_in_sync=2)
        batches = first_batches(source.train_dataset(8, seed=7, input_context=context), 4)
        assert all(images.shape == (4, 32, 32, 3) for images, _ in batches)
        images = np.concatenate([images for images, _ in batches])[:15]  # one epoch of this shard's 15
        seen.append({identify(image, train[0])[0] for image in images})
    assert len(seen[0]) == len(seen[1]) == 15
    assert not seen[0] & seen[1]


def test_eval_is_finite_ordered_and_keeps_the_last_short_batch(tiny):
    source, _ = tiny
    _, test = fx.cifar_splits(NUM_TRAIN, NUM_TEST, 10, SEED)
    images, labels, sizes = eval_arrays(source, batch_size=4)
    assert sizes == [4, 4, 2]
    np.testing.assert_array_equal(images, test[0])
    np.testing.assert_array_equal(labels, test[1])


# --- the committed sample and the script that made it ------------------------------------

def test_committed_sample_is_a_balanced_cifar10():
    source = get_source("cifar10", os.path.join(ROOT, "data", "cifar10-sample"))
    assert (source.num_train, source.num_eval) == (500, 200)
    _, labels, _ = eval_arrays(source, batch_size=200)
    assert np.bincount(labels).tolist() == [20] * 10


def test_sample_script_writes_a_balanced_official_layout(tmp_path):
    spec = importlib.util.spec_from_file_location("make_cifar10_sample",
                                                  os.path.join(ROOT, "scripts", "make_cifar10_sample.py"))
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    fx.write_cifar10_python(tmp_path / "full", 100, 50, SEED)
    script.main(["--src", str(tmp_path / "full"), "--out", str(tmp_path / "sample"),
                 "--train-per-class", "3", "--test-per-class", "2"])
    folder = tmp_path / "sample" / "cifar-10-batches-py"
    assert sorted(os.listdir(folder)) == ["batches.meta"] + [f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]
    source = get_source("cifar10", str(tmp_path / "sample"))
    assert (source.num_train, source.num_eval) == (30, 20)
    full_train, full_test = fx.cifar_splits(100, 50, 10, SEED)
    images, labels, _ = eval_arrays(source)
    assert np.bincount(labels).tolist() == [2] * 10
    for image, label in zip(images, labels):  # every sampled image is a real one, with its own label
        hit = np.flatnonzero((full_test[0] == image).all(axis=(1, 2, 3)))
        assert hit.size == 1 and full_test[1][hit[0]] == label


# --- the held-out validation split --------------------------------------------------------

def smallest_hashes(images, count):
    """Positions of the `count` images whose BLAKE2b-64 pixel hash is smallest (the documented rule)."""
    keys = [int.from_bytes(hashlib.blake2b(image.tobytes(), digest_size=8).digest(), "big") for image in images]
    return sorted(sorted(range(len(images)), key=keys.__getitem__)[:count])


def test_holdout_evaluates_on_fixed_training_images_and_trains_on_the_rest(tmp_path):
    fx.write_cifar10_python(tmp_path, NUM_TRAIN, NUM_TEST, SEED)
    (train_images, train_labels), _ = fx.cifar_splits(NUM_TRAIN, NUM_TEST, 10, SEED)
    held = smallest_hashes(train_images, 8)
    kept = [i for i in range(NUM_TRAIN) if i not in held]
    source = get_source("cifar10", str(tmp_path), holdout=8)
    assert (source.num_train, source.num_eval, source.family) == (22, 8, "cifar")
    images, labels, _ = eval_arrays(source)
    np.testing.assert_array_equal(images, train_images[held])
    np.testing.assert_array_equal(labels, train_labels[held])
    np.testing.assert_allclose(source.pixel_mean, train_images[kept].astype(np.float64).mean(axis=0), rtol=1e-6)
    one_epoch = np.concatenate([images for images, _ in first_batches(source.train_dataset(11, seed=3), 2)])
    assert sorted(identify(image, train_images)[0] for image in one_epoch) == kept
    again = get_source("cifar10", str(tmp_path), holdout=8)  # the same split every time: no seed involved
    np.testing.assert_array_equal(eval_arrays(again)[0], images)


@pytest.mark.parametrize("kind", ["binary-folder", "python-tarball"])
def test_holdout_picks_the_same_images_from_every_file_form(tmp_path, kind):
    python = get_source("cifar10", write_cifar10("python-folder", tmp_path / "python"), holdout=8)
    other = get_source("cifar10", write_cifar10(kind, tmp_path / "other"), holdout=8)
    np.testing.assert_array_equal(eval_arrays(python)[0], eval_arrays(other)[0])
    np.testing.assert_array_equal(python.pixel_mean, other.pixel_mean)


def test_holdout_for_cifar100_and_through_a_config(tmp_path):
    fx.write_cifar100_python(tmp_path, 200, 100, SEED)
    (train_images, train_labels), _ = fx.cifar_splits(200, 100, 100, SEED)
    source = get_source("cifar100", str(tmp_path), holdout=50)
    held = smallest_hashes(train_images, 50)
    assert (source.num_train, source.num_eval) == (150, 50)
    np.testing.assert_array_equal(eval_arrays(source)[1], train_labels[held])
    from epsilon_resnet import config as config_lib

    config = config_lib.from_dict({"data": {"name": "cifar100", "dir": str(tmp_path), "options": {"holdout": 50}}})
    source = get_source(config.data.name, config.data.dir, **config.data.options)
    assert (source.num_train, source.num_eval) == (150, 50)


@pytest.mark.parametrize("holdout, expected", [
    (NUM_TRAIN, r"holdout=30 must lie in 0\.\.29.*30 training images"),
    (-1, r"holdout=-1 must lie in 0\.\.29"),
    (2.5, "holdout=2.5 must be a whole number"),
    ("5000", "holdout='5000' must be a whole number"),
])
def test_a_bad_holdout_is_refused_with_what_is_allowed(tmp_path, holdout, expected):
    fx.write_cifar10_python(tmp_path, NUM_TRAIN, NUM_TEST, SEED)
    with pytest.raises(DataError, match=expected):
        get_source("cifar10", str(tmp_path), holdout=holdout)


# --- crop offsets ------------------------------------------------------------------------

def position_coded(size):
    """A size x size image whose pixel (y, x) holds (y, x, 0): a crop's first pixel is its offset."""
    ys, xs = np.mgrid[:size, :size]
    return tf.constant(np.stack([ys, xs, np.zeros_like(ys)], -1).astype(np.float32))


def test_crop_offsets_are_tensorpacks_randint_0_to_7_never_8():
    image = position_coded(40)
    corners = tf.data.Dataset.range(3000).map(
        lambda s: augment.random_crop(image, tf.stack([s, tf.constant(11, tf.int64)]), size=32)[0, 0, :2])
    offsets = np.concatenate(list(corners.batch(3000).as_numpy_iterator())).astype(int)
    assert {tuple(o) for o in offsets} == {(top, left) for top in range(8) for left in range(8)}
    assert [getattr(op, "func", op).__name__ for op in augment.CIFAR_TRAIN] == ["pad_centered", "random_crop",
                                                                              "random_flip"]
    np.testing.assert_array_equal(augment.random_crop(image, tf.constant([1, 2], tf.int64), size=40), image)
