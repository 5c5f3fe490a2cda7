"""The Python meters against the shared vectors (tests/vectors/meters.json); callkit.js is
checked against the same file in tests/test_browser_vectors.py."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from callkit.media.quality import LossWindow, level_from_score, quality, score
from callkit.media.volume import rms_dbfs, volume_from_dbfs

VECTORS: dict[str, Any] = json.loads(
    (Path(__file__).parent / "vectors" / "meters.json").read_text()
)


def num(x: float | str) -> float:
    """JSON numbers, plus "-inf" / "inf" / "nan" (JSON has no infinities)."""
    return float(x)


@pytest.mark.parametrize("case", VECTORS["volumeSamples"], ids=lambda c: str(c["dbfs"]))
def test_volume_from_samples(case: dict[str, Any]) -> None:
    level = rms_dbfs(np.array(case["samples"], dtype=np.int16))
    expected = num(case["dbfs"])
    if math.isinf(expected):
        assert level == expected
    else:
        assert level == pytest.approx(expected, abs=1e-9)
    assert volume_from_dbfs(level) == case["volume"]


@pytest.mark.parametrize("case", VECTORS["volumeLevels"], ids=lambda c: str(c["dbfs"]))
def test_volume_from_level(case: dict[str, Any]) -> None:
    assert volume_from_dbfs(num(case["dbfs"])) == case["volume"]


@pytest.mark.parametrize(
    "case", VECTORS["quality"], ids=lambda c: f"{c['rttMs']}-{c['jitterMs']}-{c['lossPct']}"
)
def test_quality(case: dict[str, Any]) -> None:
    s = score(case["rttMs"], case["jitterMs"], case["lossPct"])
    assert s == pytest.approx(case["score"], abs=1e-9)
    assert level_from_score(s) == case["level"]
    assert quality(case["rttMs"], case["jitterMs"], case["lossPct"]) == case["quality"]


@pytest.mark.parametrize("window", VECTORS["lossWindows"], ids=lambda w: w["name"])
def test_loss_window(window: dict[str, Any]) -> None:
    w = LossWindow()
    for step in window["steps"]:
        w.add(step["t"], step["expected"], step["lost"])
        got = w.loss_pct(step["t"])
        if step["lossPct"] is None:
            assert got is None
        else:
            assert got == pytest.approx(step["lossPct"], abs=1e-9)


def test_vectors_cover_the_documented_points() -> None:
    """The file holds DESIGN section 4's anchor points (so it cannot drift silently)."""
    by_level = {c["dbfs"]: c["volume"] for c in VECTORS["volumeLevels"]}
    assert by_level[-60.0] == 0 and by_level[-20.0] == 80 and by_level[-10.0] == 100
    cutoffs = {c["lossPct"]: c["level"] for c in VECTORS["quality"] if c["rttMs"] == 0}
    assert (cutoffs[2.5], cutoffs[2.6], cutoffs[10], cutoffs[10.1]) == (1, 2, 4, 5)
