"""ImageNet from a JPEG folder or tfds, its augmentation and evaluation crop, and fake ImageNet."""
import io
import os
import subprocess
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import cv2
import numpy as np
import pytest
import tensorflow as tf

import data_fixtures as fx
from epsilon_resnet.data import augment, get_source
from epsilon_resnet.errors import DataError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZE = 32
SEED = tf.constant([3, 4], tf.int64)
# (split, wnid, file name, (height, width), encoding); "broken" files hold half a JPEG.
FILES = [
    ("train", "n00000001", "a.JPEG", (40, 60), ".JPEG"),
    ("train", "n00000001", "b.JPEG", (64, 48), ".JPEG"),
    ("train", "n00000001", "c.JPEG", (36, 36), ".JPEG"),
    ("train", "n00000002", "broken.JPEG", (50, 50), "broken"),
    ("train", "n00000002", "d.JPEG", (50, 80), ".JPEG"),
    ("train", "n00000002", "e.JPEG", (45, 45), ".png"),  # a PNG named .JPEG, as ImageNet has one
    # named by ILSVRC2012 image id, whose order (3 of class 2 first) is not the class folders'
    ("val", "n00000001", "ILSVRC2012_val_00000003.JPEG", (70, 50), ".JPEG"),
    ("val", "n00000002", "ILSVRC2012_val_00000001.JPEG", (40, 90), ".JPEG"),
    ("val", "n00000002", "ILSVRC2012_val_00000004.JPEG", (40, 40), "broken"),
    ("val", "n00000002", "ILSVRC2012_val_00000002.JPEG", (60, 60), ".png"),
]


@pytest.fixture(scope="module")
def imagenet_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("imagenet")
    for k, (split, wnid, name, (height, width), encoding) in enumerate(FILES):
        path = str(directory / split / wnid / name)
        fx.write_image(path, fx.smooth_image(height, width, k), ".JPEG" if encoding == "broken" else encoding)
        if encoding == "broken":
            with open(path, "r+b") as f:
                f.truncate(os.path.getsize(path) // 2)
    return str(directory)


def reference_eval(path, size):
    """The original's validation input, with OpenCV as it ran it: ResizeShortestEdge(256)
    (shorter side to 256/224 of the crop size, the other to int(scale * side), INTER_LINEAR),
    then CenterCrop (offsets int((side - size) / 2))."""
    with open(path, "rb") as f:
        image = tf.io.decode_image(f.read(), channels=3).numpy().astype(np.float32)
    height, width = image.shape[:2]
    scale = round(size * 256 / 224) / min(height, width)
    new_h, new_w = int(scale * height), int(scale * width)
    resized = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    top, left = int((new_h - size) / 2), int((new_w - size) / 2)
    return resized[top:top + size, left:left + size]


def test_folder_lists_classes_from_sorted_train_wnids(imagenet_dir):
    source = get_source("imagenet", imagenet_dir, image_size=SIZE)
    assert (source.name, source.num_classes, source.image_shape) == ("imagenet", 2, (SIZE, SIZE, 3))
    assert (source.num_train, source.num_eval) == (6, 4)  # broken files are listed, then skipped
    np.testing.assert_allclose(source.pixel_mean, 255 * np.array([0.485, 0.456, 0.406]), rtol=1e-6)
    np.testing.assert_allclose(source.pixel_scale, 1 / (255 * np.array([0.229, 0.224, 0.225])), rtol=1e-6)
    assert source.pixel_mean.dtype == source.pixel_scale.dtype == np.float32


def test_eval_skips_the_broken_file_and_matches_resize_then_centre_crop(imagenet_dir):
    source = get_source("imagenet", imagenet_dir, image_size=SIZE)
    batches = [(x.numpy(), y.numpy()) for x, y in source.eval_dataset(2)]
    images = np.concatenate([b[0] for b in batches])
    labels = np.concatenate([b[1] for b in batches])
    good = sorted((f for f in FILES if f[0] == "val" and f[4] != "broken"), key=lambda f: f[2])  # by image id
    np.testing.assert_array_equal(labels, [1, 1, 0])
    np.testing.assert_array_equal(labels, [int(wnid[-1]) - 1 for _, wnid, *_ in good])
    for image, (split, wnid, name, *_) in zip(images, good):
        np.testing.assert_allclose(image, reference_eval(os.path.join(imagenet_dir, split, wnid, name), SIZE), atol=0.01)
    again = np.concatenate([x.numpy() for x, _ in source.eval_dataset(3)])
    np.testing.assert_array_equal(images, again)


def test_train_survives_the_broken_file_and_gives_augmented_crops(imagenet_dir):
    source = get_source("imagenet", imagenet_dir, image_size=SIZE)
    runs = [[(x.numpy(), y.numpy()) for x, y in source.train_dataset(4, seed=s).take(4)] for s in (1, 1, 2)]
    for images, labels in runs[0]:  # 16 images: three passes over the 5 good files
        assert images.shape == (4, SIZE, SIZE, 3) and images.dtype == np.float32
        assert images.min() >= 0 and images.max() <= 255
        assert set(labels) <= {0, 1}
    assert all(np.array_equal(a[0], b[0]) for a, b in zip(runs[0], runs[1]))
    assert not all(np.array_equal(a[0], c[0]) for a, c in zip(runs[0], runs[2]))


def test_a_broken_file_is_reported_as_a_warning(imagenet_dir):
    code = ("from epsilon_resnet.data import get_source\n"
            f"source = get_source('imagenet', {imagenet_dir!r}, image_size={SIZE})\n"
            "print('images:', sum(len(labels) for _, labels in source.eval_dataset(2)))\n")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="0",
               PYTHONPATH=os.pathsep.join([ROOT, *filter(None, [os.environ.get("PYTHONPATH")])]))
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "images: 3" in run.stdout
    assert "Invalid JPEG data" in run.stderr  # the warning quotes the decoder's error


def test_validation_files_not_named_by_image_id_come_in_a_fixed_shuffled_order(tmp_path):
    """8 flat images, 4 per class folder, grey level 20·k for file k of the class-folder order."""
    for k in range(8):
        fx.write_image(str(tmp_path / "val" / f"n{k // 4}" / f"{k}.png"), np.full((20, 20, 3), 20 * k, np.uint8), ".png")
    fx.write_image(str(tmp_path / "train" / "n0" / "a.png"), fx.smooth_image(20, 20, 0), ".png")
    fx.write_image(str(tmp_path / "train" / "n1" / "a.png"), fx.smooth_image(20, 20, 1), ".png")

    def eval_order():
        batches = list(get_source("imagenet", str(tmp_path), image_size=8).eval_dataset(4))
        grey = np.concatenate([x.numpy()[:, 0, 0, 0] for x, _ in batches])
        return [int(round(g / 20)) for g in grey], [set(y.numpy()) for _, y in batches]

    order, classes_per_batch = eval_order()
    assert sorted(order) == list(range(8)) and order != list(range(8))
    assert eval_order()[0] == order                 # fixed: the same order every time
    assert classes_per_batch == [{0, 1}, {0, 1}]    # batches mix the classes


def test_cmyk_and_grayscale_jpegs_decode_to_rgb(tmp_path):
    pil = pytest.importorskip("PIL.Image")
    image = fx.smooth_image(30, 40, 0)
    for split, name in (("train", "cmyk.JPEG"), ("val", "cmyk.JPEG")):
        (tmp_path / split / "n1").mkdir(parents=True)
        buffer = io.BytesIO()
        pil.fromarray(image).convert("CMYK").save(buffer, format="JPEG", quality=95)
        (tmp_path / split / "n1" / name).write_bytes(buffer.getvalue())
    fx.write_image(str(tmp_path / "val" / "n1" / "gray.JPEG"), np.repeat(image[:, :, :1], 3, axis=2))
    source = get_source("imagenet", str(tmp_path), image_size=16)
    images = np.concatenate([x.numpy() for x, _ in source.eval_dataset(4)])
    assert images.shape == (2, 16, 16, 3)


def test_folder_errors_are_clear(tmp_path):
    with pytest.raises(DataError) as error:
        get_source("imagenet", str(tmp_path))
    for text in (str(tmp_path / "train"), str(tmp_path / "val"), "n01440764", "imagenet2012"):
        assert text in str(error.value)
    fx.write_image(str(tmp_path / "train" / "n1" / "a.JPEG"), fx.smooth_image(20, 20, 0))
    with pytest.raises(DataError, match="val"):
        get_source("imagenet", str(tmp_path))
    fx.write_image(str(tmp_path / "val" / "n9" / "a.JPEG"), fx.smooth_image(20, 20, 0))
    with pytest.raises(DataError, match="n9"):
        get_source("imagenet", str(tmp_path))
    with pytest.raises(DataError, match="image_size=0 must be a whole number >= 1"):
        get_source("imagenet", str(tmp_path), image_size=0)


def test_from_a_folder_tensorflow_datasets_prepared(tmp_path):
    import tensorflow_datasets as tfds

    def examples(count, shape):
        for k in range(count):
            path = str(tmp_path / "jpeg" / f"{k}.jpg")
            fx.write_image(path, fx.smooth_image(*shape, k))
            yield k, {"image": open(path, "rb").read(), "label": k % 3}

    features = tfds.features.FeaturesDict({"image": tfds.features.Image(encoding_format="jpeg"),
                                           "label": tfds.features.ClassLabel(num_classes=3)})
    tfds.dataset_builders.store_as_tfds_dataset(
        "imagenet2012", "5.1.0", features, {"train": list(examples(6, (40, 50))),
                                            "validation": list(examples(4, (30, 60)))}, data_dir=str(tmp_path / "tfds"))
    source = get_source("imagenet", str(tmp_path / "tfds"), image_size=SIZE)
    assert (source.num_classes, source.num_train, source.num_eval) == (3, 6, 4)
    images, _ = next(iter(source.train_dataset(4, seed=0)))
    assert images.shape == (4, SIZE, SIZE, 3)
    assert sum(len(labels) for _, labels in source.eval_dataset(3)) == 4


# --- augmentation ------------------------------------------------------------------------

def photo(height, width, seed=0):
    return tf.constant(fx.smooth_image(height, width, seed).astype(np.float32))


def test_train_recipe_order():
    names = [getattr(op, "func", op).__name__ for op in augment.imagenet_train(224)]
    assert names == ["random_resized_crop", "in_random_order", "clip_pixels", "random_flip"]
    colour = [op.func.__name__ for op in augment.imagenet_train(224)[1].keywords["ops"]]
    assert colour == ["random_brightness", "random_contrast", "random_saturation", "pca_lighting"]
    assert [(op.func.__name__, op.keywords["size"]) for op in augment.imagenet_eval(224)] == [
        ("resize_shorter", 256), ("center_crop", 224)]


def test_random_resized_crop_shapes_and_seeding():
    for shape in ((40, 60), (10, 200), (3, 3)):
        out = augment.random_resized_crop(photo(*shape), SEED, size=SIZE)
        assert out.shape == (SIZE, SIZE, 3)
    image = photo(50, 70)
    same = [augment.random_resized_crop(image, SEED, size=SIZE).numpy() for _ in range(2)]
    np.testing.assert_array_equal(*same)
    other = augment.random_resized_crop(image, tf.constant([5, 6], tf.int64), size=SIZE).numpy()
    assert not np.array_equal(same[0], other)


def bicubic(image, size):
    """The resize the crops use (cv2's INTER_CUBIC of uint8 images saturates: clip)."""
    return np.clip(tf.image.resize(image, [size, size], method="bicubic").numpy(), 0, 255)


def test_random_resized_crop_of_the_whole_area_is_a_plain_resize():
    image = photo(48, 48)
    out = augment.random_resized_crop(image, SEED, size=SIZE, area_range=(1.0, 1.0), aspect_range=(1.0, 1.0))
    np.testing.assert_allclose(out, bicubic(image, SIZE), atol=1e-3)


def test_when_no_box_fits_the_whole_image_is_resized_to_a_square():
    image = photo(40, 70)
    out = augment.random_resized_crop(image, SEED, size=SIZE, area_range=(1.5, 2.0))  # never fits in 10 tries
    np.testing.assert_allclose(out, bicubic(image, SIZE), atol=1e-3)  # all of it, squeezed: no centre crop


def position_coded(height, width):
    """An image whose pixel (y, x) holds (y, x, 0): a crop's corner pixels give its box."""
    ys, xs = np.mgrid[:height, :width]
    return tf.constant(np.stack([ys, xs, np.zeros_like(ys)], -1).astype(np.float32))


def test_crop_boxes_have_truncated_sides_and_randint_offsets():
    # Area 0.525625 of 12 x 12 at aspect 1 is a box of side sqrt(75.69) = 8.7: truncated to 8,
    # so resizing to 8 x 8 keeps the pixels; offsets are randint(12 - 8): 0..3, never 4.
    image = position_coded(12, 12)
    crops = tf.data.Dataset.range(2000).map(lambda s: augment.random_resized_crop(
        image, tf.stack([s, tf.constant(5, tf.int64)]), size=8, area_range=(0.525625, 0.525625),
        aspect_range=(1.0, 1.0)))
    crops = np.concatenate(list(crops.batch(2000).as_numpy_iterator()))
    np.testing.assert_allclose(crops[:, 7, 7, :2] - crops[:, 0, 0, :2], 7, atol=1e-4)  # 8 x 8 boxes, unscaled
    offsets = {tuple(corner) for corner in np.rint(crops[:, 0, 0, :2]).astype(int)}
    assert offsets == {(top, left) for top in range(4) for left in range(4)}


def test_validation_resize_truncates_the_longer_side():
    image = photo(40, 70)
    assert augment.resize_shorter(image, size=SIZE).shape[:2] == (SIZE, 56)  # int(70 * 32 / 40) = 56
    assert augment.resize_shorter(photo(45, 70), size=SIZE).shape[:2] == (SIZE, 49)  # int(49.78): 49, not 50
    assert augment.resize_shorter(photo(70, 45), size=SIZE).shape[:2] == (49, SIZE)


def test_brightness_and_saturation_follow_their_formulas():
    image = photo(8, 8)
    shift = augment.random_brightness(image, SEED, delta=30.0) - image
    assert np.allclose(shift, shift[0, 0, 0], atol=1e-3) and abs(float(shift[0, 0, 0])) <= 30
    gray = tf.repeat(image[..., :1], 3, axis=-1)  # a gray image has nothing to (de)saturate
    np.testing.assert_allclose(augment.random_saturation(gray, SEED, amount=0.4), gray, atol=1e-3)
    luma = np.sum(image.numpy() * [0.299, 0.587, 0.114], axis=-1, keepdims=True)
    saturated = augment.random_saturation(image, SEED, amount=0.4).numpy()
    alpha = np.sum((saturated - luma) * (image.numpy() - luma)) / np.sum((image.numpy() - luma) ** 2)
    assert 0.6 <= alpha <= 1.4
    np.testing.assert_allclose(saturated, image.numpy() * alpha + luma * (1 - alpha), atol=1e-2)


def test_lighting_noise_is_at_the_originals_scale_of_hundredths_of_a_grey_level():
    image = tf.zeros((4, 4, 3))  # the op adds without clipping: its output is the shift itself
    shifts = tf.data.Dataset.range(4000).map(lambda s: augment.pca_lighting(
        image, tf.stack([s, tf.constant(8, tf.int64)]), std=0.1))
    shifts = np.concatenate(list(shifts.batch(4000).as_numpy_iterator())).astype(np.float64)
    np.testing.assert_array_equal(shifts, np.broadcast_to(shifts[:, :1, :1], shifts.shape))  # one shift per image ...
    alphas = np.linalg.solve(augment.IMAGENET_EIGVEC, shifts[:, 0, 0].T).T / augment.IMAGENET_EIGVAL
    assert abs(alphas.std() - 0.1) < 0.005 and abs(alphas.mean()) < 0.005  # ... of eigvec·(N(0, 0.1)·eigval)
    expected_rms = 0.1 * np.sqrt(np.mean(np.sum((augment.IMAGENET_EIGVEC * augment.IMAGENET_EIGVAL) ** 2, axis=1)))
    assert np.sqrt(np.mean(shifts[:, 0, 0] ** 2)) == pytest.approx(expected_rms, rel=0.05)
    assert 0.01 < expected_rms < 0.02 and np.abs(shifts).max() < 0.1  # in 0..255 pixels: not ×255


def test_in_random_order_applies_each_op_once_in_both_orders():
    ops = (lambda image, seed: image * 2, lambda image, seed: image + 1)
    results = {float(augment.in_random_order(tf.constant(1.0), tf.constant([s, 0], tf.int64), ops=ops))
               for s in range(20)}
    assert results == {3.0, 4.0}  # 1*2+1 and (1+1)*2


# --- fake ImageNet -----------------------------------------------------------------------

def test_fake_imagenet_evaluates_512_images_unless_told_otherwise():
    source = get_source("fake-imagenet")
    assert (source.num_train, source.num_eval, source.image_shape, source.family) == (
        1281167, 512, (224, 224, 3), "imagenet")
    assert get_source("fake-imagenet", num_eval=50000).num_eval == 50000
    assert [len(y) for _, y in get_source("fake-imagenet", image_size=8).eval_dataset(200)] == [200, 200, 112]
    with pytest.raises(DataError, match="num_eval=0 must be a whole number >= 1"):
        get_source("fake-imagenet", num_eval=0)


def test_fake_imagenet_is_shaped_like_imagenet_and_seeded():
    source = get_source("fake-imagenet", image_size=16, num_classes=5, num_train=20, num_eval=7)
    assert (source.name, source.num_classes, source.image_shape, source.num_train, source.num_eval) == (
        "fake-imagenet", 5, (16, 16, 3), 20, 7)
    assert source.pixel_mean.shape == source.pixel_scale.shape == (3,)
    runs = [[(x.numpy(), y.numpy()) for x, y in source.train_dataset(4, seed=s).take(2)] for s in (0, 0, 1)]
    images, labels = runs[0][0]
    assert images.shape == (4, 16, 16, 3) and images.dtype == np.float32 and labels.dtype == np.int32
    assert images.min() >= 0 and images.max() <= 255 and set(labels) <= set(range(5))
    assert all(np.array_equal(a[0], b[0]) for a, b in zip(runs[0], runs[1]))
    assert not all(np.array_equal(a[0], c[0]) for a, c in zip(runs[0], runs[2]))
    assert [len(y) for _, y in source.eval_dataset(4)] == [4, 3]
