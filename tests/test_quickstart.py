"""The README's quickstart, exactly as written there: train the demo, compress it, evaluate the
compressed network, on a fresh folder, and check what the README says the user will see."""
import json
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
START, END = "<!-- quickstart: start -->", "<!-- quickstart: end -->"


def quickstart_commands():
    """The shell commands of the README's quickstart block, one per line, comments dropped."""
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        text = f.read()
    block = text[text.index(START) + len(START):text.index(END)]
    code = block.split("```bash", 1)[1].split("```", 1)[0]
    return [line.split("#", 1)[0].strip() for line in code.splitlines() if line.split("#", 1)[0].strip()]


@pytest.mark.slow
def test_the_readme_quickstart_removes_blocks_and_keeps_the_gated_networks_error(tmp_path):
    commands = quickstart_commands()
    assert [c.split()[1] for c in commands] == ["scripts/cifarEpsilonResnet.py", "scripts/compressModel.py",
                                                "scripts/cifarCompressedResnet.py"]
    for name in ("scripts", "configs", "data"):  # a fresh working folder with the repository's files
        os.symlink(os.path.join(ROOT, name), tmp_path / name)
    env = {key: value for key, value in os.environ.items() if not key.startswith("TF_CPP")}
    outputs = []
    for command in commands:
        done = subprocess.run(command.replace("python", sys.executable, 1), shell=True, cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        for noise in ("cuInit", "oneDNN", "absl::InitializeLog", "cuda drivers"):  # a quiet console
            assert noise not in done.stdout + done.stderr
        outputs.append(done.stdout)

    compressed = outputs[1]
    removed = re.search(r"discarded (\d+) of (\d+) blocks", compressed)
    assert removed and int(removed.group(1)) >= 1
    params = re.search(r"parameters ([\d,]+) -> ([\d,]+)", compressed)
    assert int(params.group(2).replace(",", "")) < int(params.group(1).replace(",", ""))
    check = re.search(r"logits (equal|DIFFER) .*error gated (\S+), compressed (\S+)", compressed)
    assert check.group(1) == "equal" and check.group(2) == check.group(3)
    assert re.search(r"the original's per-batch gates at batch 100: error (\S+)", compressed)
    # The compressed network scores what the gated network scored at that step: the same images wrong.
    evaluated = float(re.search(r"Error: (\S+)", outputs[2]).group(1))
    last = json.loads(open(tmp_path / "train_log.demo" / "metrics.jsonl").read().splitlines()[-1])
    assert last["global_step"] == 120 and evaluated == last["val_error"]
    assert float(check.group(3)) == pytest.approx(evaluated, abs=5e-5)
