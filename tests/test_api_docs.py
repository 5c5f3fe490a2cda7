"""docs/api.md is generated from the docstrings and kept up to date."""

from __future__ import annotations

import importlib.util
import inspect
from pathlib import Path

from callkit import CallEngine

DOCS = Path(__file__).resolve().parents[1] / "docs"


def _generator():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("gen_api", DOCS / "gen_api.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_api_reference_is_up_to_date() -> None:
    text = _generator().render()
    assert (DOCS / "api.md").read_text() == text, "docs/api.md is stale: python docs/gen_api.py"


def test_every_public_engine_method_is_listed_with_its_signature() -> None:
    text = (DOCS / "api.md").read_text()
    methods = [
        name
        for name, fn in inspect.getmembers(CallEngine, inspect.isfunction)
        if not name.startswith("_")
    ]
    assert len(methods) > 20
    for name in methods:
        assert f"{name}(self" in text, name
    for name in ("callkit.testing.wait_hears", "callkit.media.ToneSource", "callkit.CallParams"):
        assert f"### `{name}`" in text, name
