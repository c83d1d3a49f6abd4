"""Starting a training command: everything is checked before the run folder is created, so a
failed start leaves the working folder as it found it; where the data is is not part of the run;
a finished run says so and writes nothing; --eval on every training script; no flag abbreviations."""
import functools
import os
import re
import shutil

import pytest
import yaml

from epsilon_resnet import cli, config as config_lib, training
from epsilon_resnet.errors import Interrupted
from epsilon_resnet.run_folder import read_metrics
from cli_helpers import exit_code, one_line_error, snapshot, working_folder, write_tiny_config
from test_resume import SignalAt, ctrl_c_interrupts  # noqa: F401 (a fixture)

run = functools.partial(exit_code, cli.cifar_main)
REPO = os.path.dirname(os.path.dirname(os.path.abspath(cli.__file__)))  # the code under test


@pytest.fixture(scope="module")
def finished(tmp_path_factory, tiny_cifar):
    """A folder holding tiny.yaml (ResNet-8, one epoch of 3 steps) and its finished run train_log.a/."""
    with working_folder(tmp_path_factory.mktemp("work")) as work:
        assert run("--config", write_tiny_config(str(work), tiny_cifar, max_epoch=1), "-o", "a") == 0
    return work


def test_a_failed_start_leaves_the_working_folder_as_it_found_it(finished, monkeypatch, capsys):
    monkeypatch.chdir(finished)
    with open("tiny.yaml") as f:
        raw = yaml.safe_load(f)
    raw["train"]["log_every"] = 0  # caught only in the first epoch before
    with open("late.yaml", "w") as f:
        yaml.safe_dump(raw, f)
    command = ("--config", "tiny.yaml", "-o", "x")
    failures = [((*command, "--load", "train_log.a/model-3", "-n", 2), "the weights in train_log.a/model-3 do not fit"),
                ((*command, "--keep-step", 4), "[4] are not checkpoints this run will write"),
                (("--config", "late.yaml", "-o", "x"), "train.log_every must be >= 1"),
                ((*command, "-n", 1000000), "GiB of memory of this machine")]
    before = snapshot(".")
    for argv, message in failures:
        assert run(*argv) == 1
        assert message in one_line_error(capsys)
        assert snapshot(".") == before, argv  # no train_log.x, nothing changed
    # The command with every mistake corrected: the folder is free for it.
    assert run(*command, "--load", "train_log.a/model-3", "--keep-step", 6) == 0
    assert [r["global_step"] for r in read_metrics("train_log.x")] == [6]
    assert os.path.isfile("train_log.x/kept/model-6.index")


def test_a_finished_run_says_so_and_how_to_extend_it_and_writes_nothing(finished, monkeypatch, capsys):
    monkeypatch.chdir(finished)
    before = snapshot("train_log.a")
    capsys.readouterr()
    assert run("--config", "tiny.yaml", "-o", "a") == 0
    out = capsys.readouterr().out
    assert "train_log.a is finished: its last checkpoint ends epoch 1 (global step 3)" in out, out
    assert "--max-epoch 2" in out and "epochs 2..1" not in out
    assert snapshot("train_log.a") == before


def test_eval_on_the_cifar_and_svhn_scripts_prints_the_checkpoints_errors_and_writes_nothing(
        finished, monkeypatch, capsys):
    monkeypatch.chdir(finished)
    (record,) = read_metrics("train_log.a")
    before, entries = snapshot("."), sorted(os.listdir("."))
    capsys.readouterr()
    assert run("--eval", "--load", "train_log.a/model-3", "--config", "tiny.yaml") == 0
    printed = capsys.readouterr().out
    values = dict(re.findall(r"^(top-1 error|val_cost): (\S+)$", printed, re.MULTILINE))
    assert {key: float(value) for key, value in values.items()} == pytest.approx(
        {"top-1 error": record["val_error"], "val_cost": record["val_cost"]}, rel=1e-4, abs=1e-5)
    assert "train_log.a/model-3: ResNet-8" in printed
    assert snapshot(".") == before and sorted(os.listdir(".")) == entries
    assert run("--eval", "--load", "train_log.a/model-3", "--config", "tiny.yaml", "-n", 2) == 1
    error = one_line_error(capsys)
    assert "(ResNet-14, gated=True)" in error and error.rstrip().endswith("; -n must be the run's")
    for main in (cli.cifar_main, cli.svhn_main):
        assert exit_code(main, "--eval") == 2
        assert "--eval needs --load" in capsys.readouterr().err


@pytest.mark.parametrize("main, argv", [(cli.cifar_main, ["--gp", "x"]), (cli.svhn_main, ["--gp", "x"]),
                                        (cli.imagenet_main, ["--gp", "x"]), (cli.cifar_compressed_main, ["--cfg", "c", "--gp", "x"]),
                                        (cli.compress_main, ["--dir", "d", "--step", 1, "--check-b", "x"]),
                                        (cli.cifar_main, ["--eval-b", "x"])])
def test_flags_are_not_abbreviated(main, argv, capsys):
    """argparse took --eval 1 for --eval-batches 1 on cifarEpsilonResnet.py, and started training."""
    assert exit_code(main, *argv) == 2
    assert f"unrecognized arguments: {argv[-2]} x" in capsys.readouterr().err


def test_every_argument_parser_of_the_project_refuses_abbreviations():
    """The scripts, benchmarks and reproduction entry points too (a new parser must say so)."""
    sources = [os.path.join(root, name) for folder in ("epsilon_resnet", "scripts", "benchmarks", "reproduction")
               for root, _, names in os.walk(os.path.join(REPO, folder)) for name in names if name.endswith(".py")]
    calls = 0
    for path in sources:
        with open(path) as f:
            text = f.read()
        for call in re.finditer(r"(ArgumentParser|add_parser)\(", text):
            arguments = text[call.end():text.index("\n\n", call.end())]
            assert "allow_abbrev=False" in arguments.split(")\n")[0], (path, arguments[:80])
            calls += 1
    assert calls >= 14


def test_a_run_resumes_from_moved_data_and_mid_epoch_logs_its_epoch(tmp_path, monkeypatch, tiny_cifar,
                                                                      ctrl_c_interrupts):  # noqa: F811
    """Where the data is is not what the run is: the same dataset in another folder resumes the run,
    config.yaml stays as written, and the log says where the data now comes from."""
    monkeypatch.chdir(tmp_path)
    first = str(tmp_path / "first")
    shutil.copytree(tiny_cifar, first)
    config = write_tiny_config(str(tmp_path), first)
    with pytest.raises(Interrupted, match=r"global step 2 \(step 2 of epoch 1\)"):
        training.train_and_evaluate(config_lib.load(config), "train_log.r", progress=False,
                                    extra_callbacks=[SignalAt(1)])  # seen at step 2
    written = (tmp_path / "train_log.r" / "config.yaml").read_bytes()
    moved = str(tmp_path / "moved")
    os.rename(first, moved)
    assert run("--config", config, "--data", moved, "-o", "r") == 0
    assert [(r["epoch"], r["global_step"]) for r in read_metrics("train_log.r")] == [(1, 3), (2, 6)]
    assert (tmp_path / "train_log.r" / "config.yaml").read_bytes() == written
    log = (tmp_path / "train_log.r" / "log.log").read_text()
    assert f"the data now comes from {moved}" in log and f"keeps {first}" in log
    assert "resumed from train_log.r/model-2 at global step 2, step 2 of epoch 1" in log
