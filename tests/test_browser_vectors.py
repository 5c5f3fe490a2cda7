"""Case 6: callkit.js's volume and quality functions give the Python numbers on the shared
vectors (tests/vectors/meters.json), evaluated in real Chromium."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .browser_helpers import chromium

pytestmark = pytest.mark.loopback

VECTORS = json.loads((Path(__file__).parent / "vectors" / "meters.json").read_text())

_RUN = """
async (v) => {
  const ck = await import("/sdk/callkit.js");
  const num = (x) => (typeof x === "string" ? Number(x.replace("inf", "Infinity")) : x);
  const out = { volumeSamples: [], volumeLevels: [], quality: [], lossWindows: [] };
  for (const c of v.volumeSamples) {
    const level = ck.rmsDbfs(Int16Array.from(c.samples));
    const shown = Number.isFinite(level) ? level : String(level);
    out.volumeSamples.push([shown, ck.volumeFromDbfs(level)]);
  }
  for (const c of v.volumeLevels) out.volumeLevels.push(ck.volumeFromDbfs(num(c.dbfs)));
  for (const c of v.quality) {
    const s = ck.qualityScore(c.rttMs, c.jitterMs, c.lossPct);
    out.quality.push([s, ck.levelFromScore(s), ck.qualityLevel(c.rttMs, c.jitterMs, c.lossPct)]);
  }
  for (const w of v.lossWindows) {
    const win = new ck.LossWindow();
    out.lossWindows.push(w.steps.map((s) => {
      win.add(s.t, s.expected, s.lost);
      return win.lossPct(s.t);
    }));
  }
  return out;
}
"""


async def test_js_meters_match_python_vectors(server) -> None:
    async with chromium() as browser:
        page = await browser.new_page()
        await page.goto(f"http://127.0.0.1:{server.port}/health")
        got = await page.evaluate(_RUN, VECTORS)
    for case, (level, volume) in zip(VECTORS["volumeSamples"], got["volumeSamples"], strict=True):
        if isinstance(case["dbfs"], str):
            assert level == "-Infinity", case["dbfs"]
        else:
            assert level == pytest.approx(case["dbfs"], abs=1e-9)
        assert volume == case["volume"], case["dbfs"]
    assert got["volumeLevels"] == [c["volume"] for c in VECTORS["volumeLevels"]]
    for case, (s, level, q) in zip(VECTORS["quality"], got["quality"], strict=True):
        assert s == pytest.approx(case["score"], abs=1e-9), case
        assert (level, q) == (case["level"], case["quality"]), case
    for window, values in zip(VECTORS["lossWindows"], got["lossWindows"], strict=True):
        expected = [s["lossPct"] for s in window["steps"]]
        assert values == pytest.approx(expected, abs=1e-9), window["name"]
