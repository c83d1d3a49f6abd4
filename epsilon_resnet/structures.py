"""What a pre-activation ResNet is made of, without TensorFlow: stages, units, block names,
the ImageNet depth table, data layouts, the kinds of batch norm and gate settings, and the
side head's position (docs/original.md §2-3).

Command lines and configs read these facts before TensorFlow starts; `networks` builds
Keras models from them.
"""
import dataclasses

from epsilon_resnet.errors import ConfigError

FAMILIES = ("cifar", "imagenet")
STAGE_WIDTHS = {"cifar": (16, 32, 64), "imagenet": (64, 128, 256, 512)}
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
GATE_INFERENCE_MODES = ("stored", "per_batch")
# Over which images a training step's gate decides (model.gate_scope): the global batch, all
# replicas together, or each replica's own share, as the original's towers did.
GATE_SCOPES = ("global", "per_replica")
# train.precision: Keras' dtype policies the training runs under.
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")

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

    def has_block(self, stage, unit):
        """Whether unit `unit` of stage `stage` is a real block (not a discarded block's shortcut)."""
        return unit > 0 or self.first_block_kept[stage]

    def block_name(self, stage, unit):
        """User-facing block name: res{stage}.{k} (stages from 1) or group{g}/block{k} (from 0)."""
        return f"res{stage + 1}.{unit}" if self.family == "cifar" else f"group{stage}/block{unit}"

    def units(self):
        """(stage, unit) of every unit, in network order."""
        return [(s, u) for s, count in enumerate(self.stage_units) for u in range(count)]

    def block_names(self):
        """Names of the real blocks, in network order."""
        return [self.block_name(s, u) for s, u in self.units() if self.has_block(s, u)]


def cifar_structure(n):
    """The full CIFAR/SVHN ResNet of depth 6n+2."""
    if int(n) < 1:
        raise ConfigError(f"n must be >= 1 (depth 6n+2), got {n}")
    return Structure("cifar", (n, n, n), (True, True, True))


def imagenet_structure(depth):
    """The full ImageNet ResNet of the given depth."""
    if depth not in IMAGENET_DEPTHS:
        raise ConfigError(f"ImageNet depth must be one of {sorted(IMAGENET_DEPTHS)}, got {depth}")
    bottleneck, groups = IMAGENET_DEPTHS[depth]
    return Structure("imagenet", groups, (True,) * 4, bottleneck)


def structure_for(model_config, family):
    """The full network a ModelConfig describes for a dataset family: n for CIFAR/SVHN, depth for ImageNet."""
    if family == "cifar":
        if model_config.n is None:
            raise ConfigError("model.n is required for a CIFAR/SVHN network (depth 6n+2)")
        return cifar_structure(model_config.n)
    if family == "imagenet":
        if model_config.depth is None:
            raise ConfigError(f"model.depth is required for an ImageNet network ({sorted(IMAGENET_DEPTHS)})")
        return imagenet_structure(model_config.depth)
    raise ConfigError(f"family must be one of {FAMILIES}, got {family!r}")


def side_position(structure):
    """(stage, unit) of the block whose output feeds the side head (docs/original.md §2).

    CIFAR/SVHN: res2.{n//2}. ImageNet: group2/block{P}, P = Σdefs//2 − (defs[0]+defs[1]) − 1,
    the block after which half of the network's blocks have run (block8 of ResNet-101,
    block13 of ResNet-152). The original has no working side head where P < 1; P is then
    clamped to group2/block0: for ResNet-34/50 it is the formula's own block (8 of 16 blocks
    run), for ResNet-18, whose midpoint lies in group1, the closest block of group2 (5 of 8).
    """
    units = structure.stage_units
    if structure.family == "cifar":
        return 1, units[1] // 2
    return 2, max(sum(units) // 2 - (units[0] + units[1]) - 1, 0)


def training_bytes(structure, image_side, batch):
    """A lower bound of the memory (bytes, float32) training the network on batches of `batch`
    images of `image_side` pixels square needs: each kernel three times (weights, gradient,
    momentum) and each convolution's input, which the backward pass keeps for its kernel's
    gradient. Cheap, from the structure alone, so a network far too large is refused before
    it is built."""
    widths = STAGE_WIDTHS[structure.family]
    side = image_side if structure.family == "cifar" else image_side // 4  # ImageNet: after the stride-4 stem
    kernels = activations = 0
    for stage, (width, units) in enumerate(zip(widths, structure.stage_units)):
        area = max(side >> stage, 1) ** 2
        # a block's convolutions: basic 3x3 C→C twice; bottleneck 1x1 4C→C, 3x3 C→C, 1x1 C→4C
        kernels += units * (17 if structure.bottleneck else 18) * width * width
        activations += units * (6 if structure.bottleneck else 2) * width * area
    return 4 * (3 * kernels + batch * activations)
