"""Writing a file so that no reader ever sees half of it: the content goes to a temporary
beside the target, is flushed to disk, and is renamed over the target. Every writer of the
project (run folders, checkpoints, exports, results files) names its temporaries with
`temporary_path`, which the run folder's start-up sweep (`run_folder.TEMPORARY`) recognises.
No TensorFlow."""
import os


def temporary_path(path):
    """The temporary a writer of `path` fills before renaming it into place."""
    return f"{path}.tmp-{os.getpid()}"


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
