"""Image augmentations of docs/original.md §6, one small function per operation, composed in lists.

Each op does what the original's tensorpack 0.2 augmentor effectively did, including its
quirks where they change the images (crop offsets, the lighting noise's scale, clipping).
A random op is `op(image, seed) -> image`: `seed` is a shape-[2] stateless seed, so the
same seed always gives the same image. Deterministic ops take `(image, seed=None)` so they
sit in the same lists. Images are float32 HxWx3 in 0..255 pixel units, RGB.
"""
import functools

import numpy as np
import tensorflow as tf

split_seed = tf.random.experimental.stateless_split

# ImageNet RGB colour PCA (Krizhevsky et al.): eigenvalues, and eigenvectors as columns.
IMAGENET_EIGVAL = np.array([0.2175, 0.0188, 0.0045], np.float32)
IMAGENET_EIGVEC = np.array([[-0.5675, 0.7192, 0.4009],
                            [-0.5808, -0.0045, -0.8140],
                            [-0.5836, -0.6948, 0.4203]], np.float32)
LUMA = np.array([0.299, 0.587, 0.114], np.float32)  # RGB -> gray weights
# tensorpack GaussianDeform anchors of the original SVHN recipe, as (y, x) fractions.
SVHN_ANCHORS = ((0.2, 0.2), (0.2, 0.8), (0.8, 0.8), (0.8, 0.2))


def apply_random(ops, image, seed):
    """Run `ops` in order, each with its own seed split off `seed`."""
    if not ops:
        return image
    seeds = tf.unstack(split_seed(seed, num=len(ops)))
    for op, op_seed in zip(ops, seeds):
        image = op(image, op_seed)
    return image


def apply_fixed(ops, image):
    for op in ops:
        image = op(image)
    return image


# --- geometry ---------------------------------------------------------------------------

def pad_centered(image, seed=None, *, size):
    """Zero-pad to size x size with the image in the middle."""
    return tf.image.resize_with_crop_or_pad(image, size, size)


def randint(seed, high):
    """numpy's randint(high) as tensorpack used it: 0..high-1, the upper end excluded; 0 if high <= 0."""
    return tf.random.stateless_uniform([], seed, 0, tf.maximum(high, 1), dtype=tf.int32)


def random_crop(image, seed, *, size):
    """tensorpack's RandomCrop: top and left offsets randint(H - size), randint(W - size), so
    a 32x32 crop of a 40x40 image starts at 0..7, never at 8 (tf.image.random_crop: 0..8)."""
    top_seed, left_seed = tf.unstack(split_seed(seed, num=2))
    shape = tf.shape(image)
    top, left = randint(top_seed, shape[0] - size), randint(left_seed, shape[1] - size)
    return tf.ensure_shape(image[top:top + size, left:left + size], [size, size, 3])


def random_flip(image, seed):
    return tf.image.stateless_random_flip_left_right(image, seed)


def resize_shorter(image, seed=None, *, size):
    """The original's ResizeShortestEdge: bilinear (cv2.INTER_LINEAR) resize of the shorter
    side to `size` and of the longer one to int(size * longer / shorter), truncated."""
    shape = tf.shape(image)[:2]
    return tf.image.resize(image, size * shape // tf.reduce_min(shape), method="bilinear")


def center_crop(image, seed=None, *, size):
    shape = tf.shape(image)
    top, left = (shape[0] - size) // 2, (shape[1] - size) // 2
    return tf.ensure_shape(image[top:top + size, left:left + size], [size, size, 3])


def random_resized_crop(image, seed, *, size, area_range=(0.08, 1.0), aspect_range=(0.75, 1.333), attempts=10):
    """The original's Inception-style crop: up to `attempts` boxes of a random fraction
    `area_range` of the image's area and aspect ratio `aspect_range`, sides truncated to
    whole pixels and swapped with probability 1/2. The first box that fits is cut at offsets
    randint(H - h), randint(W - w) and resized to size x size; if none fits, the whole image
    is resized to size x size (its aspect ratio not kept). Bicubic, then clipped to 0..255
    as cv2.resize of a uint8 image saturates.
    """
    shape = tf.shape(image)
    height, width = tf.cast(shape[0], tf.float32), tf.cast(shape[1], tf.float32)
    area_seed, aspect_seed, swap_seed, top_seed, left_seed = tf.unstack(split_seed(seed, num=5))
    areas = tf.random.stateless_uniform([attempts], area_seed, *area_range) * height * width
    aspects = tf.random.stateless_uniform([attempts], aspect_seed, *aspect_range)
    crop_w = tf.maximum(tf.floor(tf.sqrt(areas * aspects)), 1)
    crop_h = tf.maximum(tf.floor(tf.sqrt(areas / aspects)), 1)
    swap = tf.random.stateless_uniform([attempts], swap_seed) < 0.5
    crop_h, crop_w = tf.where(swap, crop_w, crop_h), tf.where(swap, crop_h, crop_w)
    fits = (crop_h <= height) & (crop_w <= width)

    def first_fitting_box():
        k = tf.argmax(tf.cast(fits, tf.int32))
        box_h, box_w = tf.cast(crop_h[k], tf.int32), tf.cast(crop_w[k], tf.int32)
        top, left = randint(top_seed, shape[0] - box_h), randint(left_seed, shape[1] - box_w)
        return image[top:top + box_h, left:left + box_w]

    box = tf.cond(tf.reduce_any(fits), first_fitting_box, lambda: image)
    return tf.ensure_shape(clip_pixels(tf.image.resize(box, [size, size], method="bicubic")), [size, size, 3])


def gaussian_weights(height, width, anchors, sigma):
    """(H, W, K) maps exp(-((y/H - a_y)^2 + (x/W - a_x)^2) / sigma), one per anchor."""
    y, x = np.mgrid[:height, :width].astype(np.float32)
    return np.stack([np.exp(-((y / height - ay) ** 2 + (x / width - ax) ** 2) / sigma) for ay, ax in anchors],
                    axis=-1).astype(np.float32)


def deform(image, weights, offsets):
    """Sample `image` at grid + weights @ offsets, bilinearly, coordinates clamped to the border.

    weights: (H, W, K) from gaussian_weights; offsets: (K, 2) as (dy, dx) pixels.
    """
    height, width = weights.shape[:2]
    limit = tf.constant([height - 1, width - 1], tf.float32)
    grid = np.mgrid[:height, :width].transpose(1, 2, 0).astype(np.float32)
    coords = tf.clip_by_value(grid + tf.tensordot(weights, offsets, axes=1), 0.0, limit)
    low = tf.floor(coords)
    frac = coords - low
    low = tf.cast(low, tf.int32)
    high = tf.minimum(low + 1, tf.cast(limit, tf.int32))
    (y0, x0), (y1, x1) = tf.unstack(low, axis=-1), tf.unstack(high, axis=-1)
    fy, fx = frac[..., :1], frac[..., 1:]

    def at(y, x):
        return tf.gather_nd(image, tf.stack([y, x], axis=-1))

    return (at(y0, x0) * (1 - fy) * (1 - fx) + at(y0, x1) * (1 - fy) * fx
            + at(y1, x0) * fy * (1 - fx) + at(y1, x1) * fy * fx)


def gaussian_deform(image, seed, *, anchors, sigma, randrange):
    """tensorpack's GaussianDeform: each anchor pulls its neighbourhood by a random offset in
    [-randrange, randrange]^2, fading with a Gaussian of the distance to the anchor."""
    height, width = image.shape[:2]
    offsets = tf.random.stateless_uniform([len(anchors), 2], seed, -randrange, randrange)
    return deform(image, gaussian_weights(height, width, anchors, sigma), offsets)


# --- photometric ------------------------------------------------------------------------

def random_brightness(image, seed, *, delta):
    """Add one value from [-delta, delta] to every pixel, then clip to 0..255: tensorpack's
    Brightness clips by default, and a uint8 image whatever its clip flag (the ImageNet one)."""
    return clip_pixels(image + tf.random.stateless_uniform([], seed, -delta, delta))


def random_contrast(image, seed, *, lower, upper):
    """Scale each channel's deviation from its own mean by a factor in [lower, upper], then
    clip to 0..255 as tensorpack's Contrast does (the same rule as random_brightness)."""
    mean = tf.reduce_mean(image, axis=[0, 1], keepdims=True)
    return clip_pixels((image - mean) * tf.random.stateless_uniform([], seed, lower, upper) + mean)


def random_saturation(image, seed, *, amount):
    alpha = 1 + tf.random.stateless_uniform([], seed, -amount, amount)
    gray = tf.reduce_sum(image * LUMA, axis=-1, keepdims=True)
    return image * alpha + gray * (1 - alpha)


def pca_lighting(image, seed, *, std, eigval=IMAGENET_EIGVAL, eigvec=IMAGENET_EIGVEC):
    """AlexNet lighting noise, a shift along the colour principal components, at the scale the
    original applied it: eigvec·(N(0, std)·eigval) added to 0..255 pixels, with eigval in
    0..1 units, so hundredths of a grey level (1/255 of AlexNet's). tensorpack truncated the
    sum back to uint8, a shift of 0 or -1 grey level per channel; here the float shift stays
    (docs/original.md §6; docs/differences.md lists the difference)."""
    alpha = tf.random.stateless_normal([3], seed, stddev=std)
    return image + tf.linalg.matvec(eigvec, alpha * eigval)


def clip_pixels(image, seed=None):
    return tf.clip_by_value(image, 0.0, 255.0)


def in_random_order(image, seed, *, ops):
    """Apply every op of `ops` once, in an order drawn per image."""
    *op_seeds, order_seed = tf.unstack(split_seed(seed, num=len(ops) + 1))
    order = tf.random.experimental.stateless_shuffle(tf.range(len(ops)), order_seed)
    for step in range(len(ops)):
        image = tf.switch_case(order[step], [functools.partial(op, image, op_seed)
                                             for op, op_seed in zip(ops, op_seeds)])
    return image


# --- the recipes ------------------------------------------------------------------------

CIFAR_TRAIN = (
    functools.partial(pad_centered, size=40),
    functools.partial(random_crop, size=32),
    random_flip,
)

SVHN_TRAIN = (
    functools.partial(pad_centered, size=40),
    functools.partial(random_brightness, delta=10.0),
    functools.partial(random_contrast, lower=0.8, upper=1.2),
    functools.partial(gaussian_deform, anchors=SVHN_ANCHORS, sigma=0.2, randrange=3.0),
    clip_pixels,  # only float rounding of the bilinear sampling leaves 0..255 (by ~1e-5)
    functools.partial(random_crop, size=32),
)


def imagenet_train(size):
    return (
        functools.partial(random_resized_crop, size=size),
        functools.partial(in_random_order, ops=(
            functools.partial(random_brightness, delta=30.0),
            functools.partial(random_contrast, lower=0.8, upper=1.2),
            functools.partial(random_saturation, amount=0.4),
            functools.partial(pca_lighting, std=0.1),
        )),
        clip_pixels,
        random_flip,
    )


def imagenet_eval(size):
    """Shorter side to 256/224 of the crop size (bilinear), then the central crop."""
    return (
        functools.partial(resize_shorter, size=int(round(size * 256 / 224))),
        functools.partial(center_crop, size=size),
    )
