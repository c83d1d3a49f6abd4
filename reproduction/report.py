"""The reproduction's Markdown, a function of the results JSON alone: the hand-written text of
reproduction/report.md with the numbers, tables and figures filled in; and its place in
docs/reproduction.md."""
import json
import os

from epsilon_resnet.atomic import write_atomic
from epsilon_resnet.errors import RunError
from epsilon_resnet.provenance import splice_readme
from reproduction import REPO, read_text
from reproduction.results import SCHEMA, in_points, logit_check, logit_check_text

TEMPLATE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "report.md")
README_BEGIN, README_END = "<!-- reproduction: begin -->", "<!-- reproduction: end -->"
README_MARKERS = (README_BEGIN, README_END)  # the lines around the report in docs/reproduction.md


def pct(x):
    return f"{x:.2%}"


def points(x):
    return f"{x * 100:.2f}"


def mean_sd(summary, fmt, sd_fmt=None):
    """"mean ± sd" of a stats() summary; the sd in `sd_fmt` (errors: in points)."""
    text = fmt(summary["mean"])
    return text if summary["sd"] is None else f"{text} ± {(sd_fmt or fmt)(summary['sd'])}"


def count(x):
    """Blocks and depths with two decimals when not whole; parameter counts as whole numbers."""
    return f"{x:,.0f}" if float(x).is_integer() or abs(x) >= 100 else f"{x:,.2f}"


def millions(x):
    return f"{x / 1e6:.1f} M"


def listing(values):
    return ", ".join(f"{v:g}" for v in values)


def yes_no(flag):
    return "yes" if flag else "no"


def row(*cells):
    return "| " + " | ".join(str(cell) for cell in cells) + " |"


def table(header, rows):
    return "\n".join([row(*header), row(*["---"] * len(header)), *(row(*r) for r in rows)])


def lr_phases(curves):
    """"0.1 for epochs 1–4, 0.01 for 5–7, ..." from a run's learning-rate curve."""
    phases = []
    for epoch, lr in zip(curves["epoch"], curves["learning_rate"]):
        if phases and phases[-1][2] == lr:
            phases[-1][1] = epoch
        else:
            phases.append([epoch, epoch, lr])
    return ", ".join(f"{lr:g} for epoch{'s' if a != b else ''} {a}{f'–{b}' if a != b else ''}" for a, b, lr in phases)


def responses(results):
    """Why ε is where it is: the range of the blocks' max|F| after epoch 1 in the final plain runs."""
    values = [v[0] for r in results["runs"] if r["phase"] == "final" and r["kind"] == "plain"
              for v in r.get("responses", {}).values() if v and v[0] is not None]
    if not values:
        return ""
    return (f" The gate compares ε with max|F| over the whole batch tensor; in the final plain runs the blocks' "
            f"max|F| (response_abs_max, a moving average) after epoch 1 was {min(values):.1f} to {max(values):.1f}.")


def selection_table(selection):
    plain = selection["plain"]
    rows = [("plain", len(plain["runs"]), mean_sd(plain["error"], pct, points),
             mean_sd(plain["error_per_batch"], pct, points), "–", "–", "–")]
    rows += [(f"ε = {c['epsilon']:g}", len(c["runs"]), mean_sd(c["error"], pct, points),
              mean_sd(c["error_per_batch"], pct, points), f"{mean_sd(c['removed'], count)} / {selection['blocks']}",
              yes_no(c["lossless"]), yes_no(c["eligible"]))
             for c in selection["candidates"]]
    return table(("model", "runs", "held-out error (inference mode)", "per-batch error", "blocks removed",
                  "compressed = gated in every run", "eligible"), rows)


def final_table(final):
    plain, eps = final["plain"], final["eps"]
    minutes = "{:.1f}".format
    header = ("model", "depth", "seeds", "test error (inference mode)", "per-batch error", "blocks removed", "params",
              "MACs", "CPU-minutes per run")
    return table(header, [
        ("plain pre-activation ResNet", plain["depth"], listing(plain["seeds"]),
         mean_sd(plain["test_error"], pct, points), mean_sd(plain["test_error_per_batch"], pct, points), "–",
         count(plain["params"]["full"]), millions(plain["macs"]["full"]), mean_sd(plain["cpu_minutes"], minutes)),
        (f"ε-ResNet, ε = {eps['epsilon']:g}", eps["depth"], listing(eps["seeds"]),
         mean_sd(eps["test_error"], pct, points), mean_sd(eps["test_error_per_batch"], pct, points),
         f"{mean_sd(eps['removed'], count)} / {eps['blocks']}", count(eps["params"]["full"]),
         millions(eps["macs"]["full"]), mean_sd(eps["cpu_minutes"], minutes)),
        ("compressed ε-ResNet", mean_sd(eps["compressed_depth"], count), listing(eps["seeds"]),
         mean_sd(eps["compressed_error"], pct, points), "–", "–", mean_sd(eps["params"]["compressed"], count),
         mean_sd(eps["macs"]["compressed"], millions), "–")])


def batch_size_table(final):
    """Test error against the evaluation batch size, both semantics, mean ± sd over the final seeds."""
    sizes = sorted(final["plain"]["batch_sizes"], key=int)
    models = (("plain", final["plain"]), (f"ε-ResNet, ε = {final['eps']['epsilon']:g}", final["eps"]))
    rows = [(name, semantics, *(mean_sd(summary["batch_sizes"][size][key], pct, points) for size in sizes))
            for name, summary in models
            for semantics, key in (("inference mode", "val_error"), ("per batch", "val_error_per_batch"))]
    return table(("model", "gates", *(f"batch {size}" for size in sizes)), rows)


def runs_table(runs):
    rows = []
    for r in runs:
        c = r["compression"]
        rows.append((r["name"], "held-out" if r["split"] == "holdout" else "test", r["seed"], f"{r['epsilon']:g}",
                     f"{r['training']['cpu_minutes']:.1f}", pct(r["error"]), pct(r["error_per_batch"]),
                     count(r["closed_at_end"] or 0), ", ".join(c["discarded_blocks"]) or "none",
                     count(c["params"]["compressed"]), millions(c["macs"]["compressed"]), pct(c["compressed_error"]),
                     f"{c['check']['max_abs_logit_difference']:.3g}", yes_no(c["lossless"]),
                     len(r["training"]["sessions"])))
    return table(("run", "evaluated on", "seed", "ε", "CPU-minutes", "error (inference mode)", "per-batch error",
                  "closed at the end", "blocks removed", "compressed params", "compressed MACs", "compressed error",
                  "max logit difference", "lossless", "training sessions"), rows)


def compression_checks(runs):
    """compressModel.py's check in every run: the largest logit difference, and the runs that failed it."""
    failed = [r["name"] for r in runs if not r["compression"]["lossless"]]
    verdict = ("in every run the compressed network's logits equal the gated network's" if not failed else
               f"the compressed network's logits differ from the gated network's in {', '.join(failed)}")
    over_runs = logit_check_text(logit_check([r["compression"] for r in runs]))
    return (f"`compressModel.py` checks each compressed network against the inference-mode gated network on every "
            f"evaluated image: {verdict} (over the runs: {over_runs}).")


def figures(results, doc_dir):
    """The figures' links; doc_dir: the folder of the page they appear in, when the results
    name them relative to the repository (None keeps the names as the results give them)."""
    figs = results.get("figures")
    if not figs:
        return ""
    links = [os.path.relpath(os.path.join(REPO, path), doc_dir) if doc_dir else path for path in figs["files"]]
    lines = [f"![{os.path.splitext(os.path.basename(path))[0]}]({path})" for path in links]
    return "\n" + "\n".join(lines + ["", f"The figures come from `{figs['command']}` (the final runs; bands: mean ± "
                                          "sample standard deviation over the seeds)."])


def render_markdown(results, doc_dir=None):
    """The reproduction report: a function of the results JSON only (doc_dir: see `figures`)."""
    final, protocol = results["final"], results["protocol"]["content"]
    selection, plain = protocol["selection"], final["plain"]
    first = next(r for r in results["runs"] if r["phase"] == "final")
    total = first["compression"]["check"]["images"]
    sessions = [s for r in results["runs"] for s in r["training"]["sessions"]]
    values = {
        "json_path": results["files"]["json"], "json_file": results["files"]["json"], "depth": plain["depth"],
        "blocks": plain["blocks"], "epochs": f"{plain['epochs']} epoch{'s' if plain['epochs'] != 1 else ''}",
        "batch_size": first["config"]["content"]["train"]["batch_size"], "lr_phases": lr_phases(first["curves"]),
        "budget": protocol["budget_cpu_minutes"], "responses": responses(results),
        "data_provenance": results["data"]["provenance"], "data_source": results["data"]["source"],
        "protocol_path": results["protocol"]["path"], "protocol_sha": results["protocol"]["sha256"][:12],
        "epsilons": listing(selection["epsilons"]), "selection_seeds": listing(selection["seeds"]),
        "holdout": f"{selection['holdout']:,}", "holdout_value": selection["holdout"],
        "max_error_increase": in_points(protocol["targets"]["max_error_increase"]),
        "min_discarded_fraction": f"{protocol['targets']['min_discarded_fraction']:.0%}",
        "selection_rule": results["selection_rule"], "final_seeds": listing(protocol["final"]["seeds"]),
        "test_images": f"{total:,}", "notes": protocol["notes"].strip(),
        "selection_table": selection_table(results["selection"]),
        "chosen_epsilon": f"{results['selection']['chosen_epsilon']:g}",
        "chosen_reason": results["selection"]["reason"],
        "final_epsilon": f"{final['eps']['epsilon']:g}", "final_table": final_table(final),
        "targets": "\n".join(f"- {t['target']}: **{'met' if t['met'] else 'missed'}** ({t['measured']})"
                             for t in results["targets"]),
        "runs_table": runs_table(results["runs"]), "compression_checks": compression_checks(results["runs"]),
        "batch_size_table": batch_size_table(final),
        "eval_batch": first["compression"]["check"]["batch_size"],
        "networks": os.path.dirname(first["kept"]), "version": protocol["version"], "changes": protocol["changes"].strip(),
        "commits": ", ".join(sorted({(s["commit"] or "unknown")[:12] + (" (with uncommitted changes)" if s["dirty"]
                                                                         else "") for s in sessions})),
        "machines": "; ".join(sorted({f"{s['machine']['cores']} cores, {s['machine']['cpu_model']}, TensorFlow "
                                      f"{s['machine']['tensorflow']}" for s in sessions})),
        "first_date": min(s["started"] for s in sessions), "last_date": max(s["ended"] for s in sessions),
        "figures": figures(results, doc_dir),
    }
    return read_text(TEMPLATE).format(**values)


def read_results(json_path):
    """A reproduction results file, checked to be one."""
    try:
        results = json.loads(read_text(json_path))
    except ValueError as err:
        raise RunError(f"{json_path} is not valid JSON: {err}") from None
    if not isinstance(results, dict) or results.get("schema") != SCHEMA:
        raise RunError(f"{json_path} is not a reproduction results file (schema {SCHEMA}): run the reproduction "
                       f"to make one")
    return results


def render_file(json_path):
    """Write <name>.md beside <name>.json, rendered from the JSON alone; returns its path."""
    md_path = os.path.splitext(json_path)[0] + ".md"
    write_atomic(md_path, render_markdown(read_results(json_path)))
    return md_path


def splice_report(doc_path, results):
    """Put the report between a page's two reproduction markers (docs/reproduction.md),
    replacing what was there, its figure links relative to that page."""
    splice_readme(doc_path, render_markdown(results, os.path.dirname(os.path.abspath(doc_path))), README_MARKERS)
