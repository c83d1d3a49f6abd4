"""Pre-activation ResNets ("Identity Mappings in Deep Residual Networks") for CIFAR/SVHN and
ImageNet (docs/original.md §2-3), built from an `Architecture` (structures.py).

One builder serves the gated ε-ResNet, the plain baselines, the wider CIFAR networks and the
pruned networks that compression produces: the architecture says which blocks there are,
how wide, with which shortcuts, whether they are gated and where the side head is. The
builder records which part of the architecture (stem, unit k of stage s, side head, head)
created each layer (`network_parts`). Layer names are deterministic and follow the blocks
(`res2.9_conv1`, `group2_block9_conv1`), whatever was removed before them, so a compressed
network's layers carry the names of the gated network's layers they come from.
"""
import keras
import numpy as np
import tensorflow as tf

from epsilon_resnet import batch_norm
from epsilon_resnet.errors import ConfigError
from epsilon_resnet.gate import StrictIdentity
from epsilon_resnet.structures import DATA_FORMATS, GATE_EMA_DECAY, Architecture, architecture_for

_PARTS = "_epsilon_resnet_parts"  # model attribute: {part: [names of layers with weights]}, see network_parts


@keras.saving.register_keras_serializable(package="epsilon_resnet")
class PixelNormalization(keras.layers.Layer):
    """(image − mean) · scale inside the network, so checkpoints and exports carry the
    dataset's normalisation and the model takes raw 0–255 pixels."""

    def __init__(self, mean_shape, scale_shape, **kwargs):
        super().__init__(**kwargs)
        self.mean_shape, self.scale_shape = tuple(mean_shape), tuple(scale_shape)

    def build(self, input_shape):
        self.mean = self.add_weight(shape=self.mean_shape, initializer="zeros", trainable=False, name="mean")
        self.scale = self.add_weight(shape=self.scale_shape, initializer="ones", trainable=False, name="scale")

    def call(self, images):
        return (tf.cast(images, self.compute_dtype) - tf.cast(self.mean, self.compute_dtype)) * tf.cast(
            self.scale, self.compute_dtype)

    def store(self, mean, scale):
        """Set the constants (None leaves mean 0 or scale 1); each broadcasts to its weight's shape."""
        for weight, value in ((self.mean, mean), (self.scale, scale)):
            if value is not None:
                value = np.asarray(value, np.float32)
                try:
                    weight.assign(np.broadcast_to(value, weight.shape))
                except ValueError:
                    raise ValueError(f"pixel {weight.name} of shape {value.shape} does not broadcast to the "
                                     f"network's {tuple(weight.shape)}") from None

    def get_config(self):
        return {**super().get_config(), "mean_shape": self.mean_shape, "scale_shape": self.scale_shape}


@keras.saving.register_keras_serializable(package="epsilon_resnet")
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


class _Builder:
    """Creates the layers of one network and records, in build order, the part of the
    architecture each belongs to ("stem", "head", "side" or (stage, block))."""

    def __init__(self, architecture, data_format, gate, batch_norm_kind):
        self.architecture, self.data_format, self.gate = architecture, data_format, gate  # gate: kwargs or None
        self.batch_norm_kind = batch_norm_kind
        self.part, self.parts = "stem", {}

    def apply(self, layer, x):
        self.parts.setdefault(self.part, []).append(layer)
        return layer(x)

    def conv(self, x, filters, kernel, name, stride=1):
        # He-normal with fan_out, no bias: the original's convolutions.
        return self.apply(keras.layers.Conv2D(
            filters, kernel, strides=stride, padding="same", use_bias=False, name=name, data_format=self.data_format,
            kernel_initializer=keras.initializers.VarianceScaling(2.0, "fan_out", "truncated_normal")), x)

    def bn_relu(self, x, name):
        axis = 1 if self.data_format == "channels_first" else -1
        x = self.apply(batch_norm.layer(self.batch_norm_kind, axis, f"{name}_bn"), x)
        return self.apply(keras.layers.ReLU(name=f"{name}_relu"), x)

    def classifier(self, x, num_classes, name, prefix):
        """BN-ReLU → global average pool → dense: the head, and the side head."""
        x = self.bn_relu(x, prefix)
        x = self.apply(keras.layers.GlobalAveragePooling2D(data_format=self.data_format, name=f"{prefix}_gap"), x)
        return self.apply(keras.layers.Dense(num_classes, name=name, dtype="float32",
                                             kernel_initializer=keras.initializers.VarianceScaling(
                                                 2.0, "fan_in", "truncated_normal")), x)

    def stem(self, images, pixel_mean, pixel_scale):
        stem = self.architecture.stem
        image_shape = tuple(images.shape[1:])
        shapes = (image_shape, ()) if stem.normalization == "per_pixel" else ((image_shape[-1],),) * 2
        normalization = PixelNormalization(*shapes, name="preprocess")
        x = self.apply(normalization, images)
        normalization.store(pixel_mean, pixel_scale)
        if self.data_format == "channels_first":
            x = self.apply(keras.layers.Permute((3, 1, 2), name="to_channels_first"), x)
        x = self.bn_relu(self.conv(x, stem.width, stem.kernel, "conv0", stride=stem.stride), "conv0")
        if not stem.max_pool:
            return x
        return self.apply(keras.layers.MaxPooling2D(3, strides=2, padding="same", data_format=self.data_format,
                                                    name="pool0"), x)

    def shortcut(self, x, kind, out_width, stride, prefix):
        if kind == "pool_pad":
            if stride > 1:
                x = self.apply(keras.layers.AveragePooling2D(stride, data_format=self.data_format,
                                                             name=f"{prefix}_pool"), x)
            in_width = x.shape[1 if self.data_format == "channels_first" else -1]
            return self.apply(ChannelPad((out_width - in_width) // 2, self.data_format, name=f"{prefix}_pad"), x)
        if kind == "conv":
            return self.conv(x, out_width, 1, f"{prefix}_convshortcut", stride)
        return x

    def branch(self, x, width, out_width, stride, prefix):
        """The residual branch F: two 3×3 convs, or 1×1-3×3-1×1 with the stride on the 3×3
        (as fb.resnet.torch and the original did)."""
        if self.architecture.bottleneck:
            h = self.bn_relu(self.conv(x, width, 1, f"{prefix}_conv1"), f"{prefix}_conv1")
            h = self.bn_relu(self.conv(h, width, 3, f"{prefix}_conv2", stride), f"{prefix}_conv2")
            return self.conv(h, out_width, 1, f"{prefix}_conv3")
        h = self.bn_relu(self.conv(x, width, 3, f"{prefix}_conv1", stride), f"{prefix}_conv1")
        return self.conv(h, width, 3, f"{prefix}_conv2")

    def unit(self, x, stage, block):
        """One unit: a full pre-activation block, or (a removed first block) its shortcut alone."""
        architecture = self.architecture
        self.part = (stage, block)
        self.parts[self.part] = []  # listed even when it creates no layer (an identity shortcut)
        width, out_width = architecture.stage_widths[stage], architecture.out_width(stage)
        name, has_branch = architecture.block_name(stage, block), architecture.has_block(stage, block)
        prefix = name.replace("/", "_")
        stride, preact, kind = architecture.first_unit(stage) if block == 0 else (1, "bnrelu", "identity")
        needs_preact = preact != "none" and (has_branch or preact == "both")
        branch_in = self.bn_relu(x, f"{prefix}_preact") if needs_preact else x
        shortcut = self.shortcut(branch_in if preact == "both" else x, kind, out_width, stride, prefix)
        if not has_branch:
            return shortcut
        residual = self.branch(branch_in, width, out_width, stride, prefix)
        if self.gate is None:
            return self.apply(keras.layers.Add(name=f"{prefix}_add"), [shortcut, residual])
        return self.apply(StrictIdentity(block=name, name=f"{prefix}_gate", **self.gate), [shortcut, residual])

    def part_names(self):
        return {part: [layer.name for layer in layers if layer.weights] for part, layers in self.parts.items()}


def build_resnet(architecture, num_classes, *, epsilon=0.0, ema_decay=GATE_EMA_DECAY, gate_inference="stored",
                 gate_scope="global", skip_closed_backward=True, pixel_mean=None, pixel_scale=None, name=None,
                 data_format="channels_last", batch_norm_kind="fused"):
    """Build the pre-activation ResNet an Architecture describes, for images of its
    image_shape; outputs {"logits"} and, with a side head, {"side_logits"}.

    In a gated architecture every block ends in a StrictIdentity gate (threshold `epsilon`,
    monitoring decay `ema_decay`, inference mode `gate_inference`, see structures.GATE_INFERENCE_MODES,
    and the training-step settings `gate_scope` and `skip_closed_backward`, see
    gate.StrictIdentity) that adds the gated branch to the shortcut; read and set ε
    with `gate.epsilon_of` / `gate.set_epsilon`. `pixel_mean` and `pixel_scale` (a data
    source's, broadcast to the stem's per-pixel or per-channel constants; None: 0 and 1)
    normalise the raw 0–255 input inside the model.
    `data_format="channels_first"` (NCHW, faster on GPUs) still takes NHWC images and
    transposes them after normalisation. The transpose is a layer of its own, so a checkpoint
    restores only into a network of the layout it was trained with. `batch_norm_kind` (one
    of BATCH_NORMS) picks TensorFlow's fused kernel or Keras' own layer; both hold the same
    weights, so either restores the other's checkpoints.
    """
    if not isinstance(architecture, Architecture):
        raise TypeError(f"architecture must be an Architecture, got {type(architecture).__name__}")
    if data_format not in DATA_FORMATS:
        raise ConfigError(f"data_format must be one of {DATA_FORMATS}, got {data_format!r}")
    if int(num_classes) < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")

    gate = (dict(epsilon=epsilon, ema_decay=ema_decay, inference=gate_inference, scope=gate_scope,
                 skip_closed_backward=skip_closed_backward) if architecture.gated else None)
    builder = _Builder(architecture, data_format, gate, batch_norm_kind)
    images = keras.Input(architecture.image_shape, name="images")
    x = builder.stem(images, pixel_mean, pixel_scale)
    outputs = {}
    for stage, block in architecture.units():
        x = builder.unit(x, stage, block)
        if architecture.side_head == (stage, block):
            builder.part = "side"
            outputs["side_logits"] = builder.classifier(x, num_classes, "side_linear", "side")
    builder.part = "head"
    outputs = {"logits": builder.classifier(x, num_classes, "linear", "bnlast"), **outputs}
    model = keras.Model(images, outputs, name=name or ("epsilon_resnet" if architecture.gated else "resnet"))
    setattr(model, _PARTS, builder.part_names())
    return model


def build_from_config(model_config, source, skip_closed_backward=True):
    """The network a ModelConfig describes for a DataSource (its family's preset, classes, image
    shape and normalisation), with the gates' initial ε, monitoring decay, inference mode and
    scope from the config; `skip_closed_backward` is train.skip_closed_backward."""
    return build_resnet(architecture_for(model_config, source.family, source.image_shape), source.num_classes,
                        epsilon=model_config.epsilon, ema_decay=model_config.gate_ema_decay,
                        gate_inference=model_config.gate_inference, gate_scope=model_config.gate_scope,
                        skip_closed_backward=skip_closed_backward,
                        pixel_mean=source.pixel_mean, pixel_scale=source.pixel_scale,
                        data_format=model_config.data_format, batch_norm_kind=model_config.batch_norm)


def network_parts(model):
    """{part: [layers with weights, in build order]} for a model built by `build_resnet`.

    part is "stem" (normalisation, conv0), "head", "side" or (stage, block) for each unit of
    the architecture. Two networks whose architectures have the same kind of unit (s, k) and
    (s, k') have lists of the same layer types and weight shapes. A gated unit's list ends
    with its StrictIdentity gate, which a plain network lacks. A unit is listed shortcut
    first, so a removed first block's shortcut unit (none on CIFAR; pre-activation and
    convshortcut on ImageNet) lists a prefix of the full block's layers.
    """
    names = getattr(model, _PARTS, None)
    if names is None:
        raise ValueError(f"{model.name} was not built by build_resnet in this process (a model loaded from a "
                         f"file carries no part map): build it with build_resnet and load its weights")
    return {part: [model.get_layer(name) for name in layers] for part, layers in names.items()}


def kernels(model):
    """Every conv and dense kernel: what the L2 weight decay of docs/original.md §4 covers."""
    return [layer.kernel for layer in model.layers if isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense))]
