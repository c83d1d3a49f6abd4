"""Experiment configuration: YAML files in configs/ → typed dataclasses, validated up front.

Every number of docs/original.md §4–6 lives here, so a run folder's config.yaml says
exactly what ran. Each field declares its valid range or choices where it is defined
(`within`, `one_of`), and `validate` checks them all before anything runs.
"""
import dataclasses
import math
import os
import re
import typing

import yaml

from epsilon_resnet import data
from epsilon_resnet.errors import ConfigError, FileError, RunError
from epsilon_resnet.structures import (BATCH_NORMS, DATA_FORMATS, EPSILONS, GATE_EMA_DECAY, GATE_INFERENCE_MODES,
                                       GATE_SCOPES, IMAGENET_DEPTHS, PRECISIONS, architecture_for)


@dataclasses.dataclass(frozen=True)
class Range:
    """The numbers a field may hold: from low to high, each end included or not, None for no
    end; never NaN or infinite. Written as in maths, "[0, 1)", or with one end, ">= 1", "> 0"."""
    low: typing.Optional[float] = None
    high: typing.Optional[float] = None
    low_open: bool = False
    high_open: bool = False

    @classmethod
    def parse(cls, text):
        one_end = re.fullmatch(r"(>=|>) (\S+)", text)
        if one_end:
            return cls(low=float(one_end[2]), low_open=one_end[1] == ">")
        start, low, high, end = re.fullmatch(r"([\[(])(\S+), (\S+)([\])])", text).groups()
        return cls(float(low), float(high), start == "(", end == ")")

    def __contains__(self, value):
        above_low = self.low is None or value > self.low or (value == self.low and not self.low_open)
        below_high = self.high is None or value < self.high or (value == self.high and not self.high_open)
        return math.isfinite(value) and above_low and below_high

    def __str__(self):
        low, high = (None if x is None else str(int(x)) if x.is_integer() else f"{x:g}" for x in (self.low, self.high))
        if high is None:
            return f"{'>' if self.low_open else '>='} {low}"
        return f"in {'(' if self.low_open else '['}{low}, {high}{')' if self.high_open else ']'}"


def within(interval, default=dataclasses.MISSING, *, default_factory=dataclasses.MISSING, each=None,
           points=False, null_value=None):
    """A config field whose numbers must lie in `interval` (Range.parse): the value itself, or
    each element of a list of `each` (a type), or with points=True the value of each [epoch,
    value] point of a schedule (null_value: what a null value stands for, if one is allowed)."""
    return dataclasses.field(default=default, default_factory=default_factory, metadata={
        "range": Range.parse(interval), "each": each, "points": points, "null_value": null_value})


def one_of(choices, default):
    """A config field that holds one of `choices` (or null, if its type allows)."""
    return dataclasses.field(default=default, metadata={"choices": tuple(choices)})


EPOCHS = Range.parse(">= 0")  # the epochs of a schedule's points


@dataclasses.dataclass
class DataConfig:
    name: str = one_of(data.DATASETS, "cifar10")
    dir: typing.Optional[str] = None  # folder holding the dataset files (no download, ever)
    options: dict = dataclasses.field(default_factory=dict)  # passed to data.get_source (e.g. use_extra)


@dataclasses.dataclass
class ModelConfig:
    n: typing.Optional[int] = within(">= 1", 18)  # CIFAR/SVHN: depth 6n+2
    depth: typing.Optional[int] = one_of(IMAGENET_DEPTHS, None)  # ImageNet: 18, 34, 50, 101 or 152
    width: int = within(">= 1", 1)  # CIFAR/SVHN: stage widths 16k, 32k, 64k (n 2, width 4: WRN-16-4's shape)
    epsilon: float = within(EPSILONS, 2.5)  # a block is discarded when every |F| <= ε
    # [[epoch, ε], ...]: ε from the epoch after that one on (tensorpack's timing); empty keeps `epsilon`,
    # and so does a point whose ε is null (the original's later schedule: [[0, 0.0], [150, null]]).
    epsilon_schedule: list = within(EPSILONS, default_factory=list, points=True, null_value="model.epsilon, i.e. -e")
    gated: bool = True                   # False: the standard pre-activation ResNet baseline
    side_output: bool = True
    side_loss_weight: float = within(">= 0", 0.1)
    gate_ema_decay: float = within("[0, 1)", GATE_EMA_DECAY)
    # The gates at inference: stored (from training) or per_batch (the original).
    gate_inference: str = one_of(GATE_INFERENCE_MODES, "stored")
    # A training step's gate decides on the global batch (global), or on each replica's own share
    # with replica 0's averages stored (per_replica, the original's per-GPU towers).
    gate_scope: str = one_of(GATE_SCOPES, "global")
    data_format: str = one_of(DATA_FORMATS, "channels_last")  # or channels_first (NCHW): faster on GPUs
    batch_norm: str = one_of(BATCH_NORMS, "fused")  # TensorFlow's fused kernel, as tensorpack's; or keras


@dataclasses.dataclass
class TrainConfig:
    batch_size: int = within(">= 1", 128)  # images per step: per replica, or global (batch_per_replica: false)
    batch_per_replica: bool = True       # CIFAR/SVHN: each GPU its own batch; ImageNet: one batch split
    eval_batch_size: typing.Optional[int] = within(">= 1", 128)  # null: the per-replica training batch
    eval_batches: typing.Optional[int] = within(">= 1", None)  # validate on the first K batches only; None: all
    max_epoch: int = within(">= 1", 1000)
    steps_per_epoch: typing.Optional[int] = within(">= 1", None)  # None: training images // batch_size
    momentum: float = within("[0, 1)", 0.9)
    nesterov: bool = False
    # L2 coefficient on Σ ½‖W‖² over conv and dense kernels: wd · rate^⌊step / steps⌋.
    weight_decay: float = within(">= 0", 0.0002)
    weight_decay_rate: float = within(">= 0", 0.2)
    weight_decay_steps: int = within(">= 1", 480000)
    # Learning rate: (epoch, lr) points, each in force from the epoch after it (a point at 0: from
    # the start); lr_restart_schedule None = standard schedule.
    lr_schedule: list = within(">= 0", points=True,
                               default_factory=lambda: [[0, 0.1], [82, 0.01], [123, 0.001], [300, 0.0002]])
    lr_restart_schedule: typing.Optional[list] = within(
        ">= 0", points=True, default_factory=lambda: [[0, 0.1], [41, 0.01], [61, 0.001], [150, 0.0002]])
    lr_restart_threshold: float = within("> 0", 1.0)  # a rise of discarded blocks that restarts the schedule
    lr_restart_last_k: int = within(">= 1", 1)
    keep_checkpoints: int = within(">= 1", 10)  # the last K checkpoints stay in the run folder
    keep_checkpoint_every_minutes: float = within("> 0", 30.0)  # ... and one from every such interval, for good
    # Global steps (epoch ends) whose checkpoints are kept for good, in <run folder>/kept/.
    keep_checkpoint_steps: list = within(">= 1", default_factory=list, each=int)
    seed: typing.Optional[int] = within(f"[0, {2 ** 32 - 1}]", None)  # NumPy's seeds
    deterministic: bool = False          # tf.config.experimental.enable_op_determinism(); needs a seed
    precision: str = one_of(PRECISIONS, "float32")  # or mixed_float16 (with loss scaling) or mixed_bfloat16
    jit_compile: bool = False
    skip_closed_backward: bool = True    # no backward pass through the branch of a closed block
    log_every: int = within(">= 1", 1)  # steps between progress-bar updates


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


def read_mixed_precision(raw, source):
    """The raw config with an earlier version's boolean train.mixed_precision read as
    train.precision (true: mixed_float16), so that old run folders load and resume."""
    train = raw.get("train") if isinstance(raw, dict) else None
    if not isinstance(train, dict) or "mixed_precision" not in train:
        return raw
    train = dict(train)
    mixed = train.pop("mixed_precision")
    _check_type(f"{source}: train.mixed_precision", mixed, bool)
    precision = "mixed_float16" if mixed else "float32"
    if train.setdefault("precision", precision) != precision:
        raise ConfigError(f"{source}: train.mixed_precision {mixed} contradicts train.precision "
                          f"{train['precision']!r}; keep train.precision only")
    return {**raw, "train": train}


def from_dict(raw, source="config"):
    """Build a Config from nested dicts, naming any unknown key or mistyped value."""
    config = build(Config, read_mixed_precision(raw, source), source)
    validate(config, source)
    return config


def _is_number(x):
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _check_points(where, points, null_value=None):
    """A schedule: [epoch, value] points, epochs >= 0 and increasing. null_value: what a null
    value stands for, if a null value is allowed (named in the error)."""
    def is_point(p):
        return (isinstance(p, (list, tuple)) and len(p) == 2 and _is_number(p[0])
                and (_is_number(p[1]) or (null_value is not None and p[1] is None)))

    if not points or not all(map(is_point, points)):
        values = "numbers" if null_value is None else f"numbers (or a null value: {null_value})"
        raise ConfigError(f"{where} must be a non-empty list of [epoch, value] pairs of {values}, got {points!r} "
                          f"(YAML reads 1e-3 and 1.0e30 as strings: write 0.001, 1.0e-3 or 1.0e+30)")
    epochs = [p[0] for p in points]
    if epochs != sorted(epochs) or len(set(epochs)) != len(epochs) or not all(e in EPOCHS for e in epochs):
        raise ConfigError(f"{where} epochs must increase strictly and be {EPOCHS}, got {epochs}")


def _check_field(where, value, field):
    """A field's value against its `within` range or `one_of` choices (null passed the type check)."""
    if value is None:
        return
    if "choices" in field.metadata and value not in field.metadata["choices"]:
        raise ConfigError(f"{where} must be one of {list(field.metadata['choices'])}, got {value!r}")
    if "range" not in field.metadata:
        return
    meta, allowed = field.metadata, field.metadata["range"]
    if meta["points"]:
        if value or meta["null_value"] is None:  # an empty ε schedule keeps model.epsilon
            _check_points(where, value, meta["null_value"])
        numbers = [v for _, v in value if v is not None]
    elif meta["each"]:
        if not all(isinstance(v, meta["each"]) and not isinstance(v, bool) for v in value):
            raise ConfigError(f"{where} must be a list of {meta['each'].__name__}s {allowed}, got {value!r}")
        numbers = value
    else:
        numbers = [value]
    outside = [v for v in numbers if v not in allowed]
    if outside:
        what = "the values of its points" if meta["points"] else "each element" if meta["each"] else ""
        nullable = type(None) in typing.get_args(field.type)
        raise ConfigError(f"{where} must be {allowed}{' (or null)' if nullable else ''}"
                          f"{f' ({what})' if what else ''}, got {outside[0] if what else value!r}")


def validate(config, source="config"):
    """Every field against its range or choices (`within`, `one_of`), then the checks across fields."""
    for section in dataclasses.fields(config):
        values = getattr(config, section.name)
        for field in dataclasses.fields(values):
            _check_field(f"{source}: {section.name}.{field.name}", getattr(values, field.name), field)
    try:  # the network's shape (n or depth), checked by the preset that makes its architecture
        architecture_for(config.model, data.family_of(config.data.name))
    except ConfigError as err:
        raise ConfigError(f"{source}: {err} ({config.data.name})") from None
    if config.train.deterministic and config.train.seed is None:
        raise ConfigError(f"{source}: train.deterministic needs train.seed: without a seed no two runs are alike")


def epsilon_is_used(model):
    """Whether model.epsilon (what -e sets) is ever in force: not when the ε schedule has a point
    at epoch 0 and every point sets its own ε."""
    schedule = model.epsilon_schedule
    return not any(epoch == 0 for epoch, _ in schedule) or any(eps is None for _, eps in schedule)


# ---- the batch rules of TrainConfig -----------------------------------------------------------
def per_replica_batch(train, replicas):
    """Images per replica and step. CIFAR/SVHN feed every replica its own batch
    (train.batch_per_replica, as tensorpack fed each GPU); ImageNet splits one global batch
    with the original's integer division (256 // 6 = 42 per GPU on 6 GPUs, docs/original.md §10)."""
    if train.batch_per_replica:
        return train.batch_size
    if train.batch_size < replicas:
        raise RunError(f"the global batch of {train.batch_size} images is smaller than the {replicas} replicas "
                       f"it is split across; choose a batch size of at least the number of GPUs")
    return train.batch_size // replicas


def eval_batch_size(train, replicas):
    """train.eval_batch_size, or when it is null the per-replica training batch: tensorpack
    evaluated on one tower in batches of the per-GPU batch (ImageNet: 256 // number of GPUs,
    docs/original.md §10), and under the per-batch gate the batch decides which blocks close."""
    return train.eval_batch_size or per_replica_batch(train, replicas)


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
