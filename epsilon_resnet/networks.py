"""Pre-activation ResNets ("Identity Mappings in Deep Residual Networks") for CIFAR/SVHN and ImageNet.

One builder serves the gated ε-ResNet, the plain baselines and the pruned networks that
compression produces: the network is described by a `Structure` (units per stage, and
whether each stage's first, downsampling block is a real block or only its shortcut path)
plus flags for the gate and the side head. Layer names are deterministic
(`res2.9_conv1`, `group2_block9_conv1`), so weights are found and copied by name.
"""
import dataclasses

import keras
import numpy as np
import tensorflow as tf

from epsilon_resnet.gate import StrictIdentity

FAMILIES = ("cifar", "imagenet")
STAGE_WIDTHS = {"cifar": (16, 32, 64), "imagenet": (64, 128, 256, 512)}
# depth -> (bottleneck, blocks per group); ResNet-18/34 use basic blocks.
IMAGENET_DEPTHS = {18: (False, (2, 2, 2, 2)), 34: (False, (3, 4, 6, 3)), 50: (True, (3, 4, 6, 3)),
                   101: (True, (3, 4, 23, 3)), 152: (True, (3, 8, 36, 3))}
BN_MOMENTUM, BN_EPSILON = 0.9, 1e-5  # tensorpack's BatchNorm defaults, which the original trained with.
DATA_FORMATS = ("channels_last", "channels_first")  # NHWC, NCHW


@dataclasses.dataclass(frozen=True)
class Structure:
    """Which residual units each stage has.

    `stage_units[s]` counts the units of stage s: unit 0 is the stage's first block (when
    `first_block_kept[s]`) or, when that block was discarded, only its shortcut path (so a
    pruned network still downsamples exactly as the gated one did); units 1.. are ordinary
    blocks, numbered consecutively.
    """
    family: str
    stage_units: tuple
    first_block_kept: tuple
    bottleneck: bool = False

    def __post_init__(self):
        object.__setattr__(self, "stage_units", tuple(int(u) for u in self.stage_units))
        object.__setattr__(self, "first_block_kept", tuple(bool(k) for k in self.first_block_kept))
        if self.family not in FAMILIES:
            raise ValueError(f"family must be one of {FAMILIES}, got {self.family!r}")
        stages = len(STAGE_WIDTHS[self.family])
        if len(self.stage_units) != stages or len(self.first_block_kept) != stages:
            raise ValueError(f"a {self.family} network has {stages} stages; got stage_units="
                             f"{list(self.stage_units)} and first_block_kept={list(self.first_block_kept)}")
        if min(self.stage_units) < 1:
            raise ValueError(f"every stage has at least its first unit (block or shortcut); "
                             f"got stage_units={list(self.stage_units)}")
        if self.family == "cifar" and self.bottleneck:
            raise ValueError("CIFAR networks use basic blocks; bottleneck=True is for ImageNet depths 50-152")

    @property
    def gated_blocks(self):
        """Number of real residual blocks (each carries a gate in an ε-ResNet)."""
        return sum(self.stage_units) - self.first_block_kept.count(False)

    def block_name(self, stage, unit):
        """User-facing block name: res{stage}.{k} (stages from 1) or group{g}/block{k} (from 0)."""
        return f"res{stage + 1}.{unit}" if self.family == "cifar" else f"group{stage}/block{unit}"

    def block_names(self):
        """Names of the real blocks, in network order."""
        return [self.block_name(s, u) for s, units in enumerate(self.stage_units) for u in range(units)
                if u > 0 or self.first_block_kept[s]]


def cifar_structure(n):
    """The full CIFAR/SVHN ResNet of depth 6n+2."""
    if int(n) < 1:
        raise ValueError(f"n must be >= 1 (depth 6n+2), got {n}")
    return Structure("cifar", (n, n, n), (True, True, True))


def imagenet_structure(depth):
    """The full ImageNet ResNet of the given depth."""
    if depth not in IMAGENET_DEPTHS:
        raise ValueError(f"ImageNet depth must be one of {sorted(IMAGENET_DEPTHS)}, got {depth}")
    bottleneck, groups = IMAGENET_DEPTHS[depth]
    return Structure("imagenet", groups, (True,) * 4, bottleneck)


def side_position(structure):
    """(stage, unit) of the block whose output feeds the side head (SPEC §2).

    CIFAR/SVHN: res2.{n//2}. ImageNet: in group2, after block SIDE_POSITION + 1 with
    SIDE_POSITION = Σdefs//2 − (defs[0]+defs[1]) − 1; the original counted that index over
    the blocks after block0, which is how ResNet-101 taps group2/block9 and ResNet-18 taps
    group2/block0.
    """
    units = structure.stage_units
    if structure.family == "cifar":
        return 1, units[1] // 2
    side_index = sum(units) // 2 - (units[0] + units[1]) - 1
    return 2, side_index + 1


class PixelNormalization(keras.layers.Layer):
    """(image − mean) · scale inside the network, so checkpoints and exports carry the
    dataset's per-pixel mean and the model takes raw 0–255 pixels."""

    def __init__(self, mean_shape, scale_shape, **kwargs):
        super().__init__(**kwargs)
        self.mean_shape, self.scale_shape = tuple(mean_shape), tuple(scale_shape)

    def build(self, input_shape):
        self.mean = self.add_weight(shape=self.mean_shape, initializer="zeros", trainable=False, name="mean")
        self.scale = self.add_weight(shape=self.scale_shape, initializer="ones", trainable=False, name="scale")

    def call(self, images):
        return (tf.cast(images, self.compute_dtype) - tf.cast(self.mean, self.compute_dtype)) * tf.cast(
            self.scale, self.compute_dtype)

    def get_config(self):
        return {**super().get_config(), "mean_shape": self.mean_shape, "scale_shape": self.scale_shape}


class ChannelPad(keras.layers.Layer):
    """Zero-pads channels on both sides: the parameter-free CIFAR downsampling shortcut."""

    def __init__(self, pad, data_format="channels_last", **kwargs):
        super().__init__(**kwargs)
        self.pad, self.data_format = int(pad), data_format

    def call(self, x):
        paddings = [[0, 0]] * 4
        paddings[1 if self.data_format == "channels_first" else 3] = [self.pad, self.pad]
        return tf.pad(x, paddings)

    def get_config(self):
        return {**super().get_config(), "pad": self.pad, "data_format": self.data_format}


def set_normalization(model, mean, scale):
    """Store the input normalisation (a DataSource's pixel_mean and pixel_scale) in the model."""
    layer = model.get_layer("preprocess")
    layer.mean.assign(np.broadcast_to(np.asarray(mean, np.float32), layer.mean.shape))
    layer.scale.assign(np.broadcast_to(np.asarray(scale, np.float32), layer.scale.shape))


def conv(x, filters, kernel, name, data_format, stride=1):
    # He-normal with fan_out, no bias: the original's convolutions.
    return keras.layers.Conv2D(filters, kernel, strides=stride, padding="same", use_bias=False, name=name,
                               data_format=data_format,
                               kernel_initializer=keras.initializers.VarianceScaling(
                                   2.0, "fan_out", "truncated_normal"))(x)


def bn_relu(x, name, data_format):
    x = keras.layers.BatchNormalization(axis=1 if data_format == "channels_first" else -1, momentum=BN_MOMENTUM,
                                        epsilon=BN_EPSILON, name=f"{name}_bn")(x)
    return keras.layers.ReLU(name=f"{name}_relu")(x)


def classifier(x, num_classes, name, prefix, data_format):
    """BN-ReLU → global average pool → dense: the head, and the side head."""
    x = bn_relu(x, prefix, data_format)
    x = keras.layers.GlobalAveragePooling2D(data_format=data_format, name=f"{prefix}_gap")(x)
    return keras.layers.Dense(num_classes, name=name, dtype="float32",
                              kernel_initializer=keras.initializers.VarianceScaling(
                                  2.0, "fan_in", "truncated_normal"))(x)


def first_unit_rules(structure, stage):
    """(stride, pre-activation, shortcut) of a stage's first block (SPEC §3).

    pre-activation: "none" (the stem's BN-ReLU already ran), "bnrelu" (shortcut from the raw
    input) or "both" (ImageNet's both_preact: the shortcut too sees the pre-activated input).
    shortcut: "identity", "pool_pad" (CIFAR) or "conv" (ImageNet convshortcut).
    """
    if stage == 0:
        widens = structure.family == "imagenet" and structure.bottleneck  # 64 -> 256 channels
        return 1, "none", "conv" if widens else "identity"
    if structure.family == "cifar":
        return 2, "bnrelu", "pool_pad"
    return 2, "both", "conv"


def residual_unit(x, structure, stage, unit, epsilon, gated, data_format):
    """One unit: a full pre-activation block, or (a discarded first block) its shortcut alone."""
    width = STAGE_WIDTHS[structure.family][stage]
    out_width = width * 4 if structure.bottleneck else width
    block = structure.block_name(stage, unit)
    prefix = block.replace("/", "_")
    stride, preact, shortcut_kind = first_unit_rules(structure, stage) if unit == 0 else (1, "bnrelu", "identity")
    has_branch = unit > 0 or structure.first_block_kept[stage]

    needs_preact = preact != "none" and (has_branch or preact == "both")
    branch_in = bn_relu(x, f"{prefix}_preact", data_format) if needs_preact else x
    shortcut = branch_in if preact == "both" else x
    if shortcut_kind == "pool_pad":
        shortcut = keras.layers.AveragePooling2D(2, data_format=data_format, name=f"{prefix}_pool")(shortcut)
        shortcut = ChannelPad(out_width // 4, data_format, name=f"{prefix}_pad")(shortcut)
    elif shortcut_kind == "conv":
        shortcut = conv(shortcut, out_width, 1, f"{prefix}_convshortcut", data_format, stride)
    if not has_branch:
        return shortcut

    if structure.bottleneck:  # stride on the 3x3 conv, as fb.resnet.torch and the original did
        h = bn_relu(conv(branch_in, width, 1, f"{prefix}_conv1", data_format), f"{prefix}_conv1", data_format)
        h = bn_relu(conv(h, width, 3, f"{prefix}_conv2", data_format, stride), f"{prefix}_conv2", data_format)
        h = conv(h, out_width, 1, f"{prefix}_conv3", data_format)
    else:
        h = bn_relu(conv(branch_in, width, 3, f"{prefix}_conv1", data_format, stride), f"{prefix}_conv1",
                    data_format)
        h = conv(h, width, 3, f"{prefix}_conv2", data_format)
    if gated:
        h = StrictIdentity(epsilon, block=block, name=f"{prefix}_gate")(h)
    return keras.layers.Add(name=f"{prefix}_add")([shortcut, h])


def build_resnet(structure, num_classes, *, gated=True, side_output=True, epsilon=0.0,
                 image_shape=None, name=None, data_format="channels_last"):
    """Build a pre-activation ResNet; outputs {"logits"} and, with side_output, {"side_logits"}.

    With `gated`, every real block's residual branch goes through a StrictIdentity gate
    sharing one non-trainable ε variable, reachable as `model.epsilon`.
    `data_format="channels_first"` (NCHW, faster on GPUs) still takes NHWC images and
    transposes them after normalisation. The transpose is a layer of its own, so a checkpoint
    restores only into a network of the layout it was trained with.
    """
    if not isinstance(structure, Structure):
        raise TypeError(f"structure must be a Structure, got {type(structure).__name__}")
    if data_format not in DATA_FORMATS:
        raise ValueError(f"data_format must be one of {DATA_FORMATS}, got {data_format!r}")
    if int(num_classes) < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    cifar = structure.family == "cifar"
    image_shape = tuple(image_shape or ((32, 32, 3) if cifar else (224, 224, 3)))
    side_at = side_position(structure) if side_output else None
    if side_at is not None and not (0 <= side_at[1] < structure.stage_units[side_at[0]]):
        raise ValueError(f"side head position {side_at} lies outside stage_units={list(structure.stage_units)}")
    eps_var = keras.Variable(float(epsilon), trainable=False, name="epsilon", dtype="float32") if gated else None

    images = keras.Input(image_shape, name="images")
    x = PixelNormalization(image_shape if cifar else (3,), () if cifar else (3,), name="preprocess")(images)
    if data_format == "channels_first":
        x = keras.layers.Permute((3, 1, 2), name="to_channels_first")(x)
    if cifar:
        x = bn_relu(conv(x, 16, 3, "conv0", data_format), "conv0", data_format)
    else:
        x = bn_relu(conv(x, 64, 7, "conv0", data_format, stride=2), "conv0", data_format)
        x = keras.layers.MaxPooling2D(3, strides=2, padding="same", data_format=data_format, name="pool0")(x)
    outputs = {}
    for stage, units in enumerate(structure.stage_units):
        for unit in range(units):
            x = residual_unit(x, structure, stage, unit, eps_var, gated, data_format)
            if side_at == (stage, unit):
                outputs["side_logits"] = classifier(x, num_classes, "side_linear", "side", data_format)
    outputs = {"logits": classifier(x, num_classes, "linear", "bnlast", data_format), **outputs}
    model = keras.Model(images, outputs, name=name or ("epsilon_resnet" if gated else "resnet"))
    model.epsilon = eps_var
    return model


def kernels(model):
    """Every conv and dense kernel: what the L2 weight decay of SPEC §4 covers."""
    return [layer.kernel for layer in model.layers if isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense))]
