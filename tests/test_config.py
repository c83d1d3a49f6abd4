"""Config files: shipped ones load, bad ones fail with a message that names the problem."""
import pytest

from epsilon_resnet import config as config_lib
from epsilon_resnet.config import ConfigError


def write(tmp_path, text):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return str(path)


def test_round_trip_through_yaml(tmp_path):
    config = config_lib.replace(config_lib.shipped("cifar10"), **{"model.n": 5, "train.max_epoch": 7})
    assert config_lib.load(write(tmp_path, config_lib.dump(config))) == config


@pytest.mark.parametrize("text, fragment", [
    ("model: {m: 3}", "unknown key(s) ['m'] in section 'model'"),
    ("modle: {n: 3}", "unknown section(s) ['modle']"),
    ("model: {n: three}", "model.n must be int"),
    ("model: {epsilon: true}", "model.epsilon must be int or float"),
    ("train: {lr_schedule: [[0, 0.1], [0, 0.01]]}", "epochs must increase strictly"),
    ("train: {lr_schedule: [0.1]}", "list of [epoch, value] pairs"),
    ("train: {lr_schedule: [[0, 1e-1]]}", "YAML reads 1e-3 and 1.0e30 as strings"),
    ("model: {n: 0}", "model.n must be >= 1"),
    ("model: {epsilon: -1.0}", "ε must be >= 0"),
    ("data: {name: imagenet}", "model.depth is required"),
    ("model: [1, 2]", "section 'model' must be a mapping"),
    ("model: {n: 3", "not valid YAML"),
])
def test_malformed_config_names_the_problem(tmp_path, text, fragment):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        config_lib.load(path)
    assert fragment in str(err.value)


def test_missing_config_file_says_where_the_shipped_ones_are(tmp_path):
    with pytest.raises(ConfigError, match="does not exist.*configs"):
        config_lib.load(str(tmp_path / "nope.yaml"))


def test_override_is_validated():
    with pytest.raises(ConfigError, match="train.batch_size must be int"):
        config_lib.replace(config_lib.shipped("cifar10"), **{"train.batch_size": "big"})
