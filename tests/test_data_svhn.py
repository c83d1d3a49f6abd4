"""SVHN loading (.mat files and tfds), its held-out split, and its augmentation, including the
Gaussian deformation and tensorpack's clipping brightness and contrast."""
import hashlib
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest
import scipy.ndimage
import tensorflow as tf

import data_fixtures as fx
from epsilon_resnet.data import augment, get_source
from epsilon_resnet.errors import DataError

SIZES = {"train": 20, "extra": 12, "test": 8}


def split_arrays(split):
    rng = np.random.default_rng(list(SIZES).index(split))
    count = SIZES[split]
    return rng.integers(0, 256, (count, 32, 32, 3), dtype=np.uint8), np.arange(count) % 10


@pytest.fixture(scope="module")
def svhn_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("svhn")
    for split in SIZES:
        fx.write_svhn_mat(str(directory / f"{split}_32x32.mat"), *split_arrays(split))
    return str(directory)


def eval_arrays(source):
    batches = list(source.eval_dataset(5))
    return np.concatenate([b[0].numpy() for b in batches]), np.concatenate([b[1].numpy() for b in batches])


def test_train_is_train_plus_extra_and_label_10_is_digit_0(svhn_dir):
    source = get_source("svhn", svhn_dir)
    assert (source.name, source.num_classes, source.image_shape) == ("svhn", 10, (32, 32, 3))
    assert (source.num_train, source.num_eval) == (SIZES["train"] + SIZES["extra"], SIZES["test"])
    train = np.concatenate([split_arrays("train")[0], split_arrays("extra")[0]])
    np.testing.assert_allclose(source.pixel_mean, train.astype(np.float64).mean(axis=0), rtol=1e-6)
    assert float(source.pixel_scale) == 1 / 128
    images, labels = eval_arrays(source)
    test_images, test_labels = split_arrays("test")
    np.testing.assert_array_equal(images, test_images)
    np.testing.assert_array_equal(labels, test_labels)  # written as 10 for digit 0
    assert 0 in labels


def test_use_extra_false_trains_on_train_only(svhn_dir, tmp_path):
    source = get_source("svhn", svhn_dir, use_extra=False)
    assert source.num_train == SIZES["train"]
    np.testing.assert_allclose(source.pixel_mean, split_arrays("train")[0].astype(np.float64).mean(axis=0), rtol=1e-6)
    for split in ("train", "test"):  # and extra_32x32.mat is then not needed at all
        fx.write_svhn_mat(str(tmp_path / f"{split}_32x32.mat"), *split_arrays(split))
    assert get_source("svhn", str(tmp_path), use_extra=False).num_train == SIZES["train"]
    with pytest.raises(DataError, match="use_extra='no' must be true .* or false"):
        get_source("svhn", str(tmp_path), use_extra="no")


def test_missing_extra_says_what_to_put_or_pass(tmp_path):
    for split in ("train", "test"):
        fx.write_svhn_mat(str(tmp_path / f"{split}_32x32.mat"), *split_arrays(split))
    with pytest.raises(DataError) as error:
        get_source("svhn", str(tmp_path))
    for text in (str(tmp_path / "extra_32x32.mat"), "use_extra=False", "svhn_cropped"):
        assert text in str(error.value)


def test_a_malformed_mat_file_is_named(tmp_path):
    for split in SIZES:
        fx.write_svhn_mat(str(tmp_path / f"{split}_32x32.mat"), *split_arrays(split))
    images, labels = split_arrays("test")
    fx.write_svhn_mat(str(tmp_path / "test_32x32.mat"), images[:, :28], labels)
    with pytest.raises(DataError, match=r"test_32x32.mat.*32 x 32 x 3 x N"):
        get_source("svhn", str(tmp_path))
    with open(tmp_path / "train_32x32.mat", "r+b") as f:
        f.truncate(300)
    with pytest.raises(DataError, match="train_32x32.mat.*cannot read"):
        get_source("svhn", str(tmp_path))


def test_holdout_takes_fixed_images_from_train_plus_extra(svhn_dir):
    train = [np.concatenate(parts) for parts in zip(split_arrays("train"), split_arrays("extra"))]
    keys = [int.from_bytes(hashlib.blake2b(image.tobytes(), digest_size=8).digest(), "big") for image in train[0]]
    held = sorted(sorted(range(len(keys)), key=keys.__getitem__)[:10])
    kept = [i for i in range(len(keys)) if i not in held]
    assert any(i >= SIZES["train"] for i in held), "this fixture's split should reach into extra"
    source = get_source("svhn", svhn_dir, holdout=10)
    assert (source.num_train, source.num_eval) == (len(kept), 10)
    images, labels = eval_arrays(source)
    np.testing.assert_array_equal(images, train[0][held])
    np.testing.assert_array_equal(labels, train[1][held])
    np.testing.assert_allclose(source.pixel_mean, train[0][kept].astype(np.float64).mean(axis=0), rtol=1e-6)
    with pytest.raises(DataError, match=r"holdout=20 must lie in 0\.\.19.*20 training images"):
        get_source("svhn", svhn_dir, use_extra=False, holdout=20)


def test_from_a_folder_tensorflow_datasets_prepared(svhn_dir, tmp_path):
    source = get_source("svhn", fx.prepare_tfds(str(tmp_path), "svhn_cropped", svhn_dir))
    assert (source.num_train, source.num_eval) == (SIZES["train"] + SIZES["extra"], SIZES["test"])
    images, labels = eval_arrays(source)  # tfds stores examples in its own order
    by_pixels = lambda ims, lbs: sorted((im.astype(np.uint8).tobytes(), int(lb)) for im, lb in zip(ims, lbs))
    assert by_pixels(images, labels) == by_pixels(*split_arrays("test"))


def test_train_pipeline_shape_range_and_seed(svhn_dir):
    source = get_source("svhn", svhn_dir)
    runs = [[x.numpy() for x, _ in source.train_dataset(8, seed=s).take(3)] for s in (1, 1, 2)]
    for images in runs[0]:
        assert images.shape == (8, 32, 32, 3) and images.dtype == np.float32
        assert images.min() >= 0 and images.max() <= 255
    np.testing.assert_array_equal(np.stack(runs[0]), np.stack(runs[1]))
    assert not np.array_equal(np.stack(runs[0]), np.stack(runs[2]))


# --- the Gaussian deformation ------------------------------------------------------------

def random_image(seed, size=40):
    return np.random.default_rng(seed).uniform(0, 255, (size, size, 3)).astype(np.float32)


def test_weights_follow_the_formula():
    weights = augment.gaussian_weights(40, 40, augment.SVHN_ANCHORS, 0.2)
    assert weights.shape == (40, 40, 4)
    y, x = 8, 32  # = (0.2, 0.8) * 40: the second anchor itself
    assert weights[y, x, 1] == pytest.approx(1.0)
    assert weights[0, 0, 0] == pytest.approx(np.exp(-(0.2 ** 2 + 0.2 ** 2) / 0.2))


def test_deformation_with_zero_offsets_is_the_identity():
    image = random_image(0)
    weights = augment.gaussian_weights(40, 40, augment.SVHN_ANCHORS, 0.2)
    out = augment.deform(tf.constant(image), weights, tf.zeros([4, 2]))
    np.testing.assert_allclose(out.numpy(), image, atol=1e-4)


def test_deformation_samples_bilinearly_at_the_displaced_clamped_grid():
    image = random_image(1)
    weights = augment.gaussian_weights(40, 40, augment.SVHN_ANCHORS, 0.2)
    offsets = np.random.default_rng(2).uniform(-3, 3, (4, 2)).astype(np.float32)
    out = augment.deform(tf.constant(image), weights, tf.constant(offsets)).numpy()
    grid = np.mgrid[:40, :40].astype(np.float32) + np.einsum("hwk,kc->chw", weights, offsets)
    grid = np.clip(grid, 0, 39)
    expected = np.stack([scipy.ndimage.map_coordinates(image[..., c], grid, order=1) for c in range(3)], -1)
    np.testing.assert_allclose(out, expected, atol=1e-3)
    assert not np.allclose(out, image, atol=1)


def test_svhn_recipe_order_and_output():
    names = [getattr(op, "func", op).__name__ for op in augment.SVHN_TRAIN]  # the original's, in its order
    assert names == ["pad_centered", "random_brightness", "random_contrast", "gaussian_deform", "clip_pixels",
                     "random_crop"]
    image = tf.constant(random_image(3, 32))
    out = augment.apply_random(augment.SVHN_TRAIN, image, tf.constant([5, 6], tf.int64))
    assert out.shape == (32, 32, 3) and out.dtype == tf.float32
    assert 0 <= float(tf.reduce_min(out)) and float(tf.reduce_max(out)) <= 255


def test_contrast_scales_about_each_channels_own_mean():
    image = tf.constant(np.random.default_rng(4).uniform(60, 190, (8, 8, 3)).astype(np.float32))  # never clipped
    out = augment.random_contrast(image, tf.constant([1, 2], tf.int64), lower=0.8, upper=1.2).numpy()
    centred = image.numpy() - image.numpy().mean(axis=(0, 1))
    factor = np.sum((out - image.numpy().mean(axis=(0, 1))) * centred) / np.sum(centred ** 2)
    assert 0.8 <= factor <= 1.2 and factor != pytest.approx(1.0)
    np.testing.assert_allclose(out, centred * factor + image.numpy().mean(axis=(0, 1)), atol=1e-3)


def extremes(seed):
    """An image with pixels at 0, 255 and in between, so that any shift or stretch clips some."""
    return np.random.default_rng(seed).choice([0.0, 3.0, 128.0, 252.0, 255.0], (8, 8, 3)).astype(np.float32)


def test_brightness_and_contrast_clip_to_0_255_as_tensorpack_does():
    clipped = 0
    for s in range(10):
        image, seed = extremes(s), tf.constant([s, 9], tf.int64)
        y, x, c = np.argwhere(image == 128)[0]  # a mid-grey pixel is never clipped: it shows the draw
        bright = augment.random_brightness(tf.constant(image), seed, delta=10.0).numpy()
        shift = bright[y, x, c] - 128
        assert 0 < abs(shift) <= 10
        np.testing.assert_allclose(bright, np.clip(image + shift, 0, 255), atol=1e-4)
        stretched = augment.random_contrast(tf.constant(image), seed, lower=0.8, upper=1.2).numpy()
        mean = image.mean(axis=(0, 1))
        factor = (stretched[y, x, c] - mean[c]) / (128 - mean[c])
        assert 0.8 <= factor <= 1.2
        unclipped = (image - mean) * factor + mean
        np.testing.assert_allclose(stretched, np.clip(unclipped, 0, 255), atol=1e-3)
        clipped += np.any((unclipped < 0) | (unclipped > 255))
    assert clipped > 0, "some contrast draws must need the clip, or this test shows nothing"
