"""Regenerate meters.json from the Python meters: ``python -m tests.vectors.make_meters``.

The vectors pin the Python functions (tests/test_meter_vectors.py) and the JavaScript ones
in callkit.js (tests/test_browser_vectors.py) to the same numbers. Regenerate only when
DESIGN section 4 changes, and review the diff.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from callkit.media.quality import LossWindow, level_from_score, quality, score
from callkit.media.volume import rms_dbfs, volume_from_dbfs

OUT = Path(__file__).with_name("meters.json")


def _tone(level_dbfs: float, n: int = 480, freq: float = 1000.0, rate: int = 48000) -> list[int]:
    amp = 32768 * 10 ** (level_dbfs / 20) * math.sqrt(2)
    t = np.arange(n) / rate
    return [int(v) for v in np.clip(np.round(amp * np.sin(2 * np.pi * freq * t)), -32768, 32767)]


def _num(x: float) -> float | str:
    return x if math.isfinite(x) else ("-inf" if x < 0 else ("inf" if x > 0 else "nan"))


def build() -> dict[str, object]:
    samples = [
        _tone(-20),
        _tone(-10),
        _tone(-30.5),
        _tone(-59.9),
        _tone(0.0),
        [0] * 160,
        [32767, -32768] * 40,
        [1, -1, 2, -2, 3],
        [],
    ]
    volume_samples = []
    for s in samples:
        level = rms_dbfs(np.array(s, dtype=np.int16))
        volume_samples.append(
            {"samples": s, "dbfs": _num(level), "volume": volume_from_dbfs(level)}
        )
    levels = [-100, -60.0, -59.75, -59.74, -40.25, -40.0, -20.0, -19.75, -10.01, -10.0, 0.0, 5.0]
    volume_levels = [{"dbfs": x, "volume": volume_from_dbfs(x)} for x in levels]
    volume_levels += [{"dbfs": "-inf", "volume": 0}, {"dbfs": "nan", "volume": 0}]
    quality_cases = []
    for rtt, jitter, loss in [
        (0, 0, 0), (0, 0, 2.5), (0, 0, 2.6), (0, 0, 4.28), (0, 0, 4.3), (0, 0, 6.66),
        (0, 0, 6.7), (0, 0, 10), (0, 0, 10.1), (0, 0, 100), (590, 0, 0), (589, 0, 0),
        (802, 0, 0), (100, 20, 1), (40, 5, 3), (300, 60, 8), (1200, 100, 20), (-5, -1, -3),
        (354.6, 0, 0), (60, 2.5, 0.5),
    ]:  # fmt: skip
        quality_cases.append(
            {
                "rttMs": rtt,
                "jitterMs": jitter,
                "lossPct": loss,
                "score": score(rtt, jitter, loss),
                "level": int(level_from_score(score(rtt, jitter, loss))),
                "quality": int(quality(rtt, jitter, loss)),
            }
        )
    # loss windows: per step [t, expected, lost] fed with add(), then lossPct(t)
    rng = np.random.default_rng(7)
    windows = []
    for name, rates in [
        ("steady 3 %", [0.03] * 30),
        ("jump 0 -> 20 %", [0.0] * 12 + [0.2] * 12),
        ("jump 20 -> 0 %", [0.2] * 12 + [0.0] * 12),
        ("silence then packets", [None] * 5 + [0.05] * 10),
    ]:
        w = LossWindow()
        steps = []
        for i, rate in enumerate(rates):
            t = 0.5 * (i + 1)
            if rate is None:
                expected = lost = 0
            else:
                expected = 25
                lost = int(rng.binomial(expected, rate))
            w.add(t, expected, lost)
            steps.append({"t": t, "expected": expected, "lost": lost, "lossPct": w.loss_pct(t)})
        windows.append({"name": name, "steps": steps})
    return {
        "about": "shared meter vectors: Python (callkit.media) and JavaScript (callkit.js); "
        "regenerate with python -m tests.vectors.make_meters",
        "volumeSamples": volume_samples,
        "volumeLevels": volume_levels,
        "quality": quality_cases,
        "lossWindows": windows,
    }


if __name__ == "__main__":
    OUT.write_text(json.dumps(build(), separators=(",", ":")) + "\n")
    print(f"wrote {OUT}")
