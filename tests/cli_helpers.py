"""What the command-line tests share: exit codes, one-line errors, folder snapshots, tiny training configs."""
import contextlib
import hashlib
import os

import yaml

from epsilon_resnet import run_folder


def exit_code(main, *argv):
    """A main function's exit code (0 when it returns)."""
    try:
        main([str(a) for a in argv])
    except SystemExit as exit_:
        return exit_.code
    return 0


def one_line_error(capsys):
    """The command's stderr, checked to be one `error: ...` line without a traceback."""
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err


@contextlib.contextmanager
def working_folder(folder):
    """Run commands in `folder` (for module fixtures, which cannot use monkeypatch.chdir)."""
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        yield folder
    finally:
        os.chdir(cwd)


def snapshot(folder):
    """{relative path: sha256} of every file below folder, to prove a command left it untouched.

    The run folder's lock file is left out: every process that holds the lock writes its PID there.
    """
    hashes = {}
    for root, _, files in os.walk(folder):
        for name in files:
            if name == run_folder.LOCK_FILE:
                continue
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                hashes[os.path.relpath(path, folder)] = hashlib.sha256(f.read()).hexdigest()
    return hashes


def write_tiny_config(folder, data_dir, model=None, **train):
    """folder/tiny.yaml: ResNet-8 (n=1) on data_dir, batches of 8, 3 steps per epoch, 2 epochs, seed 0."""
    train = {"batch_size": 8, "eval_batch_size": 8, "max_epoch": 2, "steps_per_epoch": 3, "seed": 0, **train}
    path = os.path.join(folder, "tiny.yaml")
    with open(path, "w") as f:
        yaml.safe_dump({"data": {"name": "cifar10", "dir": data_dir}, "model": model or {"n": 1}, "train": train}, f)
    return path
