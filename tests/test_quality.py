"""Tests for media.quality: the score formula, levels, and the per-user tracker."""

from __future__ import annotations

import pytest

from media.quality import (
    BAD,
    DOWN,
    EXCELLENT,
    GOOD,
    POOR,
    UNKNOWN,
    VERY_BAD,
    QualityTracker,
    level_from_score,
    quality,
    score,
    uplink_quality,
    worst_quality,
)


def test_level_numbers_match_tuicallkit() -> None:
    assert (UNKNOWN, EXCELLENT, GOOD, POOR, BAD, VERY_BAD, DOWN) == (0, 1, 2, 3, 4, 5, 6)


def test_score_perfect_and_formula() -> None:
    assert score(0, 0, 0) == 100.0
    # d = 100/2 + 2*10 = 70 -> Id = 1.68; P = 5 -> 100*5/15
    assert score(100, 10, 5) == pytest.approx(100 - 0.024 * 70 - 100 * 5 / 15)
    # beyond the knee: d = 300 -> Id = 7.2 + 0.11*122.7
    assert score(400, 50, 0) == pytest.approx(100 - 7.2 - 0.11 * 122.7)
    # knee is continuous
    assert score(2 * 177.3, 0, 0) == pytest.approx(100 - 0.024 * 177.3)


def test_score_ignores_garbage_inputs() -> None:
    assert score(-5, -1, -3) == 100.0
    assert score(float("nan"), 0, 0) == 100.0
    assert score(0, 0, 1000) == score(0, 0, 100)


@pytest.mark.parametrize(
    "s, level",
    [
        (100, 1),
        (80, 1),
        (79.99, 2),
        (70, 2),
        (69.9, 3),
        (60, 3),
        (59.9, 4),
        (50, 4),
        (49.9, 5),
        (-20, 5),
    ],
)
def test_level_from_score(s: float, level: int) -> None:
    assert level_from_score(s) == level


@pytest.mark.parametrize(
    "cutoff, below, above", [(2.5, 1, 2), (300 / 70, 2, 3), (400 / 60, 3, 4), (10.0, 4, 5)]
)
def test_design_loss_only_cutoffs(cutoff: float, below: int, above: int) -> None:
    """DESIGN's 2.5 / 4.3 / 6.7 / 10 % are where S crosses 80/70/60/50 at d = 0."""
    assert round(cutoff, 1) in (2.5, 4.3, 6.7, 10.0)
    assert level_from_score(score(0, 0, cutoff - 1e-6)) == below
    assert level_from_score(score(0, 0, cutoff + 1e-6)) == above
    assert quality(None, None, cutoff - 0.01) == below


def test_delay_alone_degrades() -> None:
    assert quality(20, 2, 0) == EXCELLENT
    # d = 400 -> Id = 9.6 + 24.5 = 34.1 -> S = 65.9 -> POOR
    assert quality(800, 0, 0) == POOR
    assert quality(1200, 50, 0) == VERY_BAD


def test_uplink_quality_from_fraction_lost() -> None:
    assert uplink_quality(0, 1.0, 10.0) == EXCELLENT
    assert uplink_quality(0, 1.0, None) == EXCELLENT
    assert uplink_quality(6, 0, None) == EXCELLENT  # 2.34 %
    assert uplink_quality(7, 0, None) == GOOD  # 2.73 %
    assert uplink_quality(25, 0, None) == BAD  # 9.77 %
    assert uplink_quality(26, 0, None) == VERY_BAD  # 10.16 %
    assert uplink_quality(255, 0, 0) == VERY_BAD
    assert uplink_quality(999, 0, 0) == VERY_BAD  # clamped to 255


def test_worst_quality() -> None:
    assert worst_quality([]) == UNKNOWN
    assert worst_quality([UNKNOWN, UNKNOWN]) == UNKNOWN
    assert worst_quality([EXCELLENT, UNKNOWN, POOR]) == POOR
    assert worst_quality([GOOD, DOWN, BAD]) == DOWN


def feed(tr: QualityTracker, now: float, recv: int, lost: int, **kw) -> int:
    return tr.update(
        now,
        packets_received=recv,
        packets_lost=lost,
        jitter_ms=kw.get("jitter_ms", 1.0),
        rtt_ms=kw.get("rtt_ms", 10.0),
        connection_failed=kw.get("failed", False),
    )


def test_tracker_unknown_until_packets() -> None:
    tr = QualityTracker()
    assert tr.level == UNKNOWN
    assert feed(tr, 0.0, 0, 0) == UNKNOWN
    assert feed(tr, 2.0, 100, 0) == EXCELLENT
    assert tr.last_loss_pct == 0.0


def test_tracker_windowed_loss_from_cumulative_counters() -> None:
    tr = QualityTracker()
    feed(tr, 0.0, 0, 0)
    assert feed(tr, 2.0, 100, 0) == EXCELLENT
    # next window: 90 received, 10 lost -> 10 % -> boundary of BAD/VERY_BAD (S = 50 - Id)
    assert feed(tr, 4.0, 190, 10, jitter_ms=0, rtt_ms=0) == BAD
    assert tr.last_loss_pct == pytest.approx(10.0)
    # 97 received, 3 lost -> 3 % -> GOOD; earlier losses do not count any more
    assert feed(tr, 6.0, 287, 13) == GOOD
    assert tr.last_loss_pct == pytest.approx(3.0)
    assert feed(tr, 8.0, 387, 13) == EXCELLENT


def test_tracker_negative_lost_delta_counts_as_zero() -> None:
    tr = QualityTracker()
    feed(tr, 0.0, 100, 5)
    assert feed(tr, 2.0, 200, 3) == EXCELLENT
    assert tr.last_loss_pct == 0.0


def test_tracker_counter_reset_is_a_new_stream() -> None:
    tr = QualityTracker()
    feed(tr, 0.0, 1000, 0)
    assert feed(tr, 2.0, 50, 50) == VERY_BAD  # restarted stream: 50 % of this window
    assert tr.last_loss_pct == pytest.approx(50.0)


def test_tracker_down_after_three_seconds_without_growth() -> None:
    tr = QualityTracker()
    feed(tr, 10.0, 100, 0)
    assert feed(tr, 12.0, 100, 0) == EXCELLENT  # 2 s silent: keep previous level
    assert feed(tr, 12.9, 100, 0) == EXCELLENT
    assert feed(tr, 13.0, 100, 0) == DOWN
    assert feed(tr, 15.0, 100, 0) == DOWN
    assert feed(tr, 17.0, 200, 0) == EXCELLENT  # recovers when packets come back


def test_tracker_down_when_nothing_ever_arrives() -> None:
    tr = QualityTracker()
    assert feed(tr, 0.0, 0, 0) == UNKNOWN
    assert feed(tr, 2.0, 0, 0) == UNKNOWN
    assert feed(tr, 4.0, 0, 0) == DOWN


def test_tracker_down_on_connection_failure() -> None:
    tr = QualityTracker()
    feed(tr, 0.0, 100, 0)
    assert feed(tr, 1.0, 150, 0, failed=True) == DOWN
    assert feed(tr, 2.0, 200, 0) == EXCELLENT


def test_tracker_custom_down_after_and_missing_rtt_jitter() -> None:
    tr = QualityTracker(down_after=1.0)
    feed(tr, 0.0, 10, 0, jitter_ms=None, rtt_ms=None)
    assert tr.level == EXCELLENT and tr.last_score == 100.0
    assert feed(tr, 1.0, 10, 0) == DOWN


def test_tracker_uses_rtt_and_jitter() -> None:
    tr = QualityTracker()
    feed(tr, 0.0, 0, 0)
    # d = 600/2 + 2*100 = 500 -> Id = 12 + 35.5 = 47.5 -> S = 52.5 -> BAD
    assert feed(tr, 2.0, 100, 0, rtt_ms=600, jitter_ms=100) == BAD
