"""Writing a file so that no reader ever sees half of it: the content goes to a temporary
beside the target, is flushed to disk, and is renamed over the target. Every writer of the
project (run folders, checkpoints, exports, results files) names its temporaries with
`temporary_path`, a name no user picks that carries the writer's PID, so that the run folder's
start-up sweep (`run_folder.remove_stale_temporaries`) deletes only what a writer that is gone
left. No TensorFlow."""
import os
import re
import secrets

# .<name>.epsilon_resnet-tmp.<writer's PID>.<8 random hex digits>
TEMPORARY = re.compile(r"\.(?P<name>.+)\.epsilon_resnet-tmp\.(?P<pid>\d+)\.[0-9a-f]{8}")


def temporary_path(path):
    """Where to write `path` before renaming it into place: beside it, under the one name
    `TEMPORARY` recognises (this process's PID and a random tag)."""
    folder, name = os.path.split(path)
    return os.path.join(folder, f".{name}.epsilon_resnet-tmp.{os.getpid()}.{secrets.token_hex(4)}")


def temporary_writer(name):
    """The PID of the writer whose temporary `name` is, or None when it is no temporary of ours."""
    found = TEMPORARY.fullmatch(name)
    return int(found["pid"]) if found else None


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
