"""A console a person can read: plain progress lines when the output is redirected (no
backspaces or escape codes), and no TensorFlow start-up lines from the library's import."""
import os
import subprocess
import sys

from epsilon_resnet import console
from cli_helpers import write_tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def quiet_environment():
    """This process's environment without the settings that ask TensorFlow for more or less log."""
    env = {k: v for k, v in os.environ.items() if k not in (console.TF_LOG_LEVEL_VARIABLE, console.VERBOSE_VARIABLE)}
    return {**env, "PYTHONPATH": os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")])}


def test_progress_lines_give_step_rate_and_eta_at_most_once_a_minute_and_at_the_epoch_end(capsys):
    now = [100.0]
    progress = console.ProgressLines(epoch=2, max_epoch=4, steps=10, images_per_step=128, clock=lambda: now[0])
    for step in range(1, 11):
        now[0] += 10.0  # 10 s per step
        progress.update(step, [("cost", float(step)), ("train_error", 0.1 * step)])
    lines = capsys.readouterr().out.splitlines()
    # 60 s after the start (step 6), then the epoch's end; 0.1 steps/s, 12.8 images/s.
    assert lines == [
        "epoch 2/4 step 6/10 - 60 s, 0.10 steps/s, 13 img/s - ETA 0:40 - cost 6.0000 - train_error 0.3500",
        "epoch 2/4 step 10/10 - 100 s, 0.10 steps/s, 13 img/s - run ETA 3:20 - cost 10.0000 - train_error 0.5500"]


def test_a_resumed_epoch_s_rate_counts_the_steps_since_the_resumption(capsys):
    now = [0.0]
    progress = console.ProgressLines(epoch=1, max_epoch=1, steps=100, images_per_step=1, first_step=90,
                                     clock=lambda: now[0])
    now[0] = 5.0
    progress.update(100)
    assert capsys.readouterr().out == "epoch 1/1 step 100/100 - 5 s, 2.00 steps/s, 2 img/s - run ETA 0:00\n"


def test_a_redirected_training_log_has_plain_progress_lines_and_no_tensorflow_start_up_lines(tmp_path, tiny_cifar):
    config = write_tiny_config(str(tmp_path), tiny_cifar, max_epoch=1)
    log = tmp_path / "log"
    with open(log, "w") as out:
        done = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "cifarEpsilonResnet.py"), "--config",
                               config, "-o", "r"], cwd=tmp_path, env=quiet_environment(), stdout=out,
                              stderr=subprocess.STDOUT, timeout=600)
    text = log.read_text()
    assert done.returncode == 0, text[-3000:]
    assert "\b" not in text and "\x1b" not in text and "\r" not in text, repr(text[:2000])
    (progress,) = [line for line in text.splitlines() if line.startswith("epoch 1/1 step 3/3 - ")]
    assert " steps/s, " in progress and " img/s - run ETA 0:00 - cost " in progress, progress
    for start_up in ("oneDNN", "cuInit", "absl", "cuda"):
        assert start_up not in text, text[:2000]


def test_the_library_import_is_quiet_and_keeps_a_log_level_the_user_set():
    env = quiet_environment()
    done = subprocess.run([sys.executable, "-c", "import os; from epsilon_resnet import gate; "
                                                 "print(os.environ['TF_CPP_MIN_LOG_LEVEL'])"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert (done.returncode, done.stderr, done.stdout) == (0, "", "3\n")
    script = "import os, sys, epsilon_resnet; print(os.environ['TF_CPP_MIN_LOG_LEVEL'], 'tensorflow' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", script], env={**env, "TF_CPP_MIN_LOG_LEVEL": "1"},
                          capture_output=True, text=True, timeout=300)
    assert done.stdout == "1 False\n", done.stderr  # and the package's import does not import TensorFlow
