"""What a pre-activation ResNet is made of, without TensorFlow: its `Architecture` (stem,
stages, blocks, shortcuts, gates, side head), the presets of the original's two families,
data layouts, the kinds of batch norm and the gate settings (docs/original.md §2-3).

Command lines, configs and the compressed .cfg read these facts before TensorFlow starts;
`networks` builds Keras models from an Architecture.
"""
import dataclasses

from epsilon_resnet.errors import ConfigError

FAMILIES = ("cifar", "imagenet")  # the dataset families (data.family_of), each with its preset below
# depth -> (bottleneck, blocks per group); ResNet-18/34 use basic blocks.
IMAGENET_DEPTHS = {18: (False, (2, 2, 2, 2)), 34: (False, (3, 4, 6, 3)), 50: (True, (3, 4, 6, 3)),
                   101: (True, (3, 4, 23, 3)), 152: (True, (3, 8, 36, 3))}
DATA_FORMATS = ("channels_last", "channels_first")  # NHWC, NCHW
BATCH_NORMS = ("fused", "keras")  # TensorFlow's fused kernel (batch_norm.py), or Keras' own layer
# The strict-identity gate's settings (gate.StrictIdentity): tensorpack's moving-summary decay,
# which its averages warm up to (docs/original.md §1), and how it decides at inference
# (model.gate_inference): from what training stored in it (the default), or per evaluated
# batch as the original's did.
GATE_EMA_DECAY = 0.95
EPSILONS = ">= 0"  # the thresholds ε a gate takes (model.epsilon and its schedule)
GATE_INFERENCE_MODES = ("stored", "per_batch")
# The statistics each gate averages (its weights besides ε), under the original's summary
# names: 1 − gate, max |F| and mean |F|. The metrics of a run carry them per block.
GATE_METRICS = ("is_discarded", "response_abs_max", "response_mean_max")
IS_DISCARDED = GATE_METRICS[0]
# Over which images a training step's gate decides (model.gate_scope): the global batch, all
# replicas together, or each replica's own share, as the original's towers did.
GATE_SCOPES = ("global", "per_replica")
# train.precision: Keras' dtype policies the training runs under.
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")

NORMALIZATIONS = ("per_pixel", "per_channel")  # CIFAR/SVHN: a mean image and one scale; ImageNet: per channel
# How a stage's first block reaches its new width and size: "pool_pad" (CIFAR: 2×2 average pool and
# zero-padded channels, from the raw input) or "conv" (ImageNet: a 1×1 convolution of the
# pre-activated input, tensorpack's both_preact).
SHORTCUTS = ("pool_pad", "conv")
NAMINGS = ("res", "group")  # blocks named res{stage+1}.{k} (the CIFAR/SVHN scripts) or group{stage}/block{k}
BOTTLENECK_EXPANSION = 4    # a bottleneck block outputs 4× its stage width


def _whole(name, value):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a whole number >= 1, got {value!r}")
    return value


def _whole_numbers(name, values):
    if not isinstance(values, (list, tuple)) or not values:
        raise ValueError(f"{name} must be a non-empty list of whole numbers >= 1, got {values!r}")
    return tuple(_whole(f"{name}[{i}]", v) for i, v in enumerate(values))


@dataclasses.dataclass(frozen=True)
class Stem:
    """The layers before the first stage: the input's normalisation, a `kernel`×`kernel`
    convolution of `width` channels at `stride`, its BN-ReLU and, with `max_pool`, a 3×3
    max pool of stride 2."""
    width: int
    kernel: int
    stride: int = 1
    max_pool: bool = False
    normalization: str = "per_pixel"  # NORMALIZATIONS

    def __post_init__(self):
        for name in ("width", "kernel", "stride"):
            _whole(f"stem.{name}", getattr(self, name))
        if not isinstance(self.max_pool, bool):
            raise ValueError(f"stem.max_pool must be true or false, got {self.max_pool!r}")
        if self.normalization not in NORMALIZATIONS:
            raise ValueError(f"stem.normalization must be one of {NORMALIZATIONS}, got {self.normalization!r}")


@dataclasses.dataclass(frozen=True)
class Architecture:
    """A pre-activation ResNet, as data: what `networks.build_resnet` builds, the compressed
    .cfg records and the counts read.

    Stage s has `stage_units[s]` blocks k = 0, 1, ... of branch width `stage_widths[s]`
    (a bottleneck block outputs BOTTLENECK_EXPANSION times it); each stage's block 0 reaches
    the stage's width (and, after the first stage, halves the image) by the `shortcut` rule,
    an identity where nothing changes. `gated`: every
    block ends in a strict-identity gate. `side_head`: the (stage, block) whose output feeds
    the side head, or None. `removed_blocks`: blocks compression took out (by name); a removed
    block 0 leaves its shortcut path, so the network still downsamples as the gated one did.
    Blocks keep their names, and so their layers' names, whatever was removed before them.
    """
    stem: Stem
    stage_widths: tuple
    stage_units: tuple
    bottleneck: bool = False
    shortcut: str = "pool_pad"      # SHORTCUTS
    gated: bool = True
    side_head: tuple = None
    removed_blocks: tuple = ()
    naming: str = "res"             # NAMINGS
    image_shape: tuple = (32, 32, 3)

    def __post_init__(self):
        if not isinstance(self.stem, Stem):
            raise ValueError(f"stem must be a Stem, got {self.stem!r}")
        for name in ("stage_widths", "stage_units", "image_shape"):
            self._set(name, _whole_numbers(name, getattr(self, name)))
        if len(self.stage_widths) != len(self.stage_units):
            raise ValueError(f"stage_widths {list(self.stage_widths)} and stage_units {list(self.stage_units)} "
                             f"must name the same number of stages")
        if len(self.image_shape) != 3:
            raise ValueError(f"image_shape must be [height, width, channels], got {list(self.image_shape)}")
        for name in ("bottleneck", "gated"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if self.shortcut not in SHORTCUTS:
            raise ValueError(f"shortcut must be one of {SHORTCUTS}, got {self.shortcut!r}")
        if self.naming not in NAMINGS:
            raise ValueError(f"naming must be one of {NAMINGS}, got {self.naming!r}")
        if self.shortcut == "pool_pad":
            widths = [self.stem.width] + [self.out_width(s) for s in range(len(self.stage_widths))]
            if any(b < a or (b - a) % 2 for a, b in zip(widths, widths[1:])):
                raise ValueError(f"the pool_pad shortcut pads channels evenly on both sides: each stage must keep "
                                 f"or widen its input by an even number of channels, got {widths}")
        names = self.all_block_names()
        removed = set(self.removed_blocks or ())
        if removed - set(names):
            raise ValueError(f"removed_blocks {sorted(removed - set(names))} are not blocks of this network "
                             f"(its blocks are {names})")
        self._set("removed_blocks", tuple(name for name in names if name in removed))
        if self.side_head is not None:
            side = tuple(self.side_head)
            if side not in self.units():
                raise ValueError(f"side_head {self.side_head!r} is not the [stage, block] of a unit of this network "
                                 f"(stage_units {list(self.stage_units)}, removed_blocks {list(self.removed_blocks)})")
            self._set("side_head", side)

    def _set(self, name, value):  # the dataclass is frozen: __post_init__ normalises through this
        object.__setattr__(self, name, value)

    def out_width(self, stage):
        """The channels a stage outputs."""
        return self.stage_widths[stage] * (BOTTLENECK_EXPANSION if self.bottleneck else 1)

    def first_unit(self, stage):
        """(stride, pre-activation, shortcut) of a stage's first unit (docs/original.md §3).

        pre-activation: "none" (the stem's BN-ReLU already ran), "bnrelu" (the shortcut takes the
        raw input) or "both" (the shortcut too takes the pre-activated input). shortcut:
        "identity", "pool_pad" (average pool when the stride is 2, zero-padded channels) or "conv".
        """
        stride = 1 if stage == 0 else 2
        in_width = self.stem.width if stage == 0 else self.out_width(stage - 1)
        shortcut = "identity" if stride == 1 and in_width == self.out_width(stage) else self.shortcut
        if stage == 0:
            return stride, "none", shortcut
        return stride, "bnrelu" if self.shortcut == "pool_pad" else "both", shortcut

    def block_name(self, stage, block):
        """User-facing block name: res{stage}.{k} (stages from 1) or group{g}/block{k} (from 0)."""
        return f"res{stage + 1}.{block}" if self.naming == "res" else f"group{stage}/block{block}"

    def all_block_names(self):
        """Names of the blocks as designed, removed or not, in network order."""
        return [self.block_name(s, k) for s, count in enumerate(self.stage_units) for k in range(count)]

    def has_block(self, stage, block):
        """Whether block `block` of stage `stage` is there (not removed)."""
        return self.block_name(stage, block) not in self.removed_blocks

    def units(self):
        """(stage, block) of every unit, in network order: each stage's block 0 (a block, or its
        shortcut path alone when removed), then its remaining blocks."""
        return [(s, k) for s, count in enumerate(self.stage_units) for k in range(count)
                if k == 0 or self.has_block(s, k)]

    def units_per_stage(self):
        """How many units each stage has (its block 0 or that block's shortcut path, and its other blocks)."""
        return [sum(stage == s for stage, _ in self.units()) for s in range(len(self.stage_units))]

    def block_names(self):
        """Names of the blocks there, in network order."""
        return [self.block_name(s, k) for s, k in self.units() if self.has_block(s, k)]

    @property
    def gated_blocks(self):
        """Number of blocks there (each carries a gate in an ε-ResNet)."""
        return len(self.block_names())

    def compressed(self, discarded):
        """The plain network without the blocks named in `discarded` and without the side head:
        what compression builds."""
        unknown = sorted(set(discarded) - set(self.block_names()))
        if unknown:
            raise ValueError(f"cannot discard {unknown}: the network's blocks are {self.block_names()}")
        return dataclasses.replace(self, gated=False, side_head=None,
                                   removed_blocks=tuple(self.removed_blocks) + tuple(discarded))

    def to_config(self):
        """Plain lists and dicts (YAML, JSON); `from_config` reads them back."""
        raw = dataclasses.asdict(self)
        return {key: list(value) if isinstance(value, tuple) else value for key, value in raw.items()}

    @classmethod
    def from_config(cls, raw):
        """The Architecture of `to_config`'s mapping; ValueError names an unknown, missing or bad key."""
        if not isinstance(raw, dict) or not isinstance(raw.get("stem"), dict):
            raise ValueError(f"an architecture is a mapping with a stem mapping, got {raw!r}")
        for kind, values in ((cls, raw), (Stem, raw["stem"])):
            fields = {f.name for f in dataclasses.fields(kind)}
            required = {f.name for f in dataclasses.fields(kind) if f.default is dataclasses.MISSING}
            if set(values) - fields or required - set(values):
                raise ValueError(f"{'architecture' if kind is cls else 'stem'} keys: unknown "
                                 f"{sorted(set(values) - fields)}, missing {sorted(required - set(values))}")
        return cls(**{**raw, "stem": Stem(**raw["stem"]), "removed_blocks": tuple(raw.get("removed_blocks") or ())})


# ---- the presets: the original's two families ----------------------------------------------------
CIFAR_STEM = Stem(16, 3)
CIFAR_WIDTHS = (16, 32, 64)
IMAGENET_STEM = Stem(64, 7, stride=2, max_pool=True, normalization="per_channel")
IMAGENET_WIDTHS = (64, 128, 256, 512)


def cifar_resnet(n, width=1, *, gated=True, side_output=True, image_shape=(32, 32, 3)):
    """The CIFAR/SVHN ResNet of depth 6n+2: stages of n basic blocks of widths 16, 32, 64,
    parameter-free shortcuts, the side head after res2.{n//2} (docs/original.md §2-3).

    `width` k multiplies the stage widths, the stem keeping its 16 channels: the shape of
    WRN-(6n+4)-k ("Wide Residual Networks", whose depth also counts 1×1 shortcut convolutions)
    without dropout, with this network's parameter-free shortcuts; n = 2, k = 4 is WRN-16-4's.
    """
    for name, value, meaning in (("n", n, " (depth 6n+2)"), ("width", width, " (stage widths 16k, 32k, 64k)")):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{name} must be >= 1{meaning}, got {value!r}")
    return Architecture(CIFAR_STEM, tuple(width * w for w in CIFAR_WIDTHS), (n,) * 3, shortcut="pool_pad",
                        gated=gated, side_head=(1, n // 2) if side_output else None, naming="res",
                        image_shape=image_shape)


def imagenet_resnet(depth, *, gated=True, side_output=True, image_shape=(224, 224, 3)):
    """The ImageNet ResNet of the given depth, its side head after group2/block{P}.

    P = Σdefs//2 − (defs[0]+defs[1]) − 1, the block after which half of the network's blocks
    have run (block8 of ResNet-101, block13 of ResNet-152; docs/original.md §2). The original
    has no working side head where P < 1; P is then clamped to group2/block0: for ResNet-34/50
    it is the formula's own block (8 of 16 blocks run), for ResNet-18, whose midpoint lies in
    group1, the closest block of group2 (5 of 8).
    """
    if depth not in IMAGENET_DEPTHS:
        raise ConfigError(f"ImageNet depth must be one of {sorted(IMAGENET_DEPTHS)}, got {depth}")
    bottleneck, units = IMAGENET_DEPTHS[depth]
    side = (2, max(sum(units) // 2 - (units[0] + units[1]) - 1, 0))
    return Architecture(IMAGENET_STEM, IMAGENET_WIDTHS, units, bottleneck, "conv", gated,
                        side if side_output else None, naming="group", image_shape=image_shape)


def architecture_for(model_config, family, image_shape=None):
    """The full network a ModelConfig describes for a dataset family ("cifar": model.n and
    model.width, "imagenet": model.depth), for images of `image_shape` (None: the family's usual size)."""
    shape = {} if image_shape is None else {"image_shape": tuple(image_shape)}
    common = dict(gated=model_config.gated, side_output=model_config.side_output, **shape)
    if family == "cifar":
        if model_config.n is None:
            raise ConfigError("model.n is required for a CIFAR/SVHN network (depth 6n+2)")
        return cifar_resnet(model_config.n, model_config.width, **common)
    if family == "imagenet":
        if model_config.depth is None:
            raise ConfigError(f"model.depth is required for an ImageNet network ({sorted(IMAGENET_DEPTHS)})")
        if model_config.width != 1:
            raise ConfigError(f"model.width widens the CIFAR/SVHN networks; an ImageNet network has width 1, "
                              f"got {model_config.width!r}")
        return imagenet_resnet(model_config.depth, **common)
    raise ConfigError(f"family must be one of {FAMILIES}, got {family!r}")

def training_bytes(architecture, image_side, batch):
    """A lower bound of the memory (bytes, float32) training the network on batches of `batch`
    images of `image_side` pixels square needs: each kernel three times (weights, gradient,
    momentum) and each convolution's input, which the backward pass keeps for its kernel's
    gradient. Cheap, from the architecture alone, so a network far too large is refused before
    it is built."""
    stem = architecture.stem
    side = image_side // (stem.stride * (2 if stem.max_pool else 1))  # the first stage's image side
    kernels = activations = 0
    for stage, (width, units) in enumerate(zip(architecture.stage_widths, architecture.stage_units)):
        area = max(side >> stage, 1) ** 2
        # a block's convolutions: basic 3x3 C→C twice; bottleneck 1x1 4C→C, 3x3 C→C, 1x1 C→4C
        kernels += units * (17 if architecture.bottleneck else 18) * width * width
        activations += units * (6 if architecture.bottleneck else 2) * width * area
    return 4 * (3 * kernels + batch * activations)
