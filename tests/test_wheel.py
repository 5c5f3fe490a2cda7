"""The wheel a user installs: built with ``python -m build``, installed with its dependencies
into a clean venv outside the checkout, it runs ``callkit demo`` and a user's own test file
with the pytest plugin; the build prints no setuptools deprecation warning."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SAMPLE_TEST = ROOT / "callkit" / "samples" / "test_callkit_example.py"

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def run(args: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    # no PYTHONPATH, nothing from the checkout: what a user's shell would have
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{args}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def test_wheel_installs_in_a_clean_venv_and_runs_demo_and_a_user_test(tmp_path: Path) -> None:
    # a copy of the tracked files, so the build leaves nothing in the checkout
    src = tmp_path / "src"
    files = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split("\0")
    for name in filter(None, files):
        if (ROOT / name).is_file():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, src / name)
    dist = tmp_path / "dist"
    build = run([sys.executable, "-m", "build", "--wheel", "--outdir", str(dist), str(src)], src)
    log = build.stdout + build.stderr
    assert "Successfully built callkit-" in log
    for noise in ("SetuptoolsDeprecationWarning", "License classifiers", "is absent from the"):
        assert noise not in log, log[-3000:]
    (wheel,) = dist.glob("callkit-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert not [n for n in names if n.split("/")[0] in ("media", "signaling", "samples")]
    for needed in (
        "callkit/testing.py",
        "callkit/signaling/records/store.py",
        "callkit/signaling/web/callkit.js",
        "callkit/samples/test_callkit_example.py",
    ):
        assert needed in names, needed

    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", str(venv)], tmp_path)
    py = venv / "bin" / "python"
    run([str(py), "-m", "pip", "install", "-q", f"{wheel}[testing]"], tmp_path, timeout=600)

    user = tmp_path / "user_project"
    (user / "media").mkdir(parents=True)  # a project with its own media/ folder
    (user / "media" / "__init__.py").write_text("MINE = True\n")
    where = run([str(py), "-c", "import callkit, media; print(callkit.__file__, media.MINE)"], user)
    assert str(venv) in where.stdout and "True" in where.stdout, where.stdout

    demo = run([str(venv / "bin" / "callkit"), "demo", "--seconds", "1"], user, timeout=180)
    assert "onCallBegin" in demo.stdout or "summary" in demo.stdout.lower(), demo.stdout[-2000:]

    shutil.copy(SAMPLE_TEST, user / "test_my_app.py")
    for mode in ("strict", "auto"):
        result = run(
            [str(py), "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", f"asyncio_mode={mode}"],
            user,
            timeout=180,
        )
        assert "2 passed" in result.stdout, result.stdout[-2000:]
