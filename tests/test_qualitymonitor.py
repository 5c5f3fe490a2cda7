"""Unit tests for media.qualitymonitor: scheduling, DOWN flips, downlink and uplink levels.

The monitor's pure part (:meth:`QualityMonitor.update`) is fed hand-made PeerSamples on a
fake clock; :mod:`tests.test_quality_loopback` covers the real thing.
"""

from __future__ import annotations

import asyncio
import logging

import pytest

from callkit.media.peer import PeerSession
from callkit.media.quality import BAD, DOWN, EXCELLENT, GOOD, POOR, UNKNOWN, VERY_BAD
from callkit.media.qualitymonitor import PeerSample, QualityMonitor
from callkit.media.rtcstats import ReportBlock

S1, S2 = object(), object()  # stand-ins for PeerSessions (only identity matters)


def blk(at: float, seq: int, lost: int = 0, jitter: int = 0, rtt: float | None = None):
    return ReportBlock(
        at=at, highest_seq=seq, packets_lost=lost, fraction_lost=0, jitter=jitter, rtt_ms=rtt
    )


class Link:
    """A simulated peer: 50 audio packets/s each way, loss and RTT chosen per step."""

    def __init__(self, session: object = S1) -> None:
        self.session = session
        self.recv = self.lost = 0  # what we receive from them (cumulative)
        self.seq = 1000  # what they receive from us, as their reports say
        self.up_lost = 0
        self.sent = 0
        self.next_report = 0.0
        self.down_acc = self.up_acc = 0.0

    def advance(
        self,
        now: float,
        dt: float,
        *,
        down_loss: float = 0.0,
        up_loss: float = 0.0,
        rtt: float | None = 20.0,
        jitter: int = 48,
        cut_down: bool = False,
        cut_up: bool = False,
        reports: bool = True,
        sending: bool = True,
    ) -> PeerSample:
        n = round(50 * dt)
        if not cut_down:
            self.down_acc += n * down_loss
            lost = int(self.down_acc)
            self.down_acc -= lost
            self.recv += n - lost
            self.lost += lost
        if sending:
            self.sent += n
            if not cut_up:
                self.seq += n
                self.up_acc += n * up_loss
                self.up_lost += int(self.up_acc)
                self.up_acc -= int(self.up_acc)
        blocks = []
        if reports and now >= self.next_report:
            blocks.append(blk(now, self.seq, self.up_lost, jitter, rtt))
            self.next_report = now + 1.0
        return PeerSample(
            packets_received=self.recv,
            packets_lost=self.lost,
            jitter_ms=1.0,
            last_packet_at=None,
            blocks=blocks,
            packets_sent=self.sent,
        )


def run(mon: QualityMonitor, links: dict[str, Link], t0: float, t1: float, **kw):
    """Tick every 0.5 s from t0 (exclusive) to t1 (inclusive); return the reports made."""
    reports = []
    t = t0
    while t < t1 - 1e-9:
        t = round(t + 0.5, 6)
        samples = {
            u: (link.session, link.advance(t, 0.5, **kw.get(u, {}))) for u, link in links.items()
        }
        out = mon.update(t, samples)
        if out is not None:
            reports.append((t, *out))
    return reports


def test_reports_every_interval_on_a_tick_grid() -> None:
    mon = QualityMonitor(interval=2.0, tick=0.5)
    mon.start(0.0)
    reports = run(mon, {"bob": Link()}, 0.0, 10.0)
    assert [r[0] for r in reports] == [2.0, 4.0, 6.0, 8.0, 10.0]
    assert all(r[2] == {"bob": EXCELLENT} for r in reports)
    assert reports[0][1] == EXCELLENT  # bob's first report (baseline) + one more by t=2
    assert mon.sleep_time(10.0) == pytest.approx(0.5)
    assert mon.sleep_time(10.2) == pytest.approx(0.3)
    assert mon.sleep_time(10.499) == pytest.approx(0.501)  # too close: the next grid point


def test_a_late_loop_does_not_burst_reports() -> None:
    mon = QualityMonitor(interval=2.0, tick=0.5)
    mon.start(0.0)
    link = Link()
    assert mon.update(7.0, {"bob": (S1, link.advance(7.0, 7.0))}) is not None  # 5 s late
    assert mon.update(7.5, {"bob": (S1, link.advance(7.5, 0.5))}) is None
    assert mon.update(9.0, {"bob": (S1, link.advance(9.0, 1.5))}) is not None


def test_unknown_before_media_and_down_on_failure() -> None:
    mon = QualityMonitor()
    mon.start(0.0)
    out = mon.update(
        2.0,
        {
            "bob": (None, None),
            "carol": (S1, PeerSample(connected=False)),
            "dave": (S2, PeerSample(connected=False, failed=True)),
        },
    )
    assert out == (UNKNOWN, {"bob": UNKNOWN, "carol": UNKNOWN, "dave": DOWN})


@pytest.mark.parametrize(
    "loss, level", [(0.0, EXCELLENT), (0.03, GOOD), (0.05, POOR), (0.08, BAD), (0.2, VERY_BAD)]
)
def test_remote_level_from_loss_and_own_level_from_their_reports(loss: float, level: int) -> None:
    mon = QualityMonitor()
    mon.start(0.0)
    reports = run(
        mon, {"bob": Link()}, 0.0, 12.0, bob={"down_loss": loss, "up_loss": loss, "rtt": 20.0}
    )
    _, local, remote = reports[-1]
    assert remote == {"bob": level}
    assert local == level
    d = mon.details("bob", 12.0)
    assert d is not None and d["rtt_ms"] == 20.0
    assert d["down_loss_pct"] == pytest.approx(100 * loss, abs=0.5)
    assert d["up_loss_pct"] == pytest.approx(100 * loss, abs=0.5)
    assert d["up_jitter_ms"] == pytest.approx(1.0)


def test_rtt_from_reports_counts_for_both_directions() -> None:
    mon = QualityMonitor()
    mon.start(0.0)
    reports = run(mon, {"bob": Link()}, 0.0, 8.0, bob={"rtt": 800.0})
    assert reports[-1][1:] == (POOR, {"bob": POOR})  # d = 400 ms -> S = 65.9


def test_own_level_is_the_worst_uplink() -> None:
    mon = QualityMonitor()
    mon.start(0.0)
    links = {"bob": Link(S1), "carol": Link(S2)}
    reports = run(mon, links, 0.0, 10.0, carol={"up_loss": 0.2})
    assert reports[-1][1:] == (VERY_BAD, {"bob": EXCELLENT, "carol": EXCELLENT})


def test_cut_off_user_is_down_at_once_and_back_at_once() -> None:
    mon = QualityMonitor()
    mon.start(0.0)
    link = Link()
    run(mon, {"bob": link}, 0.0, 6.0)
    # bob's packets stop arriving at t=6: DOWN is reported on the tick it is true (t=9),
    # not at the next regular report
    reports = run(mon, {"bob": link}, 6.0, 11.0, bob={"cut_down": True})
    assert [(t, remote["bob"]) for t, _, remote in reports] == [
        (8.0, EXCELLENT),
        (9.0, DOWN),
        (10.0, DOWN),
    ]
    # they come back at 11.5: reported at once; the packets lost in the cut are not "loss"
    reports = run(mon, {"bob": link}, 11.0, 14.0)
    assert [(t, remote["bob"]) for t, _, remote in reports] == [
        (11.5, EXCELLENT),
        (12.0, EXCELLENT),
        (14.0, EXCELLENT),
    ]


def test_packet_times_from_any_stream_count_as_life() -> None:
    """``last_packet_at`` (from getSynchronizationSources: audio or video) keeps a user up
    while the audio counters stand still, and dates the silence when everything stops."""
    mon = QualityMonitor()
    mon.start(0.0)
    link = Link()
    run(mon, {"bob": link}, 0.0, 2.0)
    for t in (2.5, 3.0, 3.5, 4.0, 4.5, 5.0, 5.5, 6.0):  # no audio, but video arrives
        sample = link.advance(t, 0.5, cut_down=True)
        sample.last_packet_at = t - 0.05
        out = mon.update(t, {"bob": (S1, sample)})
        assert out is None or out[1]["bob"] == EXCELLENT
    for t in (6.5, 7.0, 7.5, 8.0, 8.5):  # nothing at all since 5.95
        sample = link.advance(t, 0.5, cut_down=True)
        sample.last_packet_at = 5.95
        out = mon.update(t, {"bob": (S1, sample)})
        assert out is None or out[1]["bob"] == EXCELLENT  # (8.0: a regular report)
    sample = link.advance(9.0, 0.5, cut_down=True)
    sample.last_packet_at = 5.95
    assert mon.update(9.0, {"bob": (S1, sample)}) == (EXCELLENT, {"bob": DOWN})


def test_own_level_down_when_reports_show_no_progress() -> None:
    mon = QualityMonitor()
    mon.start(0.0)
    link = Link()
    run(mon, {"bob": link}, 0.0, 6.0)
    reports = run(mon, {"bob": link}, 6.0, 12.0, bob={"cut_up": True})
    downs = [t for t, local, _ in reports if local == DOWN]
    assert downs and downs[0] <= 10.0  # progress last reported at 6.0; a report at 9.0+
    assert all(remote == {"bob": EXCELLENT} for _, _, remote in reports)
    reports = run(mon, {"bob": link}, 12.0, 16.0)
    assert reports[0][1] == EXCELLENT and reports[0][0] <= 13.0


def test_no_reports_is_no_evidence_and_keeps_the_own_level() -> None:
    mon = QualityMonitor()
    mon.start(0.0)
    link = Link()
    reports = run(mon, {"bob": link}, 0.0, 6.0, bob={"up_loss": 0.05})
    assert reports[-1][1] == POOR
    # their sending is cut: neither RTP nor receiver reports from them
    reports = run(mon, {"bob": link}, 6.0, 16.0, bob={"cut_down": True, "reports": False})
    assert [local for _, local, _ in reports] == [POOR] * len(reports)
    assert reports[-1][2] == {"bob": DOWN}


def test_not_sending_is_not_an_uplink_outage() -> None:
    mon = QualityMonitor()
    mon.start(0.0)
    link = Link()
    run(mon, {"bob": link}, 0.0, 4.0)
    reports = run(mon, {"bob": link}, 4.0, 12.0, bob={"sending": False})
    assert {local for _, local, _ in reports} == {EXCELLENT}


def test_a_new_session_starts_fresh_and_forget_drops_a_user() -> None:
    mon = QualityMonitor()
    mon.start(0.0)
    old = Link(S1)
    run(mon, {"bob": old}, 0.0, 6.0, bob={"down_loss": 0.2})
    new = Link(S2)  # e.g. bob rejoined: counters restart, the old history is gone
    reports = run(mon, {"bob": new}, 6.0, 8.0)
    assert reports[-1][2] == {"bob": EXCELLENT}
    mon.forget("bob")
    assert mon.details("bob", 8.0) is None
    mon.forget("nobody")


async def test_step_survives_broken_sessions(caplog) -> None:
    # duck-typed sessions running the real PeerSession.quality_sample
    class Broken:
        quality_sample = PeerSession.quality_sample

        @property
        def failed(self) -> bool:
            raise RuntimeError("boom")

    class Pc:
        connectionState = "connecting"

    class Waiting:
        quality_sample = PeerSession.quality_sample
        failed = False
        connected = asyncio.Event()
        pc = Pc()

    class Closed:  # aioice gave up on the connection (consent): "closed", never "failed"
        quality_sample = PeerSession.quality_sample
        failed = False
        connected = asyncio.Event()
        pc = Pc()

    Closed.connected.set()
    Closed.pc = type("ClosedPc", (), {"connectionState": "closed"})()

    mon = QualityMonitor()
    mon.start(0.0)
    with caplog.at_level(logging.ERROR, logger="callkit.media.qualitymonitor"):
        out = await mon.step(
            ["bob", "carol", "dave", "erin"],
            {"bob": Broken(), "carol": Waiting(), "erin": Closed()},
            2.0,
        )
    assert out == (UNKNOWN, {"bob": UNKNOWN, "carol": UNKNOWN, "dave": UNKNOWN, "erin": DOWN})
    assert "reading stats of bob failed" in caplog.text
    assert "carol" not in caplog.text and "erin" not in caplog.text


def test_rejects_bad_intervals() -> None:
    with pytest.raises(ValueError):
        QualityMonitor(interval=0)
    assert QualityMonitor(interval=0.2, tick=0.5).tick == 0.2


def test_good_level_for_three_percent_both_ways() -> None:
    mon = QualityMonitor()
    mon.start(0.0)
    reports = run(mon, {"bob": Link()}, 0.0, 10.0, bob={"down_loss": 0.03, "up_loss": 0.03})
    assert reports[-1][1:] == (GOOD, {"bob": GOOD})
