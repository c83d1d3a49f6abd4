"""Writing a file so that no reader ever sees half of it: the content goes to a temporary
beside the target, is flushed to disk, and is renamed over the target. Every writer of the
project (run folders, checkpoints, exports, results files) names its temporaries with
`temporary_path`; `is_temporary` recognises them (the run folder's start-up sweep). No TensorFlow."""
import os
import re

# temporary_path's names (name.tmp-<pid>, a file or a folder), and the .name.tmp-XXXX/ folders
# earlier versions' checkpoint and export writers left.
TEMPORARY = re.compile(r"(.+\.tmp-\d+|\..+\.tmp-.+)")


def temporary_path(path):
    """The temporary a writer of `path` fills before renaming it into place."""
    return f"{path}.tmp-{os.getpid()}"


def is_temporary(name):
    """Whether a file or folder name is a writer's temporary (`temporary_path`)."""
    return TEMPORARY.fullmatch(name) is not None


def write_atomic(path, content):
    """Write text or bytes to `path` (its folder made if missing), replacing what was there at once."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = temporary_path(path)
    try:
        with open(tmp, "wb" if isinstance(content, bytes) else "w") as f:
            f.write(content)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
