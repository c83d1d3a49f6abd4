"""The run-time saving of the skipped backward pass, computed by hand on a tiny example."""
import pytest

from benchmarks import closure_saving

CLOSED_BLOCKS = {"gates": 4, "gates_closed": {"closed50": 2, "ceiling50": 0},
                 "ratios": {"closed50": {"ratio": 0.6}, "ceiling50": {"ratio": 0.5}}}


def test_ratio_curve_starts_at_one_and_ignores_ceilings():
    shares, ratios = closure_saving.ratio_curve(CLOSED_BLOCKS)
    assert shares.tolist() == [0.0, 0.5] and ratios.tolist() == [1.0, 0.6]


def test_run_time_ratio_averages_each_epochs_two_ends():
    # closed shares 0 -> 0.25 -> 0.5 give step-time ratios 1, 0.8, 0.6: epochs cost 0.9 and 0.7
    curve = closure_saving.ratio_curve(CLOSED_BLOCKS)
    assert closure_saving.run_time_ratio([0.25, 0.5], curve) == pytest.approx(0.8)


def test_savings_scale_each_curve_to_the_papers_final_share():
    run = {"name": "r", "kind": "eps", "phase": "final", "blocks": 4, "curves": {"discarded_cnt": [1.0, 1.0]}}
    plain = {**run, "name": "p", "kind": "plain"}
    result = closure_saving.savings(CLOSED_BLOCKS, {"runs": [run, plain]})
    assert list(result["runs"]) == ["r"]
    assert result["mean_time_ratio"] == pytest.approx((0.9 + 0.8) / 2)  # ratios 1, 0.8, 0.8
    # scaled to end at 0.22: ratio 1 - 0.8 * 0.22 at both epoch ends
    assert result["mean_scaled_to_paper"]["ResNet-110 (22% closed)"] == pytest.approx(
        ((1 + 1 - 0.176) / 2 + 1 - 0.176) / 2)
