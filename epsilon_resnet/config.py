"""Experiment configuration: YAML files in configs/ → typed dataclasses, validated up front.

Every number of docs/original.md §4–6 lives here, so a run folder's config.yaml says
exactly what ran.
"""
import dataclasses
import math
import os
import typing

import yaml

from epsilon_resnet import data
from epsilon_resnet.errors import ConfigError, DataError, FileError
from epsilon_resnet.structures import BATCH_NORMS, DATA_FORMATS, GATE_EMA_DECAY, GATE_INFERENCE_MODES, architecture_for


@dataclasses.dataclass
class DataConfig:
    name: str = "cifar10"            # one of data.DATASETS: cifar10 | cifar100 | svhn | imagenet | fake-imagenet
    dir: typing.Optional[str] = None  # folder holding the dataset files (no download, ever)
    options: dict = dataclasses.field(default_factory=dict)  # passed to data.get_source (e.g. use_extra)


@dataclasses.dataclass
class ModelConfig:
    n: typing.Optional[int] = 18         # CIFAR/SVHN: depth 6n+2
    depth: typing.Optional[int] = None   # ImageNet: 18, 34, 50, 101 or 152
    width: int = 1                       # CIFAR/SVHN: stage widths 16k, 32k, 64k (n 2, width 4: WRN-16-4's shape)
    epsilon: float = 2.5
    # [[epoch, ε], ...]: ε from the epoch after that one on (tensorpack's timing); empty keeps `epsilon`,
    # and so does a point whose ε is null (the original's later schedule: [[0, 0.0], [150, null]]).
    epsilon_schedule: list = dataclasses.field(default_factory=list)
    gated: bool = True                   # False: the standard pre-activation ResNet baseline
    side_output: bool = True
    side_loss_weight: float = 0.1
    gate_ema_decay: float = GATE_EMA_DECAY
    gate_inference: str = "stored"       # the gates at inference: stored (from training) or per_batch (the original)
    data_format: str = "channels_last"   # or channels_first (NCHW): faster on GPUs; CPUs need NHWC
    batch_norm: str = "fused"            # TensorFlow's fused kernel, as tensorpack's; or keras (Keras' own layer)


@dataclasses.dataclass
class TrainConfig:
    batch_size: int = 128                # images per step: per replica, or global (batch_per_replica: false)
    batch_per_replica: bool = True       # CIFAR/SVHN: each GPU its own batch; ImageNet: one batch split
    eval_batch_size: typing.Optional[int] = 128  # null: the per-replica training batch (ImageNet: 256 // GPUs)
    eval_batches: typing.Optional[int] = None  # validate on the first K batches only (quick runs); None: all
    max_epoch: int = 1000
    steps_per_epoch: typing.Optional[int] = None  # None: training images // batch_size (whatever the GPUs)
    momentum: float = 0.9
    nesterov: bool = False
    # L2 coefficient on Σ ½‖W‖² over conv and dense kernels: wd · rate^⌊step / steps⌋.
    weight_decay: float = 0.0002
    weight_decay_rate: float = 0.2
    weight_decay_steps: int = 480000
    # Learning rate: (epoch, lr) points, each in force from the epoch after it (a point at 0: from
    # the start); lr_restart_schedule None = standard schedule.
    lr_schedule: list = dataclasses.field(
        default_factory=lambda: [[0, 0.1], [82, 0.01], [123, 0.001], [300, 0.0002]])
    lr_restart_schedule: typing.Optional[list] = dataclasses.field(
        default_factory=lambda: [[0, 0.1], [41, 0.01], [61, 0.001], [150, 0.0002]])
    lr_restart_threshold: float = 1.0
    lr_restart_last_k: int = 1
    keep_checkpoints: int = 10           # the last K checkpoints stay in the run folder
    keep_checkpoint_every_minutes: float = 30.0  # ... and one from every such interval, for good
    # Global steps (epoch ends) whose checkpoints are kept for good, in <run folder>/kept/.
    keep_checkpoint_steps: list = dataclasses.field(default_factory=list)
    seed: typing.Optional[int] = None
    deterministic: bool = False          # tf.config.experimental.enable_op_determinism(); needs a seed
    mixed_precision: bool = False
    jit_compile: bool = False
    skip_closed_backward: bool = True    # no backward pass through the branch of a closed block
    log_every: int = 1                   # steps between progress-bar updates


@dataclasses.dataclass
class Config:
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)

    def to_dict(self):
        return dataclasses.asdict(self)


CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")


def _check_type(where, value, annotation):
    """Raise ConfigError unless value fits a field annotation (ints are accepted as floats)."""
    if value is None:
        if typing.get_origin(annotation) is typing.Union and type(None) in typing.get_args(annotation):
            return
        raise ConfigError(f"{where} must not be null")
    if typing.get_origin(annotation) is typing.Union:
        annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
    expected = {float: (int, float), int: (int,), bool: (bool,), str: (str,), list: (list,), dict: (dict,)}
    expected = expected.get(typing.get_origin(annotation) or annotation, (object,))
    if not isinstance(value, expected) or (isinstance(value, bool) and bool not in expected):
        raise ConfigError(f"{where} must be {' or '.join(t.__name__ for t in expected)}, "
                          f"got {value!r} ({type(value).__name__})")


def build(cls, raw, source, section=None):
    """An instance of the dataclass `cls` from a mapping, naming any unknown, missing or mistyped
    key; a field whose type is a dataclass is built from its own mapping (a section). The
    machinery of every YAML schema of the project: configs, and the reproduction's protocol."""
    hints = typing.get_type_hints(cls)
    where = f" in section '{section}'" if section else ""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: section '{section}' must be a mapping, got {raw!r}" if section else
                          f"{source}: expected a mapping with keys {sorted(hints)}, got {type(raw).__name__}")
    unknown = sorted(set(raw) - set(hints))
    if unknown:
        raise ConfigError(f"{source}: unknown key(s) {unknown}{where}; expected some of {sorted(hints)}")
    required = {f.name for f in dataclasses.fields(cls)
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
    missing = sorted(required - set(raw))
    if missing:
        raise ConfigError(f"{source}: missing key(s) {missing}{where}")
    values = {}
    for key, value in raw.items():
        dotted = f"{section}.{key}" if section else key
        if dataclasses.is_dataclass(hints[key]):
            values[key] = build(hints[key], {} if value is None else value, source, dotted)
        else:
            _check_type(f"{source}: {dotted}", value, hints[key])
            values[key] = value
    return cls(**values)


def from_dict(raw, source="config"):
    """Build a Config from nested dicts, naming any unknown key or mistyped value."""
    config = build(Config, raw, source)
    validate(config, source)
    return config


def _check_points(where, points, null_value=None):
    """null_value: what a null value stands for, if a null value is allowed (named in the error)."""
    def is_number(x):
        return isinstance(x, (int, float)) and not isinstance(x, bool)

    def is_point(p):
        return (isinstance(p, (list, tuple)) and len(p) == 2 and is_number(p[0])
                and (is_number(p[1]) or (null_value is not None and p[1] is None)))

    if not points or not all(map(is_point, points)):
        values = "numbers" if null_value is None else f"numbers (or a null value: {null_value})"
        raise ConfigError(f"{where} must be a non-empty list of [epoch, value] pairs of {values}, got {points!r} "
                          f"(YAML reads 1e-3 and 1.0e30 as strings: write 0.001, 1.0e-3 or 1.0e+30)")
    epochs = [p[0] for p in points]
    if epochs != sorted(epochs) or len(set(epochs)) != len(epochs):
        raise ConfigError(f"{where} epochs must increase strictly, got {epochs}")


def validate(config, source="config"):
    """Cross-field checks that the type checks cannot express."""
    try:
        family = data.family_of(config.data.name)
    except DataError as err:
        raise ConfigError(f"{source}: data.name: {err}") from None
    try:  # the network's shape (n or depth), checked by the preset that makes its architecture
        architecture_for(config.model, family)
    except ConfigError as err:
        raise ConfigError(f"{source}: {err} ({config.data.name})") from None
    if config.train.batch_size < 1 or config.train.max_epoch < 1:
        raise ConfigError(f"{source}: train.batch_size and train.max_epoch must be >= 1")
    if config.train.eval_batch_size is not None and config.train.eval_batch_size < 1:
        raise ConfigError(f"{source}: train.eval_batch_size must be >= 1 (or null for the per-replica training "
                          f"batch), got {config.train.eval_batch_size}")
    if config.train.eval_batches is not None and config.train.eval_batches < 1:
        raise ConfigError(f"{source}: train.eval_batches must be >= 1 (or null for the whole validation set), "
                          f"got {config.train.eval_batches}")
    if config.train.keep_checkpoint_every_minutes <= 0:
        raise ConfigError(f"{source}: train.keep_checkpoint_every_minutes must be > 0, "
                          f"got {config.train.keep_checkpoint_every_minutes}")
    if config.train.keep_checkpoints < 1:
        raise ConfigError(f"{source}: train.keep_checkpoints must be >= 1 (the last K checkpoints are kept), "
                          f"got {config.train.keep_checkpoints}")
    steps = config.train.keep_checkpoint_steps
    if any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in steps):
        raise ConfigError(f"{source}: train.keep_checkpoint_steps must be a list of global steps >= 1, got {steps!r}")
    if config.train.deterministic and config.train.seed is None:
        raise ConfigError(f"{source}: train.deterministic needs train.seed: without a seed no two runs are alike")
    _check_points(f"{source}: train.lr_schedule", config.train.lr_schedule)
    if config.train.lr_restart_schedule is not None:
        _check_points(f"{source}: train.lr_restart_schedule", config.train.lr_restart_schedule)
    if config.model.epsilon_schedule:
        _check_points(f"{source}: model.epsilon_schedule", config.model.epsilon_schedule,
                      null_value="model.epsilon, i.e. -e")
    epsilons = [config.model.epsilon] + [eps for _, eps in config.model.epsilon_schedule if eps is not None]
    if not all(math.isfinite(eps) and eps >= 0 for eps in epsilons):
        raise ConfigError(f"{source}: ε must be a finite number >= 0 (a block is discarded when every |F| <= ε), "
                          f"got {epsilons}")
    if config.model.gate_inference not in GATE_INFERENCE_MODES:
        raise ConfigError(f"{source}: model.gate_inference must be one of {GATE_INFERENCE_MODES}, "
                          f"got {config.model.gate_inference!r}")
    if config.model.data_format not in DATA_FORMATS:
        raise ConfigError(f"{source}: model.data_format must be one of {DATA_FORMATS}, "
                          f"got {config.model.data_format!r}")
    if config.model.batch_norm not in BATCH_NORMS:
        raise ConfigError(f"{source}: model.batch_norm must be one of {BATCH_NORMS}, got {config.model.batch_norm!r}")


def epsilon_is_used(model):
    """Whether model.epsilon (what -e sets) is ever in force: not when the ε schedule has a point
    at epoch 0 and every point sets its own ε."""
    schedule = model.epsilon_schedule
    return not any(epoch == 0 for epoch, _ in schedule) or any(eps is None for _, eps in schedule)


def read_yaml(path, missing):
    """The parsed YAML file at path; FileError(missing) when there is no such file, naming it when invalid."""
    if os.path.isdir(path):
        raise FileError(f"{path} is a folder; expected a YAML file")
    if not os.path.isfile(path):
        raise FileError(missing)
    try:
        with open(path, encoding="utf-8") as f:
            return yaml.safe_load(f)
    except yaml.YAMLError as err:
        raise FileError(f"{path}: not valid YAML: {err}") from None
    except UnicodeDecodeError as err:
        raise FileError(f"{path} is not UTF-8 text (byte {err.start}); expected a YAML file") from None
    except OSError as err:
        raise FileError(f"{path} cannot be read: {err.strerror}") from None


def load(path):
    """Read a YAML config file; errors name the file."""
    raw = read_yaml(path, f"config file {path!r} does not exist (the shipped ones are in {CONFIG_DIR})")
    return from_dict(raw or {}, source=path)


def shipped(name):
    """One of the configs/ files by name, e.g. shipped('cifar10')."""
    return load(os.path.join(CONFIG_DIR, f"{name}.yaml"))


def replace(config, **overrides):
    """A copy with dotted overrides applied and re-validated, e.g. replace(c, **{'model.epsilon': 3.0})."""
    raw = config.to_dict()
    for dotted, value in overrides.items():
        section, key = dotted.split(".")
        raw[section][key] = value
    return from_dict(raw, source="command line")


def dump(config):
    return yaml.safe_dump(config.to_dict(), sort_keys=False)
