"""The statistics and the ε-selection rule: pure functions of the held-out numbers."""
import statistics

SELECTION_RULE = (
    "An ε is eligible when, averaged over its selection seeds, its held-out error (inference mode: the "
    "gates' stored decisions) is at most the plain network's held-out error + max_error_increase, the blocks "
    "its compression removes are at least min_discarded_fraction of the gated blocks, and in every one of its "
    "runs the compressed network's logits equal the gated network's on every held-out image (compressModel.py's "
    "check). The eligible ε with the lowest mean held-out error is chosen (a tie goes to the larger ε). If none "
    "is eligible: among the ε within the error bound, the one removing the most blocks on average (a tie goes "
    "to the lower error); if no ε is within the error bound, the one with the lowest mean held-out error (a tie "
    "goes to the larger ε). The per-batch error is reported, never read.")
TOLERANCE = 1e-9  # errors are fractions of a number of images: compare them with a hair of slack


def stats(values):
    """Mean and sample standard deviation (None for a single value) of numbers, with the numbers."""
    values = list(values)
    return {"mean": statistics.fmean(values), "sd": statistics.stdev(values) if len(values) > 1 else None,
            "n": len(values), "values": values}


def choose_epsilon(plain_error, candidates, blocks, targets):
    """SELECTION_RULE on held-out numbers. Marks each candidate's criteria; returns (ε, reason)."""
    bound = plain_error + targets.max_error_increase
    for c in candidates:
        c["within_error"] = c["error"]["mean"] <= bound + TOLERANCE
        c["enough_removed"] = c["removed"]["mean"] >= targets.min_discarded_fraction * blocks - TOLERANCE
        c["eligible"] = c["within_error"] and c["enough_removed"] and c["lossless"]
    eligible = [c for c in candidates if c["eligible"]]
    within = [c for c in candidates if c["within_error"]]
    if eligible:
        best = min(eligible, key=lambda c: (c["error"]["mean"], -c["epsilon"]))
        return best["epsilon"], "eligible, with the lowest mean held-out error of the eligible ε"
    if within:
        best = max(within, key=lambda c: (c["removed"]["mean"], -c["error"]["mean"]))
        return best["epsilon"], "no ε was eligible; of those within the error bound it removes the most blocks"
    best = min(candidates, key=lambda c: (c["error"]["mean"], -c["epsilon"]))
    return best["epsilon"], "no ε was eligible or within the error bound; it has the lowest mean held-out error"
