"""The run folder's formats round-trip through their one owner, and the modules that own them
(and those the reproduction and plots read runs with) load without TensorFlow."""
import os
import subprocess
import sys

import pytest

from epsilon_resnet import atomic, compressed_cfg, run_folder, structures
from epsilon_resnet.compressed_cfg import CompressedSpec
from epsilon_resnet.errors import RunError
from epsilon_resnet.structures import cifar_resnet

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_metrics_records_round_trip_and_the_last_record_of_an_epoch_wins(tmp_path):
    path = str(tmp_path / run_folder.METRICS_FILE)
    first = {"epoch": 1, "global_step": 10, "val_error": 0.5,
             run_folder.block_metric("res1.0", structures.IS_DISCARDED): 0.25}
    again = {**first, "val_error": 0.4}  # epoch 1 once more, after a resume
    second = {"epoch": 2, "global_step": 20, run_folder.block_metric("res1.0", structures.IS_DISCARDED): 1.0,
              run_folder.block_metric("res1.1", structures.IS_DISCARDED): 0.0}
    for record in (first, again, second):
        run_folder.append_metrics(path, record)
    assert run_folder.read_metrics(str(tmp_path)) == [again, second]
    with open(path) as f:
        assert all(line.startswith(run_folder.RECORD_START) for line in f)
    assert run_folder.block_metrics(second, structures.IS_DISCARDED) == {"res1.0": 1.0, "res1.1": 0.0}


def test_an_evaluation_record_round_trips_and_is_never_overwritten(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    record = {"cfg": "/x/compressed_model_3.cfg", "val_error": 0.25, "val_cost": 1.5}
    path = run_folder.write_evaluation("scored", record)
    assert path == os.path.join("train_log.scored", run_folder.EVALUATION_FILE)
    assert run_folder.read_evaluation("train_log.scored") == record
    with pytest.raises(RunError, match="exists already"):
        run_folder.write_evaluation("scored", {"val_error": 0.0})
    assert run_folder.read_evaluation("train_log.scored") == record


def spec(**record):
    return CompressedSpec("cifar10", cifar_resnet(2).compressed(["res1.1", "res2.0"]), 10,
                          run_folder.compressed_name(12), data_dir="/data", data_options={"holdout": 500},
                          eval_batch_size=8, **record)


def test_a_compressed_spec_round_trips_through_its_cfg(tmp_path):
    written = spec(source_checkpoint="model-12", step=12, epoch=2, epsilon=2.5, decision="closed at inference",
                   flickering_blocks=({"block": "res3.1", "closed_rate": 0.4, "closed_at_inference": False},),
                   recorded_errors={"val_error": 0.52}, check={"images": 12, "logits_equal": True},
                   warnings=("res3.1 flickered",), cost={"full": {"params": 9, "macs": 90}})
    path = str(tmp_path / "compressed_model_12.cfg")
    compressed_cfg.write(path, written)
    read = compressed_cfg.read(path)
    assert read.path == path and read == CompressedSpec(**{**written.__dict__, "path": path})
    assert read.weights_path == str(tmp_path / "compressed_model_12")
    assert read.discarded_blocks == ("res1.1", "res2.0") and len(read.architecture.all_block_names()) == 6
    with pytest.raises(RunError, match="exists already"):
        compressed_cfg.write(path, spec())


def test_a_cfg_without_a_record_reads_with_an_empty_one(tmp_path):
    path = str(tmp_path / "bare.cfg")
    compressed_cfg.write(path, spec())
    read = compressed_cfg.read(path)
    assert (read.flickering_blocks, read.warnings, read.check, read.step) == ((), (), {}, None)
    assert read.discarded_blocks == ("res1.1", "res2.0")  # the architecture's, not the record's


def test_the_format_owners_import_without_tensorflow():
    code = ("import sys; from epsilon_resnet import run_folder, compressed_cfg, config, structures; "
            "import reproduction.results, reproduction.report; "
            "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules, sorted(sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]


def ended_pid():
    """The PID of a process that has ended."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def temporary(folder, name, pid):
    """A temporary as the project names it, written by process `pid`."""
    return os.path.join(folder, f".{name}.epsilon_resnet-tmp.{pid}.0123abcd")


def test_the_sweep_deletes_only_temporaries_of_ended_writers_inside_the_run_folder(tmp_path):
    run_dir, outside = tmp_path / "train_log.x", tmp_path / "elsewhere"
    run_dir.mkdir()
    outside.mkdir()
    dead = ended_pid()
    users = ["notes.tmp-2024", ".draft.tmp-abc", "model-3.index.tmp-12", f"x.epsilon_resnet-tmp.{dead}.0123abcd"]
    for name in users:
        (run_dir / name).write_text("the user's")
    stale_file, stale_folder = temporary(run_dir, "config.yaml", dead), temporary(run_dir, "model-6", dead)
    live = temporary(run_dir, "metrics.jsonl", os.getpid())
    open(stale_file, "w").close()
    os.mkdir(stale_folder)
    open(os.path.join(stale_folder, "model-6.index"), "w").close()
    open(live, "w").close()
    # kept/ as a symlink to a folder outside, holding a temporary of an ended writer: not followed.
    outside_temporary = temporary(outside, "model-3", dead)
    open(outside_temporary, "w").close()
    os.symlink(outside, run_dir / run_folder.KEPT_FOLDER)
    # A temporary's name on a symlink to a folder: left alone, as is the folder.
    link = temporary(run_dir, "model-9", dead)
    os.symlink(outside, link)

    with run_folder.locked(str(run_dir), "training"):
        pass
    left = set(os.listdir(run_dir))
    assert set(users) <= left and os.path.basename(live) in left and os.path.islink(link)
    assert not os.path.lexists(stale_file) and not os.path.lexists(stale_folder)
    assert os.path.exists(outside_temporary)


def test_every_atomic_writer_writes_under_the_one_temporary_name(tmp_path, monkeypatch):
    renamed = []
    replace = os.replace
    monkeypatch.setattr(os, "replace", lambda src, dst: (renamed.append(os.path.basename(src)), replace(src, dst)))
    run_folder.write_new_file(str(tmp_path / "a.yaml"), "a: 1\n")
    atomic.write_atomic(str(tmp_path / "metrics.jsonl"), b"{}\n")
    compressed_cfg.write(str(tmp_path / "compressed_model_3.cfg"), spec())
    assert len(renamed) == 3
    assert all(atomic.TEMPORARY.fullmatch(name)["pid"] == str(os.getpid()) for name in renamed), renamed
