"""Config files: shipped ones load, bad ones fail with a message that names the problem."""
import pytest

from epsilon_resnet import cli, run_folder
from epsilon_resnet import config as config_lib
from epsilon_resnet.errors import ConfigError, FileError
from epsilon_resnet.schedules import epsilon_at
from cli_helpers import exit_code


def write(tmp_path, text):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return str(path)


def test_round_trip_through_yaml(tmp_path):
    config = config_lib.replace(config_lib.shipped("cifar10"), **{"model.n": 5, "train.max_epoch": 7})
    assert config_lib.load(write(tmp_path, config_lib.dump(config))) == config


@pytest.mark.parametrize("text, fragment", [
    ("model: {m: 3}", "unknown key(s) ['m'] in section 'model'"),
    ("modle: {n: 3}", "unknown key(s) ['modle']; expected some of ['data', 'model', 'train']"),
    ("model: {n: three}", "model.n must be int"),
    ("model: {epsilon: true}", "model.epsilon must be int or float"),
    ("train: {lr_schedule: [[0, 0.1], [0, 0.01]]}", "epochs must increase strictly"),
    ("train: {lr_schedule: [0.1]}", "list of [epoch, value] pairs"),
    ("train: {lr_schedule: [[0, 1e-1]]}", "YAML reads 1e-3 and 1.0e30 as strings"),
    ("model: {n: 0}", "model.n must be >= 1 (or null), got 0"),
    ("model: {epsilon: -1.0}", "model.epsilon must be >= 0, got -1.0"),
    ("data: {name: imagenet}", "model.depth is required"),
    ("model: [1, 2]", "section 'model' must be a mapping"),
    ("model: {n: 3", "not valid YAML"),
    ("train: {lr_schedule: [[0, null]]}", "pairs of numbers, got"),
    ("model: {epsilon_schedule: [[0, 0.0], [150, -1.0]]}", "model.epsilon_schedule must be >= 0"),
])
def test_malformed_config_names_the_problem(tmp_path, text, fragment):
    path = write(tmp_path, text)
    with pytest.raises((ConfigError, FileError)) as err:  # FileError: not YAML at all
        config_lib.load(path)
    assert fragment in str(err.value)


def test_missing_config_file_says_where_the_shipped_ones_are(tmp_path):
    with pytest.raises(FileError, match="does not exist.*configs"):
        config_lib.load(str(tmp_path / "nope.yaml"))


def test_override_is_validated():
    with pytest.raises(ConfigError, match="train.batch_size must be int"):
        config_lib.replace(config_lib.shipped("cifar10"), **{"train.batch_size": "big"})


def resolved(tmp_path, schedule, *flags):
    """The config cifarEpsilonResnet.py would train with --config (ε 2.5, this schedule) and flags."""
    path = write(tmp_path, f"model: {{epsilon: 2.5, epsilon_schedule: {schedule}}}")
    args = cli.training_parser("test", "batch").parse_args(["--config", path, *flags])
    return cli.resolve_config(args, None)


def test_e_takes_the_null_points_of_the_originals_later_epsilon_schedule(tmp_path):
    """[[0, 0.0], [150, null]]: ε = 0 in epochs 1-150 (a point holds from the epoch after it), then -e."""
    model = resolved(tmp_path, "[[0, 0.0], [150, null]]", "-e", "1.8").model
    assert [epsilon_at(model.epsilon_schedule, e, model.epsilon) for e in (1, 150, 151, 400)] == [0.0, 0.0, 1.8, 1.8]


def test_e_before_the_first_point_of_a_schedule_without_epoch_0(tmp_path):
    model = resolved(tmp_path, "[[3, 4.0]]", "-e", "1.8").model
    assert [epsilon_at(model.epsilon_schedule, e, model.epsilon) for e in (1, 3, 4)] == [1.8, 1.8, 4.0]


def test_e_that_a_schedule_from_epoch_0_would_ignore_is_a_one_line_error(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = write(tmp_path, "model: {n: 1, epsilon_schedule: [[0, 0.5], [150, 2.5]]}")
    assert exit_code(cli.cifar_main, "--config", path, "-e", "1.8", "-o", "x") == 1
    message = capsys.readouterr().err.strip()
    assert "\n" not in message and message.startswith("error: -e 1.8 would never be in force")
    assert "[[0, 0.5], [150, 2.5]]" in message and "null" in message
    assert not (tmp_path / "train_log.x").exists()


@pytest.mark.parametrize("text, fragment", [
    ("train: {precision: float16}", "train.precision must be one of ['float32', 'mixed_float16', 'mixed_bfloat16']"),
    ("model: {gate_scope: per_gpu}", "model.gate_scope must be one of ['global', 'per_replica']"),
    ("train: {mixed_precision: 1}", "train.mixed_precision must be bool"),
    ("train: {mixed_precision: true, precision: mixed_bfloat16}", "contradicts train.precision 'mixed_bfloat16'"),
])
def test_precision_and_gate_scope_take_only_their_values(tmp_path, text, fragment):
    with pytest.raises(ConfigError) as err:
        config_lib.load(write(tmp_path, text))
    assert fragment in str(err.value)


def test_an_earlier_versions_config_yaml_still_loads_and_its_run_folder_resumes(tmp_path):
    """train.mixed_precision (a boolean, before train.precision) is read as the precision it meant."""
    assert config_lib.load(write(tmp_path, "train: {mixed_precision: true}")).train.precision == "mixed_float16"
    assert config_lib.load(write(tmp_path, "train: {mixed_precision: false, precision: float32}")).train.precision \
        == "float32"
    # A run folder written before train.precision and model.gate_scope existed: its config.yaml
    # loads, and a run of the same network and data may continue in it.
    old = config_lib.dump(config_lib.shipped("cifar10")).replace("  precision: float32\n", "  mixed_precision: false\n")
    old = old.replace("  gate_scope: global\n", "")
    assert "mixed_precision: false" in old and "gate_scope" not in old
    run_dir = tmp_path / "train_log.old"
    run_dir.mkdir()
    (run_dir / run_folder.CONFIG_FILE).write_text(old)
    saved = run_folder.read_config(str(run_dir))
    assert (saved.train.precision, saved.model.gate_scope) == ("float32", "global")
    run_folder.prepare(str(run_dir), config_lib.shipped("cifar10"))
    assert (run_dir / run_folder.CONFIG_FILE).read_text() == old  # read, never rewritten
