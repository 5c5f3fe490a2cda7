"""Tests for media.quality: the score formula, levels, loss/RTT windows, the tracker."""

from __future__ import annotations

import random

import pytest

from callkit.media.quality import (
    BAD,
    DOWN,
    EXCELLENT,
    GOOD,
    POOR,
    UNKNOWN,
    VERY_BAD,
    LossWindow,
    QualityTracker,
    RttWindow,
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


@pytest.mark.parametrize(
    "rtt, jitter, loss, level",
    [
        # loss only
        (0, 0, 0.0, EXCELLENT),
        (0, 0, 2.4, EXCELLENT),
        (0, 0, 3.0, GOOD),
        (0, 0, 5.0, POOR),
        (0, 0, 8.0, BAD),
        (0, 0, 20.0, VERY_BAD),
        (0, 0, 100.0, VERY_BAD),
        # delay only: d = RTT/2 + 2*jitter; knee at 177.3 ms
        (354, 0, 0, EXCELLENT),  # d = 177 -> S = 95.8
        (580, 0, 0, EXCELLENT),  # d = 290 -> S = 80.6
        (600, 0, 0, GOOD),  # d = 300 -> S = 79.3
        (800, 0, 0, POOR),  # d = 400 -> S = 65.9
        (900, 0, 0, BAD),  # d = 450 -> S = 59.2
        (1100, 0, 0, VERY_BAD),  # d = 550 -> S = 45.8
        (0, 150, 0, GOOD),  # d = 300 via jitter alone
        (500, 50, 0, GOOD),  # d = 350 -> S = 72.6
        # both
        (100, 10, 2.0, EXCELLENT),  # S = 81.6
        (800, 5, 3.0, VERY_BAD),  # 64.6 - 23.1
        (200, 20, 5.0, POOR),  # S = 64.9
    ],
)
def test_quality_table(rtt: float, jitter: float, loss: float, level: int) -> None:
    assert quality(rtt, jitter, loss) == level


# --------------------------------------------------------------------------- LossWindow


def test_loss_window_sums_the_span_and_clamps() -> None:
    w = LossWindow(span=6.0, recent=2.0)
    assert w.loss_pct(0.0) is None
    for t in range(1, 7):  # 6 x 50 packets, 3 lost in total
        w.add(float(t), 50, 1 if t % 2 else 0)
    assert w.packets(6.0) == 300
    assert w.loss_pct(6.0) == pytest.approx(1.0)
    assert w.loss_pct(8.0) == pytest.approx(1.0)  # t <= 2 expired: 2 lost of 200
    w2 = LossWindow()
    w2.add(1.0, 10, 3)
    w2.add(2.0, 10, -5)  # late packets correct the count: the window's sum is clamped at 0
    assert w2.loss_pct(2.0) == 0.0
    w2.add(3.0, 5, 50)  # cannot lose more than expected
    assert w2.loss_pct(3.0) == 100.0


def test_loss_window_expires_old_samples() -> None:
    w = LossWindow(span=6.0, recent=2.0)
    w.add(1.0, 100, 20)
    w.add(5.0, 100, 20)
    assert w.loss_pct(6.9) == pytest.approx(20.0)
    assert w.loss_pct(7.0) == pytest.approx(20.0)  # t=1 expired, t=5 left
    assert w.loss_pct(11.0) is None


def test_loss_window_cuts_to_recent_on_a_clear_change() -> None:
    w = LossWindow(span=6.0, recent=2.0)
    for i in range(8):  # 4 s of 0 % at 50 packets/s, 0.5 s samples
        w.add(0.5 * (i + 1), 25, 0)
    for i in range(4):  # then 2 s of 20 %
        w.add(4.0 + 0.5 * (i + 1), 25, 5)
    assert w.loss_pct(6.0) == pytest.approx(20.0)  # not the 6.7 % of the whole span
    assert w.changes == 1
    assert w.packets(6.0) == 100


def test_loss_window_keeps_the_long_window_when_nothing_changed() -> None:
    rng = random.Random(3)
    w = LossWindow(span=6.0, recent=2.0)
    t = 0.0
    for _ in range(400):  # 200 s of 3 % loss at 50 packets/s
        t += 0.5
        lost = sum(rng.random() < 0.03 for _ in range(25))
        w.add(t, 25, lost)
        w.loss_pct(t)
    assert w.changes <= 3  # z >= 3 false alarms are rare
    assert w.packets(t) == 300


@pytest.mark.parametrize("seed", range(5))
def test_three_percent_loss_reads_within_one_level_of_good(seed: int) -> None:
    """Why the window is 6 s: 3 % of 300 packets stays within EXCELLENT..POOR (< 6.67 %)."""
    rng = random.Random(seed)
    w = LossWindow(span=6.0, recent=2.0)
    levels = []
    t = 0.0
    for _ in range(200):
        t += 0.5
        w.add(t, 25, sum(rng.random() < 0.03 for _ in range(25)))
        if t > 6 and t % 2 == 0:
            levels.append(quality(0, 0, w.loss_pct(t) or 0.0))
    assert set(levels) <= {EXCELLENT, GOOD, POOR}


@pytest.mark.parametrize(
    "z, n1, n2, l1, l2, differs",
    [
        (3.0, 100, 100, 0, 20, True),
        (3.0, 100, 100, 3, 5, False),
        (3.0, 200, 100, 0, 0, False),
        (3.0, 100, 100, 100, 100, False),
    ],
)
def test_loss_window_z_test_table(z, n1, n2, l1, l2, differs) -> None:
    from callkit.media.quality import _differs

    assert _differs(l1, n1, l2, n2, z) is differs


def test_loss_window_rejects_bad_spans() -> None:
    with pytest.raises(ValueError):
        LossWindow(span=1.0, recent=2.0)


# --------------------------------------------------------------------------- RttWindow


def test_rtt_window_median_and_last_value() -> None:
    w = RttWindow(span=6.0)
    assert w.value(0.0) is None
    w.add(1.0, 800.0)
    w.add(2.0, 900.0)
    w.add(3.0, 100.0)  # an outlier does not move the median much
    w.add(3.5, float("nan"))
    w.add(3.6, -1.0)
    assert w.value(3.0) == 800.0
    assert w.value(8.5) == 100.0  # only t=3 left
    assert w.value(100.0) == 100.0  # nothing recent: the last sample stays


# --------------------------------------------------------------------------- QualityTracker


def feed(tr: QualityTracker, now: float, recv: int, lost: int, **kw) -> int:
    return tr.update(
        now,
        packets_received=recv,
        packets_lost=lost,
        jitter_ms=kw.get("jitter_ms", 1.0),
        rtt_ms=kw.get("rtt_ms", 10.0),
        connection_failed=kw.get("failed", False),
        last_packet_at=kw.get("last_packet_at"),
    )


def test_tracker_unknown_until_packets() -> None:
    tr = QualityTracker()
    assert tr.level == UNKNOWN
    assert feed(tr, 0.0, 0, 0) == UNKNOWN
    assert feed(tr, 2.0, 100, 0) == EXCELLENT
    assert tr.last_loss_pct == 0.0


def test_tracker_counts_from_zero_or_from_a_baseline() -> None:
    tr = QualityTracker()
    assert feed(tr, 0.5, 90, 10) == VERY_BAD  # from zero: the first read already counts
    up = QualityTracker(from_zero=False)
    assert feed(up, 0.5, 90, 10) == UNKNOWN  # the first read is only the baseline
    assert feed(up, 1.5, 140, 10) == EXCELLENT


def test_tracker_sliding_loss_from_cumulative_counters() -> None:
    tr = QualityTracker(loss_span=6.0, loss_recent=2.0)
    feed(tr, 0.0, 0, 0)
    recv = lost = 0
    for i in range(1, 13):  # 6 s at 3 %: 25 packets per 0.5 s, 3 lost every 2 s
        recv += 25 - (3 if i % 4 == 0 else 0)
        lost += 3 if i % 4 == 0 else 0
        level = feed(tr, 0.5 * i, recv, lost, jitter_ms=0, rtt_ms=0)
    assert tr.last_loss_pct == pytest.approx(3.0)
    assert level == GOOD
    for i in range(13, 21):  # 4 s clean: not a "clear" change, the window slides
        recv += 25
        level = feed(tr, 0.5 * i, recv, lost, jitter_ms=0, rtt_ms=0)
    assert tr.last_loss_pct == pytest.approx(100 * 3 / 300)
    assert level == EXCELLENT


def test_tracker_follows_a_jump_within_the_recent_window() -> None:
    tr = QualityTracker()
    recv = lost = 0
    for i in range(1, 13):  # 6 s clean
        recv += 25
        feed(tr, 0.5 * i, recv, lost)
    levels = []
    for i in range(13, 17):  # 2 s at 20 %
        recv += 20
        lost += 5
        levels.append(feed(tr, 0.5 * i, recv, lost))
    assert levels[-1] == VERY_BAD and tr.last_loss_pct == pytest.approx(20.0)


def test_tracker_late_packets_reduce_the_count() -> None:
    tr = QualityTracker()
    feed(tr, 0.0, 100, 5)
    assert feed(tr, 2.0, 205, 0) == EXCELLENT  # 5 "lost" arrived late after all
    assert tr.last_loss_pct == 0.0


def test_tracker_counter_reset_is_a_new_stream() -> None:
    tr = QualityTracker()
    feed(tr, 0.0, 1000, 0)
    assert feed(tr, 2.0, 50, 50) == VERY_BAD  # restarted stream: counts from zero
    # (and 50 % after 0 % is a clear change: the window holds only the new stream's packets)
    assert tr.last_loss_pct == pytest.approx(50.0)


def test_tracker_down_after_three_seconds_without_growth() -> None:
    tr = QualityTracker()
    feed(tr, 10.0, 100, 0)
    assert feed(tr, 12.0, 100, 0) == EXCELLENT  # 2 s silent: keep the level
    assert feed(tr, 12.9, 100, 0) == EXCELLENT
    assert feed(tr, 13.0, 100, 0) == DOWN
    assert feed(tr, 15.0, 100, 0) == DOWN
    assert feed(tr, 17.0, 200, 0) == EXCELLENT  # recovers when packets come back


def test_tracker_packets_lost_while_down_are_the_outage_not_loss() -> None:
    tr = QualityTracker()
    feed(tr, 0.5, 25, 0)
    assert feed(tr, 4.0, 25, 0) == DOWN
    # 300 packets went missing during the cut; the first read after it shows them as lost
    assert feed(tr, 6.5, 50, 300) == EXCELLENT
    assert tr.last_loss_pct == 0.0
    assert feed(tr, 7.0, 74, 301) == EXCELLENT  # later loss counts again
    assert tr.last_loss_pct == pytest.approx(100 / 50)


def test_tracker_precise_last_packet_time() -> None:
    tr = QualityTracker()
    feed(tr, 10.0, 100, 0, last_packet_at=9.9)
    assert feed(tr, 12.5, 100, 0, last_packet_at=9.9) == EXCELLENT
    assert feed(tr, 13.0, 100, 0, last_packet_at=9.9) == DOWN  # 3.1 s since the packet
    # a packet of another stream (e.g. video) counts as life too
    assert feed(tr, 13.5, 100, 0, last_packet_at=13.4) != DOWN


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
