"""Bad input at the command lines: each gives one line naming the file and what was expected, and exit
code 1, never a traceback (damaged checkpoints, edited .cfg files, unreadable data, odd configs, -e nan)."""
import functools
import os
import shutil

import pytest

from epsilon_resnet import data
from epsilon_resnet.cli import cifar_compressed_main, cifar_main, compress_main, in_flags
from epsilon_resnet.data import cifar
from cli_helpers import exit_code, one_line_error, working_folder, write_tiny_config

train = functools.partial(exit_code, cifar_main)
compress = functools.partial(exit_code, compress_main)
evaluate = functools.partial(exit_code, cifar_compressed_main)
QUICK = ("--check-batches", 1)


@pytest.fixture(scope="module")
def compressed(tmp_path_factory, tiny_cifar):
    """A folder holding train_log.t/ (ResNet-8, one epoch of 3 steps, every gate closed) compressed at step 3."""
    with working_folder(tmp_path_factory.mktemp("work")) as work:
        config = write_tiny_config(str(work), tiny_cifar, model={"n": 1, "epsilon": 1e3, "gate_ema_decay": 0.5},
                                   max_epoch=1)
        assert exit_code(cifar_main, "--config", config, "-o", "t") == 0
        assert exit_code(compress_main, "--dir", "train_log.t", "--step", 3, *QUICK) == 0
    return work / "train_log.t"


def copy_run(compressed, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(compressed, run_dir)
    return run_dir


def test_library_messages_get_flags_for_their_backquoted_argument_names_only():
    """in_flags is a lookup of `name` → flag: no phrase is rewritten, an unknown name stays as it is."""
    message = "`size` 2 is not `model.depth`; size and `directory`s, `datasets` are cifar10, `other` stays"
    assert in_flags(message) == "-n 2 is not -d; size and --dirs, `datasets` are cifar10, `other` stays"


def test_a_cut_checkpoint_data_file_at_compression_is_named_damaged(compressed, tmp_path, capsys):
    run_dir = copy_run(compressed, tmp_path)
    for name in os.listdir(run_dir):
        if name.startswith("compressed_model_3."):
            os.remove(run_dir / name)
    data_file = run_dir / "model-3.data-00000-of-00001"
    os.truncate(data_file, 100)
    assert compress("--dir", run_dir, "--step", 3, *QUICK) == 1
    assert f"the checkpoint files of {run_dir}/model-3 are damaged (Read less bytes than requested)" in \
        one_line_error(capsys)
    data_file.write_bytes(b"")
    assert compress("--dir", run_dir, "--step", 3, *QUICK) == 1
    assert "are damaged" in one_line_error(capsys)


def test_a_checksum_failure_is_named_damage_not_a_misfit(compressed, tmp_path, capsys):
    run_dir = copy_run(compressed, tmp_path)
    weights = run_dir / "compressed_model_3.data-00000-of-00001"
    damaged = bytearray(weights.read_bytes())
    damaged[100] ^= 0xFF
    weights.write_bytes(bytes(damaged))
    assert evaluate("--cfg", run_dir / "compressed_model_3.cfg") == 1
    err = one_line_error(capsys)
    assert "compressed_model_3 are damaged" in err and "Checksum does not match" in err and "do not fit" not in err


def test_an_edited_cfg_is_refused_in_one_short_line(compressed, tmp_path, capsys):
    run_dir = copy_run(compressed, tmp_path)
    cfg = run_dir / "compressed_model_3.cfg"
    text = cfg.read_text()
    assert "removed_blocks: [res1.0, res2.0, res3.0]" in text and "eval_batch_size: 8" in text
    cfg.write_text(text.replace("removed_blocks: [res1.0, res2.0, res3.0]", "removed_blocks: [res2.0, res3.0]"))
    # The weights no longer fit: TensorFlow's list of unmatched variables, names only.
    assert evaluate("--cfg", cfg) == 1
    err = one_line_error(capsys)
    assert "do not fit the network" in err and "res1.0_conv1" in err and len(err) < 600, err
    cfg.write_text(text.replace("eval_batch_size: 8", "eval_batch_size: 0"))
    assert evaluate("--cfg", cfg) == 1
    assert "compressed_model_3.cfg: eval_batch_size must be a whole number >= 1, got 0" in one_line_error(capsys)


@pytest.mark.parametrize("epsilon", ["nan", "inf"])
def test_a_non_finite_epsilon_is_refused_before_any_folder_is_made(tmp_path, monkeypatch, capsys, tiny_cifar,
                                                                   epsilon):
    monkeypatch.chdir(tmp_path)
    assert train("--config", write_tiny_config(str(tmp_path), tiny_cifar), "-e", epsilon, "-o", "x") == 1
    assert f"model.epsilon must be >= 0, got {epsilon}" in one_line_error(capsys)
    assert os.listdir(tmp_path) == ["tiny.yaml"]


def test_a_config_that_is_not_utf8_text_or_is_a_folder_is_named(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "latin1.yaml").write_bytes("model: {n: 1}  # ε\n".encode("latin-1", errors="replace") + b"\xe9\n")
    assert train("--config", "latin1.yaml", "-o", "x") == 1
    assert "latin1.yaml is not UTF-8 text" in one_line_error(capsys)
    (tmp_path / "configs").mkdir()
    assert train("--config", "configs", "-o", "x") == 1
    assert "configs is a folder; expected a YAML file" in one_line_error(capsys)
    assert sorted(os.listdir(tmp_path)) == ["configs", "latin1.yaml"]


def test_unreadable_data_is_named_as_unreadable_not_missing(tiny_cifar, monkeypatch):
    # As a folder or file without read permission does (chmod does not stop root, who runs the CI).
    folder = os.path.join(tiny_cifar, "cifar-10-batches-py")
    monkeypatch.setattr(os, "access", lambda path, mode: os.path.normpath(path) != folder)
    with pytest.raises(data.DataError, match=f"cifar10: {folder} cannot be read \\(Permission denied\\)"):
        data.get_source("cifar10", tiny_cifar)
    monkeypatch.undo()

    def refuse(path, *args):
        raise PermissionError(13, "Permission denied", path)
    monkeypatch.setattr(cifar, "open", refuse, raising=False)
    with pytest.raises(data.DataError, match=f"cifar10: {folder}/data_batch_1 cannot be read"):
        data.get_source("cifar10", tiny_cifar)
