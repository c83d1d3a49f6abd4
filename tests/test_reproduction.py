"""The reproduction package: the selection rule on hand-made numbers, the protocol's
bookkeeping with stand-in command lines (which runs, which ε goes on, skipping and resuming),
and (slow) `--quick` end to end through the real command lines."""
import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest
import yaml

from reproduction import REPO, RESULTS_DIR, RESULTS_NAME, scheduler
from reproduction import __main__ as cli
from reproduction.__main__ import SAMPLE_DATA
from reproduction.protocol import QUICK_PROTOCOL, Targets, load_protocol
from reproduction.report import (README_BEGIN, README_END, README_MARKERS, count, lr_phases, mean_sd, millions, pct,
                                 points, render_markdown)
from reproduction.results import SCHEMA
from reproduction.selection import SELECTION_RULE, choose_epsilon, stats
from epsilon_resnet.errors import ConfigError
from epsilon_resnet.provenance import readme_section

TARGETS = Targets(min_discarded_fraction=0.2, max_error_increase=0.01)


def candidate(epsilon, errors, removed, lossless=True):
    return {"epsilon": epsilon, "error": stats(errors), "removed": stats(removed), "lossless": lossless}


def test_stats_are_mean_and_sample_sd():
    summary = stats([0.19, 0.21, 0.20])
    assert summary["mean"] == pytest.approx(0.20)
    assert summary["sd"] == pytest.approx(0.01)  # sqrt((0.01² + 0.01² + 0) / 2)
    assert stats([3])["sd"] is None


def test_rule_picks_the_eligible_epsilon_with_the_lowest_held_out_error():
    candidates = [candidate(7.0, [0.200, 0.202], [0, 1]),              # too few blocks (0.5 < 0.2 * 15)
                  candidate(7.5, [0.205, 0.209], [3, 4]),              # eligible, 0.207
                  candidate(8.0, [0.204, 0.206], [4, 4], lossless=False),  # lower error, not lossless
                  candidate(8.5, [0.203, 0.205], [5, 6]),              # eligible, 0.204: chosen
                  candidate(9.0, [0.215, 0.213], [7, 8])]              # beyond plain + 1 point (0.2115)
    epsilon, reason = choose_epsilon(0.2015, candidates, 15, TARGETS)
    assert epsilon == 8.5 and reason.startswith("eligible")
    assert [c["eligible"] for c in candidates] == [False, True, False, True, False]
    assert [c["within_error"] for c in candidates] == [True, True, True, True, False]
    assert [c["enough_removed"] for c in candidates] == [False, True, True, True, True]


def test_rule_ties_go_to_the_larger_epsilon():
    candidates = [candidate(7.5, [0.21], [3]), candidate(8.0, [0.21], [4])]
    assert choose_epsilon(0.205, candidates, 15, TARGETS)[0] == 8.0


def test_rule_without_an_eligible_epsilon():
    within = [candidate(7.0, [0.20], [1]), candidate(7.5, [0.205], [2]), candidate(8.0, [0.30], [9])]
    epsilon, reason = choose_epsilon(0.20, within, 15, TARGETS)
    assert (epsilon, reason.startswith("no ε was eligible; of those within")) == (7.5, True)  # most blocks
    beyond = [candidate(7.0, [0.25], [1]), candidate(7.5, [0.24], [2])]
    assert choose_epsilon(0.20, beyond, 15, TARGETS)[0] == 7.5  # lowest error


def test_rescoring_names_every_number_that_differs():
    from reproduction.score import differences
    errors = {"val_error": 0.25, "val_error_per_batch": 0.5}
    recorded = {"error": 0.25, "error_per_batch": 0.5, "scores": {"batch_sizes": {"1": errors, "128": errors}},
                "compression": {"compressed_error": 0.25, "discarded_blocks": ["res1.0"]}}
    fresh = {"batch_sizes": {"1": dict(errors), "128": dict(errors)},
             "compression": {"images": 100, "compressed_error": 0.25, "logits_equal": True,
                             "max_abs_logit_difference": 0.0, "discarded_blocks": ["res1.0"]}}
    assert differences(recorded, fresh) == []
    fresh["batch_sizes"]["128"]["val_error"] = 0.254  # still 25 of 100 images
    assert differences(recorded, fresh) == []
    fresh["batch_sizes"]["1"]["val_error_per_batch"] = 0.51  # one image more
    fresh["compression"].update(logits_equal=False, max_abs_logit_difference=0.5, discarded_blocks=[])
    assert differences(recorded, fresh) == [
        "batch 1 val_error_per_batch: recorded 0.5000, re-scored 0.5100",
        "the re-made compressed network's logits differ by 0.5",
        "blocks removed: recorded ['res1.0'], re-made []"]


def test_lr_phases_from_a_curve():
    curves = {"epoch": [1, 2, 3, 4, 5, 6], "learning_rate": [0.1, 0.1, 0.01, 0.01, 0.01, 0.001]}
    assert lr_phases(curves) == "0.1 for epochs 1–2, 0.01 for epochs 3–5, 0.001 for epoch 6"


# ---- the protocol with stand-in command lines ----------------------------------------------------
# Stand-ins for cifarEpsilonResnet.py, compressModel.py and cifarCompressedResnet.py that write
# the files the real ones write. The training stand-in's outcome per ε: (error added to the
# plain network's, blocks closed); ε = 3 closes 2 blocks but its compressed network scores
# differently from the gated one (its logits differ).
FAKE_TRAIN = textwrap.dedent('''
    import argparse, os, sys, yaml
    from epsilon_resnet import run_folder, structures
    p = argparse.ArgumentParser(); p.add_argument("--config"); p.add_argument("-o"); p.add_argument("--data")
    a = p.parse_args()
    c = yaml.safe_load(open(a.config))
    eps, seed, holdout = c["model"]["epsilon"], c["train"]["seed"], (c["data"].get("options") or {}).get("holdout", 0)
    added, closed = {0.0: (0, 0), 1.0: (0.0, 0), 2.0: (0.005, 1), 3.0: (0.004, 2), 4.0: (0.03, 3)}[eps]
    run_dir = run_folder.run_dir_of(a.o)
    os.makedirs(run_dir, exist_ok=True)
    with open(os.path.join(run_dir, run_folder.CONFIG_FILE), "w") as f:
        f.write(open(a.config).read())
    done = len(run_folder.read_metrics(run_dir)) if os.path.exists(os.path.join(run_dir, run_folder.METRICS_FILE)) else 0
    crash = os.environ.get("FAKE_CRASH", "")
    for epoch in range(done + 1, c["train"]["max_epoch"] + 1):
        gates = {run_folder.block_metric(f"res{s}.0", structures.IS_DISCARDED): float(s <= closed) for s in (1, 2, 3)}
        error = 0.3 + 0.05 * (holdout > 0) + added + seed / 10000 - 0.01 * epoch
        run_folder.append_metrics(os.path.join(run_dir, run_folder.METRICS_FILE), {
            "epoch": epoch, "global_step": 10 * epoch, "val_error": error, "val_error_per_batch": error + 0.002,
            "train_error": error, "learning_rate": 0.1,
            "epsilon": eps, "discarded_cnt": float(closed), **gates})
        if crash == f"{a.o}:{epoch}":
            sys.exit(3)
''')
FAKE_COMPRESS = textwrap.dedent('''
    import argparse, os
    from epsilon_resnet import compressed_cfg, run_folder, structures
    from epsilon_resnet.compressed_cfg import CompressedSpec
    from epsilon_resnet.structures import cifar_resnet
    p = argparse.ArgumentParser(); p.add_argument("--dir"); p.add_argument("--step", type=int); p.add_argument("--data")
    a = p.parse_args()
    last = run_folder.read_metrics(a.dir)[-1]
    closed = run_folder.block_metrics(last, structures.IS_DISCARDED)
    blocks = [block for block, value in closed.items() if value == 1.0]
    flickers = last["epsilon"] == 3.0  # and its evaluation scores 0.001 worse than the gated network
    kept = cifar_resnet(1).compressed(blocks)
    spec = CompressedSpec(
        "cifar10", kept, 10, run_folder.compressed_name(a.step), step=a.step, epsilon=last["epsilon"],
        flickering_blocks=({"block": "res1.0", "closed_rate": 0.95, "closed_at_inference": True},) if flickers else (),
        check={"images": 10000, "max_abs_logit_difference": 0.5 if flickers else 0.0, "logit_tolerance": 1e-4,
               "logits_equal": not flickers, "gated_error": last["val_error"],
               "compressed_error": last["val_error"], "per_batch_error": last["val_error_per_batch"],
               "batch_size": 128},
        cost={"full": {"params": 1000, "macs": 9000},
              "compressed": {"params": 1000 - 100 * len(blocks), "macs": 9000 - 1000 * len(blocks)}})
    compressed_cfg.write(os.path.join(a.dir, run_folder.compressed_name(a.step) + ".cfg"), spec)
''')
FAKE_EVALUATE = textwrap.dedent('''
    import argparse
    from epsilon_resnet import compressed_cfg, run_folder
    p = argparse.ArgumentParser(); p.add_argument("--cfg"); p.add_argument("--cifar10", action="store_true")
    p.add_argument("--data"); p.add_argument("-o"); a = p.parse_args()
    spec = compressed_cfg.read(a.cfg)
    error = spec.check["compressed_error"] + (0.001 if spec.epsilon == 3.0 else 0.0)
    run_folder.write_evaluation(a.o, {"cfg": a.cfg, "val_error": error})
''')
FAKE_KEEP = textwrap.dedent('''
    import argparse, json, os
    from epsilon_resnet import run_folder
    from reproduction import kept
    p = argparse.ArgumentParser(); p.add_argument("--run-dir"); p.add_argument("--step", type=int)
    p.add_argument("--out"); p.add_argument("--data"); a = p.parse_args()
    kept.copy_run_files(a.run_dir, a.step, a.out)
    last = run_folder.read_metrics(a.out)[-1]
    errors = {str(size): {"val_error": last["val_error"], "val_error_per_batch": last["val_error_per_batch"] + 0.1 / size}
              for size in kept.BATCH_SIZES}  # a smaller batch: a worse per-batch error
    with open(os.path.join(a.out, kept.SCORES_FILE), "w") as f:
        json.dump({"step": a.step, "batch_sizes": errors}, f)
''')


@pytest.fixture
def fake_protocol(tmp_path, monkeypatch):
    """A protocol of ε 1-4 with stand-in command lines; returns a function running it -> (exit, results)."""
    for stage, text in (("train", FAKE_TRAIN), ("compress", FAKE_COMPRESS), ("evaluate", FAKE_EVALUATE)):
        (tmp_path / f"{stage}.py").write_text(text)
        monkeypatch.setitem(scheduler.SCRIPTS, stage, str(tmp_path / f"{stage}.py"))
    (tmp_path / "keep.py").write_text(FAKE_KEEP)
    monkeypatch.setattr(scheduler, "KEEP", [str(tmp_path / "keep.py")])
    protocol = yaml.safe_load(open(QUICK_PROTOCOL))
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
            cli.main(["--protocol", str(tmp_path / "protocol.yaml"), "--data", str(tmp_path / "data"),
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
    assert all(os.path.isfile(tmp_path / "results" / "networks" / name / "run.json") for name in runs)
    assert all(r["training"]["this_invocation"] == "trained in this invocation" for r in runs.values())
    final = results["final"]["eps"]
    assert final["test_error"]["mean"] == pytest.approx(0.3 + 0.005 + 0.0012 - 0.03)
    assert final["removed"]["mean"] == 1 and final["params"]["compressed"]["mean"] == 900
    assert [t["met"] for t in results["targets"]] == [True] * 4  # blocks, error, lossless, CPU budget
    assert open(tmp_path / "results" / "cifar10_reproduction.md").read() == render_markdown(results)
    assert all(os.path.isfile(tmp_path / "results" / path) for path in results["figures"]["files"])
    markdown = render_markdown(results)
    assert "**Chosen: ε = 2**" in markdown
    per_batch = final["test_error_per_batch"]["mean"]
    assert per_batch == pytest.approx(final["test_error"]["mean"] + 0.002)  # both semantics, side by side
    assert f"| {final['test_error']['mean']:.2%} ± 0.01 | {per_batch:.2%} ± 0.01 |" in markdown
    sizes = final["batch_sizes"]
    assert [sizes[s]["val_error_per_batch"]["mean"] - per_batch for s in ("1", "10", "128")] == pytest.approx(
        [0.1, 0.01, 0.1 / 128])  # the kept networks' scores at each evaluation batch size
    assert f"| per batch | {per_batch + 0.1:.2%} ± 0.01 | {per_batch + 0.01:.2%} ± 0.01 |" in markdown
    assert "max |logit difference| 0, tolerance 0.0001" in results["targets"][2]["measured"]
    assert ("logits differ from the gated network's in select-eps3-s1, select-eps3-s2 (over the runs: "
            "max |logit difference|") in markdown
    row = next(line for line in markdown.splitlines() if line.startswith("| final-eps2-s11 |"))
    compressed = runs["final-eps2-s11"]["compression"]
    assert f"| {count(compressed['params']['compressed'])} | {millions(compressed['macs']['compressed'])} |" in row
    flickered = runs["select-eps3-s1"]["compression"]
    assert not flickered["lossless"] and flickered["flickering"] == [{"block": "res1.0", "closed_rate": 0.95}]
    assert flickered["compressed_error"] == pytest.approx(runs["select-eps3-s1"]["error"] + 0.001)


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
    assert "use another --results" in str(code)  # its kept network belongs to the old config
    assert config.read_text() == trained_from  # the config the run was trained from stays


def test_render_rewrites_the_markdown_from_the_json(fake_protocol, tmp_path):
    fake_protocol()
    md = tmp_path / "results" / "cifar10_reproduction.md"
    text = md.read_text()
    md.write_text("edited by hand")
    cli.main(["--render", str(tmp_path / "results" / "cifar10_reproduction.json")])
    assert md.read_text() == text


def test_doc_splice_replaces_only_the_marked_section(fake_protocol, tmp_path):
    fake_protocol()
    page = tmp_path / "reproduction.md"
    page.write_text(f"# title\n\n{README_BEGIN}\nold table\n{README_END}\n\n## next\n")
    json_path = tmp_path / "results" / "cifar10_reproduction.json"
    cli.main(["--render", str(json_path), "--doc", str(page)])
    markdown = render_markdown(json.loads(json_path.read_text()), str(tmp_path))
    assert page.read_text() == f"# title\n\n{README_BEGIN}\n{markdown}{README_END}\n\n## next\n"
    page.write_text("# no markers\n")
    with pytest.raises(SystemExit, match="no section between"):
        cli.main(["--render", str(json_path), "--doc", str(page)])
    assert page.read_text() == "# no markers\n"


def committed(*path):
    with open(os.path.join(REPO, *path), encoding="utf-8") as f:
        return json.load(f) if path[-1].endswith(".json") else f.read()


def test_doc_section_is_the_committed_results_rendered():
    """docs/reproduction.md's report is the Markdown of reproduction/results/cifar10_reproduction.json, unedited."""
    results, page = committed(RESULTS_DIR, f"{RESULTS_NAME}.json"), committed("docs", "reproduction.md")
    start, end = readme_section(page, "docs/reproduction.md", README_MARKERS)
    assert page[start:end] == render_markdown(results, os.path.join(REPO, "docs"))
    for path in results["figures"]["files"]:
        assert os.path.isfile(os.path.join(REPO, path)), path


def test_reading_quotes_the_committed_results():
    """Every number of docs/reproduction.md's hand-written reading, made from the results files."""
    page = committed("docs", "reproduction.md")
    reading = " ".join(page[page.index("## Reading the reproduction"):page.index("## Re-making the reproduction")].split())
    results, v1 = committed(RESULTS_DIR, f"{RESULTS_NAME}.json"), committed(RESULTS_DIR, "v1", f"{RESULTS_NAME}.json")
    eps, plain, selection = results["final"]["eps"], results["final"]["plain"], results["selection"]
    chosen = next(c for c in selection["candidates"] if c["epsilon"] == selection["chosen_epsilon"])
    others_removed = [f"{c['removed']['mean']:g}" for c in selection["candidates"] if c is not chosen]
    finals = [r for r in results["runs"] if r["phase"] == "final" and r["kind"] == "eps"]
    worst = max(finals, key=lambda r: r["error_per_batch"] - r["error"])
    kept = [b for b in worst["gates"] if b not in worst["compression"]["discarded_blocks"]]
    nearest = max(kept, key=lambda b: worst["gates"][b][-1])
    minutes = [r["training"]["cpu_minutes"] for r in results["runs"]]
    sizes = eps["batch_sizes"]
    v1_selection, v1_final = v1["selection"], v1["final"]
    v1_chosen = next(c for c in v1_selection["candidates"] if c["epsilon"] == v1_selection["chosen_epsilon"])

    def error(summary):
        return mean_sd(summary, pct, points)

    quoted = [
        f"{error(eps['test_error'])} against the plain network's {error(plain['test_error'])}, "
        f"+{points(eps['test_error']['mean'] - plain['test_error']['mean'])} points",
        f"{eps['removed']['mean']:.2f} of {eps['blocks']} blocks ({eps['removed']['mean'] / eps['blocks']:.1%})",
        f"its selection run removed {chosen['removed']['mean']:g} blocks, the three final seeds "
        f"{', '.join(str(v) for v in eps['removed']['values'][:-1])} and {eps['removed']['values'][-1]}",
        f"({' and '.join(others_removed)} blocks on held-out data)",
        f"{chosen['error']['mean']:.2%} against {selection['plain']['error']['mean']:.2%}, "
        f"+{points(chosen['error']['mean'] - selection['plain']['error']['mean'])} points",
        f"span {min(plain['test_error']['values']):.2%} to {max(plain['test_error']['values']):.2%}",
        f"{points(v1_selection['plain']['error']['mean'] - v1_chosen['error']['mean'])} points better than plain, "
        f"then {points(v1_final['eps']['test_error']['mean'] - v1_final['plain']['test_error']['mean'])} points worse",
        f"equalled it in {v1_final['eps']['lossless_runs']} of {len(v1_final['eps']['runs'])} runs",
        f"max |logit difference| {eps['logit_check']['max_abs_logit_difference']:g}",
        f"({min(minutes):.1f} to {max(minutes):.1f} CPU-minutes a run)",
        f"took {sum(minutes):.0f} CPU-minutes",
        f"give {sizes['128']['val_error']['mean']:.2%} at every evaluation batch size",
        "{:.2%} at batch 128, {:.2%} at 10 and {:.2%} at 1".format(
            *(sizes[size]["val_error_per_batch"]["mean"] for size in ("128", "10", "1"))),
        f"({worst['name']}) scores {worst['error_per_batch']:.2%} per batch against {worst['error']:.2%}",
        f"block {nearest} ends training with a moving max|F| of {worst['responses'][nearest][-1]:.2f}, just above "
        f"ε = {worst['epsilon']:g}, and a moving average of is_discarded of {worst['gates'][nearest][-1]:.2f}",
    ]
    assert len({sizes[s]["val_error"]["mean"] for s in sizes}) == 1  # inference mode: one error at every size
    for phrase in quoted:
        assert phrase in reading, phrase


def test_readme_results_quote_the_committed_results():
    """The README's few lines on the reproduction, made from the results file."""
    readme = committed("README.md")
    summary = " ".join(readme[readme.index("## Results"):readme.index("## Documentation")].split())
    results = committed(RESULTS_DIR, f"{RESULTS_NAME}.json")
    eps, plain, protocol = results["final"]["eps"], results["final"]["plain"], results["protocol"]["content"]
    met = sum(t["met"] for t in results["targets"])
    words = dict(enumerate(["no", "one", "two", "three", "four", "five"]))
    quoted = [
        f"pre-activation ResNet-{plain['depth']} trained for {plain['epochs']} epochs",
        f"ε chosen on {protocol['selection']['holdout']:,} held-out training images",
        f"then {words[len(protocol['final']['seeds'])]} seeds each on the test set",
        f"The plain network scores {mean_sd(plain['test_error'], pct, points)} test error",
        f"ε-ResNet at ε = {eps['epsilon']:g} scores {mean_sd(eps['test_error'], pct, points)} and removes "
        f"{eps['removed']['mean']:.2f} of its {eps['blocks']} blocks on average",
        f"in every run its compressed network's logits equal the gated network's",
        f"{words[met].capitalize()} of the protocol's {words[len(results['targets'])]} targets are met, "
        f"{words[len(results['targets']) - met]} are missed",
    ]
    assert eps["lossless_runs"] == len(eps["runs"])
    for phrase in quoted:
        assert phrase in summary, phrase


# ---- the real command lines -------------------------------------------------------------------------
def check_structure(results):
    """The results file holds every run with what the README's table and figures are made from."""
    assert results["schema"] == SCHEMA and results["selection_rule"] == SELECTION_RULE
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
                    "flickering"} <= set(c)
            assert c["params"]["compressed"] <= c["params"]["full"] and c["macs"]["compressed"] <= c["macs"]["full"]
    assert len(results["targets"]) == 4 and all(isinstance(t["met"], bool) for t in results["targets"])


@pytest.mark.slow
def test_quick_mode_runs_the_whole_protocol(tmp_path):
    work, out = tmp_path / "work", tmp_path / "results"
    command = [sys.executable, "-m", "reproduction", "--quick", "--workdir", str(work), "--results", str(out)]
    run = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=1800)
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
    assert md == render_markdown(results)
    assert all(os.path.isfile(out / path) for path in results["figures"]["files"])
    rescore = [sys.executable, "-m", "reproduction.score", "check", "--data", SAMPLE_DATA]
    checked = subprocess.run([*rescore, "--results", str(out / "cifar10_reproduction.json")], cwd=REPO,
                             capture_output=True, text=True, timeout=1200)
    assert checked.returncode == 0, checked.stdout[-3000:] + checked.stderr[-3000:]
    assert checked.stdout.count("same numbers") == len(names) and "every run re-scores" in checked.stdout
    edited = tmp_path / "edited"
    shutil.copytree(out / "networks" / "select-eps2-s1", edited)
    scores = json.loads((edited / "scores.json").read_text())
    scores["batch_sizes"]["10"]["val_error_per_batch"] += 0.5
    (edited / "scores.json").write_text(json.dumps(scores))
    checked = subprocess.run([*rescore, "--kept", str(edited)], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert checked.returncode == 1 and "edited: DIFFERS" in checked.stdout, checked.stdout + checked.stderr[-3000:]
    assert "batch 10 val_error_per_batch: recorded" in checked.stdout and checked.stdout.count("\n  ") == 1
    again = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)  # everything found finished
    assert again.returncode == 0, again.stderr[-3000:]
    results = json.loads((out / "cifar10_reproduction.json").read_text())
    assert {r["training"]["this_invocation"] for r in results["runs"]} == {"found finished"}


@pytest.mark.parametrize("edit, message", [
    (lambda p: p.pop("notes"), "missing key(s) ['notes']"),
    (lambda p: p.update(extra=1), "unknown key(s) ['extra']"),
    (lambda p: p["selection"].update(holdout="many"), "selection.holdout must be int"),
    (lambda p: p["selection"].update(holdout=0), "selection.holdout must be >= 1"),
    (lambda p: p["final"].update(seeds=[1, 1]), "distinct integers"),
    (lambda p: p["targets"].pop("max_error_increase"), "missing key(s) ['max_error_increase'] in section 'targets'"),
])
def test_a_malformed_protocol_is_named_before_any_run(tmp_path, edit, message):
    protocol = yaml.safe_load(open(QUICK_PROTOCOL))
    edit(protocol)
    path = tmp_path / "protocol.yaml"
    path.write_text(yaml.safe_dump(protocol))
    with pytest.raises(ConfigError) as err:
        load_protocol(str(path))
    assert message in str(err.value)
