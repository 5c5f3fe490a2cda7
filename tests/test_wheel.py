"""The wheel a user installs: built with ``python -m build``, installed with its dependencies
into a clean venv outside the checkout, it runs ``callkit demo`` and a user's own test file
with the pytest plugin; the build prints no setuptools deprecation warning.

For speed, independent steps overlap: the clean venv is created (without pip of its own; this
venv's pip installs into it with ``--python``, same resolver and index) while the wheel builds,
and the demo and the two pytest runs go at once."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SAMPLE_TEST = ROOT / "callkit" / "samples" / "test_callkit_example.py"

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


# no PYTHONPATH, nothing from the checkout: what a user's shell would have
ENV = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}


STARTED: list[subprocess.Popen[str]] = []


@pytest.fixture(autouse=True)
def _kill_leftovers() -> Iterator[None]:
    """A failed step leaves no command running."""
    yield
    while STARTED:
        proc = STARTED.pop()
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def start(args: list[str], cwd: Path) -> subprocess.Popen[str]:
    """Start a command with a user's environment, its output captured."""
    proc = subprocess.Popen(
        args, cwd=cwd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    STARTED.append(proc)
    return proc


def finish(proc: subprocess.Popen[str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Wait for a started command (killed after ``timeout`` s); assert it succeeded."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        why = f"{proc.args} took over {timeout} s:\n{out[-3000:]}\n{err[-3000:]}"
        raise AssertionError(why) from None
    assert proc.returncode == 0, f"{proc.args}:\n{out[-3000:]}\n{err[-3000:]}"
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def run(args: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return finish(start(args, cwd), timeout)


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
    venv = tmp_path / "venv"
    building = start(
        [sys.executable, "-m", "build", "--wheel", "--outdir", str(dist), str(src)], src
    )
    making_venv = start([sys.executable, "-m", "venv", "--without-pip", str(venv)], tmp_path)
    build = finish(building)
    finish(making_venv, 120)
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

    py = venv / "bin" / "python"
    assert not (venv / "bin" / "pip").exists()  # nothing but the wheel and its dependencies
    pip = [sys.executable, "-m", "pip", "--python", str(py)]
    run([*pip, "install", "-q", f"{wheel}[testing]"], tmp_path, timeout=600)

    user = tmp_path / "user_project"
    (user / "media").mkdir(parents=True)  # a project with its own media/ folder
    (user / "media" / "__init__.py").write_text("MINE = True\n")
    where = run([str(py), "-c", "import callkit, media; print(callkit.__file__, media.MINE)"], user)
    assert str(venv) in where.stdout and "True" in where.stdout, where.stdout

    shutil.copy(SAMPLE_TEST, user / "test_my_app.py")
    demo = start([str(venv / "bin" / "callkit"), "demo", "--seconds", "1"], user)
    modes = {
        mode: start(
            [str(py), "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", f"asyncio_mode={mode}"],
            user,
        )
        for mode in ("strict", "auto")
    }
    shown = finish(demo, 180).stdout
    assert "onCallBegin" in shown or "summary" in shown.lower(), shown[-2000:]
    for result in (finish(proc, 180) for proc in modes.values()):
        assert "2 passed" in result.stdout, result.stdout[-2000:]
