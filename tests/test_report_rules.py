"""The report's wording rules and its figure files, as pure functions (no MLflow, no sweep): a verdict is
better / worse in each metric's own direction, "equivalent" only inside the margin stated in advance,
else not separable; every figure is written as PNG and vector PDF at a paper's width; labels of the
Pareto plot do not collide."""

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from sweeps.report import figures
from sweeps.report.analysis import Diff
from sweeps.report.verdicts import (
    BETTER,
    EQUIVALENCE_MARGIN,
    EQUIVALENT,
    NO_INTERVAL,
    NOT_SEPARABLE,
    UNSEPARATED,
    WORSE,
    Contrast,
    lower_is_better,
    margin_for,
    outcome,
    verdict,
)


def contrast(mean: float, half: float, column: str = "multi/map", what: str = "multi mAP") -> Contrast:
    return Contrast(
        "alpha=0", "alpha=1", what, Diff(mean, half, 3, "paired"), lower_is_better(column), margin_for(column)
    )


@pytest.mark.parametrize(
    "mean, half, expected",
    [
        (0.003, 0.005, EQUIVALENT),  # [-0.002, 0.008]: inside +/- 0.01
        (0.004, 0.007, UNSEPARATED),  # [-0.003, 0.011]: crosses the margin, so not "as good as"
        (-0.013, 0.012, WORSE),  # mAP lower: worse, however small
        (0.0, 0.02, UNSEPARATED),  # the n = 3 case of the issue: +/- 0.02 is no equivalence
        (0.034, 0.003, BETTER),
        (0.004, math.nan, NO_INTERVAL),
    ],
)
def test_equivalence_needs_the_whole_interval_inside_the_margin(mean, half, expected):
    assert EQUIVALENCE_MARGIN == 0.01
    assert outcome(mean, half, lower_better=False) == expected


def test_direction_is_the_metrics_own():
    """A negative ECE or rank-distance difference is better, a negative mAP difference worse: never "(-)"."""
    assert contrast(-0.022, 0.019, "mono/ece", "mono ECE").outcome == BETTER
    assert contrast(0.135, 0.054, "multi/ece", "multi ECE").outcome == WORSE
    assert contrast(-89.1, 22.4, "multi/rank_distance").outcome == BETTER
    assert contrast(-0.012, 0.007, "std", "std of pair mAP").outcome == BETTER
    assert contrast(-0.011, 0.005, "mono/map", "mono mAP").outcome == WORSE
    assert margin_for("multi/rank_distance") is None and outcome(0.1, 0.2, True, None) == UNSEPARATED


def test_verdicts_group_by_sides_and_outcome():
    rows = [
        contrast(-0.022, 0.019, "mono/ece", "mono ECE"),
        contrast(-0.032, 0.015, "cross/ece", "cross ECE"),
        contrast(0.135, 0.054, "multi/ece", "multi ECE"),
        contrast(0.002, 0.005, "mono/map", "mono mAP"),
        contrast(0.003, 0.019, "multi/map", "multi mAP"),
    ]
    assert verdict(rows) == (
        "alpha=0 better than alpha=1: mono ECE, cross ECE; alpha=0 worse than alpha=1: multi ECE; alpha=0 and "
        "alpha=1 equivalent (95% CI within ±0.01): mono mAP; alpha=0 vs alpha=1 not separable: multi mAP"
    )
    assert verdict([contrast(0.003, 0.019)]) == NOT_SEPARABLE
    assert verdict([contrast(0.003, math.nan)]) == NOT_SEPARABLE + " (no interval: one seed a side)"
    assert verdict([]) == "not covered"
    assert "(+)" not in verdict(rows) and "(-)" not in verdict(rows)


def test_a_figure_is_written_as_png_and_vector_pdf_at_a_papers_width():
    fig = figures.figure(figures.SINGLE, 2.5)
    fig.subplots().plot([0, 1], [0, 1])
    out = figures.export(fig)
    assert out["png"][:8] == b"\x89PNG\r\n\x1a\n" and out["pdf"][:5] == b"%PDF-"
    width = int.from_bytes(out["png"][16:20], "big")  # the IHDR chunk: width in pixels
    assert width == round(figures.SINGLE * figures.PNG_DPI)
    assert b"/Subtype /Image" not in out["pdf"]  # lines and text, not a bitmap


def test_pareto_labels_do_not_collide():
    """Five configurations within 0.01 of each other (as in the long study): every label placed once, no
    two label boxes overlapping."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    xs = np.array([0.811, 0.815, 0.817, 0.818, 0.823])
    ys = np.array([0.748, 0.744, 0.743, 0.740, 0.714])
    fig = figures.figure(figures.SINGLE, 3.0)
    ax = fig.subplots()
    ax.plot(xs, ys, "o")
    figures._place_labels(ax, xs, ys, ["0 ", "0.5 cross_first", "0.5", "0.5 mono_first", "1"])
    renderer = FigureCanvasAgg(fig).get_renderer()
    boxes = [t.get_window_extent(renderer) for t in ax.texts]
    assert len(boxes) == 5
    assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1 :])


def test_lines_join_only_configurations_of_one_stratum():
    frame = pd.DataFrame(
        {
            "config_key": list("abcde"),
            "mono_ratio": [0.0, 0.5, 1.0, 0.0, 0.5],
            "temperature": [0.05, 0.05, 0.05, 0.01, 0.05],
            "alpha_schedule": ["constant", "constant", "constant", "constant", "mono_first"],
        }
    )
    groups = dict(figures.strata(frame, frame.iloc[2]))
    assert list(groups["tau=0.05"]["config_key"]) == ["a", "b", "c"]
    assert list(groups["tau=0.01"]["config_key"]) == ["d"] and list(groups["tau=0.05, mono_first"]["config_key"]) == [
        "e"
    ]


def test_wall_time_sums_the_driver_runs_of_a_resumed_sweep(tmp_path):
    """Each driver run keeps its seconds beside the sweep (`state.add_run_time`); the report's header shows
    the sum and how many runs it took, and says when a sweep recorded only its last run."""
    from hybrid.config import DEFAULT_CONFIG
    from sweeps import state
    from sweeps.config import load_sweep_setup
    from sweeps.report.html import wall_text

    setup = load_sweep_setup(DEFAULT_CONFIG, [f"sweep.storage_path={tmp_path}", "sweep.name=resumed"])
    assert state.run_times(setup) == []
    for seconds in (1230.0, 600.0, 5550.0):  # stopped by a bug, stopped with Ctrl-C, finished
        state.add_run_time(setup, seconds)
    assert sum(state.run_times(setup)) == pytest.approx(7380.0)
    kept = setup.sweep.location(state.RUN_TIMES_FILE)  # a forged figure would reach MLflow: signed, or not counted
    forged = json.loads(Path(kept).read_text()) | {"runs": [1e9]}
    Path(kept).write_text(json.dumps(forged))
    assert state.run_times(setup) == []
    assert wall_text({"sweep/wall_s": 7380.0, "sweep/driver_runs": 3}) == "123.0 (3 runs)"
    assert wall_text({"sweep/wall_s": 5550.0}) == "92.5 (the last run only, if it was resumed)"
    assert wall_text({}) == "-"
