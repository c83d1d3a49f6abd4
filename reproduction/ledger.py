"""<workdir>/ledger.json: per run, its config's hash, its training sessions and the CPU time of
its other stages; and the rule that a run folder belongs to one config."""
import json
import os

from epsilon_resnet.atomic import write_atomic
from epsilon_resnet.errors import RunError
from reproduction import kept, read_text


class Ledger:
    def __init__(self, workdir):
        self.path = os.path.join(workdir, "ledger.json")
        self.entries = json.loads(read_text(self.path)) if os.path.isfile(self.path) else {}

    def entry(self, name):
        return self.entries.setdefault(name, {"config_sha256": None, "sessions": [], "stages": {}})

    def save(self):
        write_atomic(self.path, json.dumps(self.entries, indent=1, ensure_ascii=False) + "\n")


def claim(run, ledger):
    """Write the run's config file, unless its folder or its kept network was trained from another
    config than the one the protocol makes now: that is refused, and what it was trained from is left alone."""
    if os.path.isfile(os.path.join(run.kept_dir, kept.RUN_FILE)) and not kept.is_done(run.kept_dir, run.sha256):
        raise RunError(f"the kept network {run.kept_dir} was trained from another config than the one the protocol "
                       f"now makes for it (SHA-256 {run.sha256[:12]}…): remove it or use another --results")
    recorded = ledger.entries.get(run.name, {}).get("config_sha256")
    if os.path.isdir(run.run_dir) and recorded != run.sha256:
        why = "no record of it in ledger.json" if recorded is None else f"its config had SHA-256 {recorded[:12]}…"
        raise RunError(f"{run.run_dir} exists but {why}, and the protocol now makes another config for it "
                       f"(SHA-256 {run.sha256[:12]}…): remove the folder or use another --workdir")
    if not os.path.isfile(run.config_path) or read_text(run.config_path) != run.text:
        write_atomic(run.config_path, run.text)
