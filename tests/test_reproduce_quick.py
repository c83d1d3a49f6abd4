"""benchmarks/reproduce_cifar10.py: the selection rule on hand-made numbers, the protocol's
bookkeeping with stand-in command lines (which runs, which ε goes on, skipping and resuming),
and (slow) `--quick` end to end through the real command lines."""
import importlib.util
import json
import os
import subprocess
import sys
import textwrap

import pytest
import yaml

SCRIPT = os.path.join(os.path.dirname(__file__), os.pardir, "benchmarks", "reproduce_cifar10.py")
spec = importlib.util.spec_from_file_location("reproduce_cifar10", SCRIPT)
repro = importlib.util.module_from_spec(spec)
spec.loader.exec_module(repro)

TARGETS = {"min_discarded_fraction": 0.2, "max_error_increase": 0.01}


def candidate(epsilon, errors, removed, lossless=True):
    return {"epsilon": epsilon, "error": repro.stats(errors), "removed": repro.stats(removed), "lossless": lossless}


def test_stats_are_mean_and_sample_sd():
    summary = repro.stats([0.19, 0.21, 0.20])
    assert summary["mean"] == pytest.approx(0.20)
    assert summary["sd"] == pytest.approx(0.01)  # sqrt((0.01² + 0.01² + 0) / 2)
    assert repro.stats([3])["sd"] is None


def test_rule_picks_the_eligible_epsilon_with_the_lowest_held_out_error():
    candidates = [candidate(7.0, [0.200, 0.202], [0, 1]),              # too few blocks (0.5 < 0.2 * 15)
                  candidate(7.5, [0.205, 0.209], [3, 4]),              # eligible, 0.207
                  candidate(8.0, [0.204, 0.206], [4, 4], lossless=False),  # lower error, not lossless
                  candidate(8.5, [0.203, 0.205], [5, 6]),              # eligible, 0.204: chosen
                  candidate(9.0, [0.215, 0.213], [7, 8])]              # beyond plain + 1 point (0.2115)
    epsilon, reason = repro.choose_epsilon(0.2015, candidates, 15, TARGETS)
    assert epsilon == 8.5 and reason.startswith("eligible")
    assert [c["eligible"] for c in candidates] == [False, True, False, True, False]
    assert [c["within_error"] for c in candidates] == [True, True, True, True, False]
    assert [c["enough_removed"] for c in candidates] == [False, True, True, True, True]


def test_rule_ties_go_to_the_larger_epsilon():
    candidates = [candidate(7.5, [0.21], [3]), candidate(8.0, [0.21], [4])]
    assert repro.choose_epsilon(0.205, candidates, 15, TARGETS)[0] == 8.0


def test_rule_without_an_eligible_epsilon():
    within = [candidate(7.0, [0.20], [1]), candidate(7.5, [0.205], [2]), candidate(8.0, [0.30], [9])]
    epsilon, reason = repro.choose_epsilon(0.20, within, 15, TARGETS)
    assert (epsilon, reason.startswith("no ε was eligible; of those within")) == (7.5, True)  # most blocks
    beyond = [candidate(7.0, [0.25], [1]), candidate(7.5, [0.24], [2])]
    assert repro.choose_epsilon(0.20, beyond, 15, TARGETS)[0] == 7.5  # lowest error


def test_lr_phases_from_a_curve():
    curves = {"epoch": [1, 2, 3, 4, 5, 6], "learning_rate": [0.1, 0.1, 0.01, 0.01, 0.01, 0.001]}
    assert repro.lr_phases(curves) == "0.1 for epochs 1–2, 0.01 for epochs 3–5, 0.001 for epoch 6"


# ---- the protocol with stand-in command lines ----------------------------------------------------
# Stand-ins for cifarEpsilonResnet.py, compressModel.py and cifarCompressedResnet.py that write
# the files the real ones write. The training stand-in's outcome per ε: (error added to the
# plain network's, blocks closed); ε = 3 closes 2 blocks but its compressed network scores
# differently from the gated one.
FAKE_TRAIN = textwrap.dedent('''
    import argparse, json, os, sys, yaml
    p = argparse.ArgumentParser(); p.add_argument("--config"); p.add_argument("-o"); p.add_argument("--data")
    a = p.parse_args()
    c = yaml.safe_load(open(a.config))
    eps, seed, holdout = c["model"]["epsilon"], c["train"]["seed"], (c["data"].get("options") or {}).get("holdout", 0)
    added, closed = {0.0: (0, 0), 1.0: (0.0, 0), 2.0: (0.005, 1), 3.0: (0.004, 2), 4.0: (0.03, 3)}[eps]
    path = os.path.join(f"train_log.{a.o}", "metrics.jsonl"); os.makedirs(os.path.dirname(path), exist_ok=True)
    done = sum(1 for _ in open(path)) if os.path.exists(path) else 0
    crash = os.environ.get("FAKE_CRASH", "")
    for epoch in range(done + 1, c["train"]["max_epoch"] + 1):
        gates = {f"res{s}.0/is_discarded": float(s <= closed) for s in (1, 2, 3)}
        error = 0.3 + 0.05 * (holdout > 0) + added + seed / 10000 - 0.01 * epoch
        with open(path, "a") as f:
            f.write(json.dumps({"epoch": epoch, "global_step": 10 * epoch, "val_error": error, "train_error": error,
                                "learning_rate": 0.1, "epsilon": eps, "discarded_cnt": float(closed), **gates}) + "\\n")
        if crash == f"{a.o}:{epoch}":
            sys.exit(3)
''')
FAKE_COMPRESS = textwrap.dedent('''
    import argparse, json, os, yaml
    p = argparse.ArgumentParser(); p.add_argument("--dir"); p.add_argument("--step"); p.add_argument("--data")
    a = p.parse_args()
    last = [json.loads(line) for line in open(os.path.join(a.dir, "metrics.jsonl"))][-1]
    blocks = [k.split("/")[0] for k, v in last.items() if k.endswith("/is_discarded") and v == 1.0]
    differs = last["epsilon"] == 3.0  # the evaluation adds 0.001: one removed gate opened on a batch
    cfg = {"discarded_blocks": blocks, "warnings": [],
           "flickering_blocks": [{"block": "res1.0", "closed_rate": 0.95, "max_abs": 3.2}] if differs else [],
           "check": {"max_abs_logit_difference": 0.0, "gated_error": last["val_error"],
                     "compressed_error": last["val_error"], "images": 10000,
                     "discarded_blocks_opened": blocks[:1] if differs else [], "kept_blocks_closed": []},
           "cost": {"full": {"params": 1000, "macs": 9000},
                    "compressed": {"params": 1000 - 100 * len(blocks), "macs": 9000 - 1000 * len(blocks)}},
           "epsilon": last["epsilon"], "error": last["val_error"]}
    yaml.safe_dump(cfg, open(os.path.join(a.dir, f"compressed_model_{a.step}.cfg"), "w"))
''')
FAKE_EVALUATE = textwrap.dedent('''
    import argparse, yaml
    p = argparse.ArgumentParser(); p.add_argument("--cfg"); p.add_argument("--cifar10", action="store_true")
    p.add_argument("--data"); a = p.parse_args()
    cfg = yaml.safe_load(open(a.cfg))
    print(f"Error: {cfg['error'] + (0.001 if cfg['epsilon'] == 3.0 else 0.0)}")
''')


@pytest.fixture
def fake_protocol(tmp_path, monkeypatch):
    """A protocol of ε 1-4 with stand-in command lines; returns a function running it -> (exit, results)."""
    for stage, text in (("train", FAKE_TRAIN), ("compress", FAKE_COMPRESS), ("evaluate", FAKE_EVALUATE)):
        (tmp_path / f"{stage}.py").write_text(text)
        monkeypatch.setitem(repro.SCRIPTS, stage, str(tmp_path / f"{stage}.py"))
    protocol = yaml.safe_load(open(repro.QUICK_PROTOCOL))
    protocol.update(overrides={"model.n": 1, "train.max_epoch": 3},
                    selection={"holdout": 100, "epsilons": [1.0, 2.0, 3.0, 4.0], "seeds": [1, 2]},
                    final={"seeds": [11, 12, 13]})
    (tmp_path / "protocol.yaml").write_text(yaml.safe_dump(protocol))
    (tmp_path / "data").mkdir()

    def run(crash=None):
        """crash "RUN:EPOCH": that run's training stops with an error after that epoch."""
        if crash:
            monkeypatch.setenv("FAKE_CRASH", crash)
        else:
            monkeypatch.delenv("FAKE_CRASH", raising=False)
        try:
            repro.main(["--protocol", str(tmp_path / "protocol.yaml"), "--data", str(tmp_path / "data"),
                        "--workdir", str(tmp_path / "work"), "--results", str(tmp_path / "results"), "--jobs", "2"])
        except SystemExit as exit_:
            return exit_.code, None
        with open(tmp_path / "results" / "cifar10_reproduction.json") as f:
            return 0, json.load(f)
    return run


def by_name(results):
    return {r["name"]: r for r in results["runs"]}


def test_protocol_chooses_on_held_out_data_and_trains_the_choice(fake_protocol, tmp_path):
    code, results = fake_protocol()
    assert code == 0
    selection = results["selection"]
    assert selection["chosen_epsilon"] == 2.0  # 1: no block; 3: not lossless; 4: +3 points
    assert [c["eligible"] for c in selection["candidates"]] == [False, True, False, False]
    runs = by_name(results)
    selected = [f"select-{k}-s{s}" for k in ("plain", "eps1", "eps2", "eps3", "eps4") for s in (1, 2)]
    assert sorted(runs) == sorted(selected + [f"final-{k}-s{s}" for k in ("plain", "eps2") for s in (11, 12, 13)])
    assert {r["split"] for r in runs.values() if r["phase"] == "select"} == {"holdout"}
    assert runs["select-eps2-s1"]["config"]["content"]["data"]["options"] == {"holdout": 100}
    assert not (runs["final-eps2-s11"]["config"]["content"]["data"].get("options") or {}).get("holdout")
    assert runs["final-eps2-s12"]["config"]["content"]["train"]["seed"] == 12
    assert runs["select-plain-s1"]["compression"] is None and runs["final-plain-s11"]["compression"] is not None
    assert all(r["training"]["this_invocation"] == "trained in this invocation" for r in runs.values())
    final = results["final"]["eps"]
    assert final["test_error"]["mean"] == pytest.approx(0.3 + 0.005 + 0.0012 - 0.03)
    assert final["removed"]["mean"] == 1 and final["params"]["compressed"]["mean"] == 900
    assert [t["met"] for t in results["targets"]] == [True] * 4  # blocks, error, lossless, CPU budget
    assert open(tmp_path / "results" / "cifar10_reproduction.md").read() == repro.render_markdown(results)
    assert all(os.path.isfile(tmp_path / "results" / path) for path in results["figures"]["files"])
    assert "**Chosen: ε = 2**" in repro.render_markdown(results)
    opened = runs["select-eps3-s1"]["compression"]
    assert opened["removed_but_opened"] == ["res1.0"] and opened["flickering"] == [{"block": "res1.0",
                                                                                   "closed_rate": 0.95}]
    assert ("- select-eps3-s1: removed res1.0 opened on some held-out batch (closed on this share of the training "
            "batches compressModel.py read: res1.0 95%)") in repro.render_markdown(results)


def test_rerun_resumes_the_unfinished_and_skips_the_finished(fake_protocol, tmp_path):
    code, _ = fake_protocol(crash="final-plain-s12:2")
    assert code is not None and "final-plain-s12" in str(code)
    ledger = json.loads((tmp_path / "work" / "ledger.json").read_text())
    assert ledger["final-plain-s12"]["sessions"][0]["exit_code"] == 3
    code, results = fake_protocol()
    runs = by_name(results)
    assert runs["final-plain-s12"]["training"]["this_invocation"] == "resumed from epoch 2 in this invocation"
    assert [s["to_epoch"] for s in runs["final-plain-s12"]["training"]["sessions"]] == [2, 3]
    assert runs["final-plain-s11"]["training"]["this_invocation"] == "found finished"
    code, results = fake_protocol()
    assert {r["training"]["this_invocation"] for r in results["runs"]} == {"found finished"}
    assert json.loads((tmp_path / "work" / "ledger.json").read_text())["final-eps2-s11"]["sessions"] == \
        ledger["final-eps2-s11"]["sessions"]  # nothing ran again


def test_a_changed_protocol_does_not_reuse_old_runs(fake_protocol, tmp_path):
    assert fake_protocol()[0] == 0
    path, config = tmp_path / "protocol.yaml", tmp_path / "work" / "configs" / "select-plain-s1.yaml"
    trained_from = config.read_text()
    protocol = yaml.safe_load(path.read_text())
    protocol["overrides"]["train.max_epoch"] = 4
    path.write_text(yaml.safe_dump(protocol))
    code, _ = fake_protocol()
    assert "remove the folder or use another --workdir" in str(code)
    assert config.read_text() == trained_from  # the config the run was trained from stays


def test_render_rewrites_the_markdown_from_the_json(fake_protocol, tmp_path):
    fake_protocol()
    md = tmp_path / "results" / "cifar10_reproduction.md"
    text = md.read_text()
    md.write_text("edited by hand")
    repro.main(["--render", str(tmp_path / "results" / "cifar10_reproduction.json")])
    assert md.read_text() == text


def test_readme_splice_replaces_only_the_marked_section(fake_protocol, tmp_path):
    fake_protocol()
    readme = tmp_path / "README.md"
    readme.write_text(f"# title\n\n{repro.README_BEGIN}\nold table\n{repro.README_END}\n\n## next\n")
    json_path = tmp_path / "results" / "cifar10_reproduction.json"
    repro.main(["--render", str(json_path), "--readme", str(readme)])
    markdown = (tmp_path / "results" / "cifar10_reproduction.md").read_text()
    assert readme.read_text() == f"# title\n\n{repro.README_BEGIN}\n{markdown}{repro.README_END}\n\n## next\n"
    readme.write_text("# no markers\n")
    with pytest.raises(SystemExit, match="no section between"):
        repro.main(["--render", str(json_path), "--readme", str(readme)])
    assert readme.read_text() == "# no markers\n"


def test_readme_section_is_the_committed_results_rendered():
    """The README's reproduction is the Markdown of benchmarks/results/cifar10_reproduction.json, unedited."""
    with open(os.path.join(repro.REPO, "benchmarks", "results", f"{repro.RESULTS_NAME}.json"), encoding="utf-8") as f:
        results = json.load(f)
    with open(os.path.join(repro.REPO, "README.md"), encoding="utf-8") as f:
        readme = f.read()
    start, end = repro.readme_section(readme, "README.md")
    assert readme[start:end] == repro.render_markdown(results)
    for path in results["figures"]["files"]:
        assert os.path.isfile(os.path.join(repro.REPO, path)), path


# ---- the real command lines -------------------------------------------------------------------------
def check_structure(results):
    """The results file holds every run with what the README's table and figures are made from."""
    assert results["schema"] == repro.SCHEMA and results["selection_rule"] == repro.SELECTION_RULE
    for key in ("commit", "dirty"):
        assert key in results["invocation"]["git"]
    assert {"cores", "cpu_model"} <= set(results["invocation"]["machine"])
    assert results["data"]["files_sha256"] and "JPEG (quality 75)" in results["data"]["provenance"]
    for run in results["runs"]:
        assert len(run["config"]["sha256"]) == 64 and run["config"]["content"]["train"]["seed"] == run["seed"]
        assert run["split"] == ("holdout" if run["phase"] == "select" else "full")
        assert run["training"]["cpu_minutes"] > 0 and run["training"]["sessions"]
        assert set(run["curves"]) >= {"epoch", "val_error", "train_error", "discarded_cnt", "learning_rate"}
        assert len(run["curves"]["epoch"]) == run["epochs"] == 1 and run["blocks"] == len(run["gates"]) == 3
        if run["compression"] is not None:
            c = run["compression"]
            assert {"discarded_blocks", "params", "macs", "check", "compressed_error", "lossless",
                    "removed_but_opened", "kept_but_closed", "flickering"} <= set(c)
            assert c["params"]["compressed"] <= c["params"]["full"] and c["macs"]["compressed"] <= c["macs"]["full"]
    assert len(results["targets"]) == 4 and all(isinstance(t["met"], bool) for t in results["targets"])


@pytest.mark.slow
def test_quick_mode_runs_the_whole_protocol(tmp_path):
    work, out = tmp_path / "work", tmp_path / "results"
    command = [sys.executable, os.path.join(repro.REPO, "benchmarks", "reproduce_cifar10.py"), "--quick",
               "--workdir", str(work), "--results", str(out)]
    run = subprocess.run(command, capture_output=True, text=True, timeout=1800)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    results = json.loads((out / "cifar10_reproduction.json").read_text())
    check_structure(results)
    names = {r["name"] for r in results["runs"]}
    chosen = results["selection"]["chosen_epsilon"]
    assert names == {"select-plain-s1", "select-eps2-s1", "select-eps1000-s1", "final-plain-s11",
                     "final-plain-s12", f"final-eps{chosen:g}-s11", f"final-eps{chosen:g}-s12"}
    closed = by_name(results)["select-eps1000-s1"]["compression"]
    assert closed["removed"] == 3 and closed["lossless"]  # ε = 1000 closes every gate; compression keeps the error
    md = (out / "cifar10_reproduction.md").read_text()
    assert md == repro.render_markdown(results)
    assert all(os.path.isfile(out / path) for path in results["figures"]["files"])
    again = subprocess.run(command, capture_output=True, text=True, timeout=600)  # everything found finished
    assert again.returncode == 0, again.stderr[-3000:]
    results = json.loads((out / "cifar10_reproduction.json").read_text())
    assert {r["training"]["this_invocation"] for r in results["runs"]} == {"found finished"}
