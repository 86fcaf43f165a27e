"""The desktop bundle (packaging/tunesmith.spec): its entry, and the built bundle itself.

The bundle tests run the executable `python scripts/bootstrap.py bundle` built (about 1.5 GB,
minutes to build), so they are skipped unless it exists: at dist/tunesmith/tunesmith, or where
TUNESMITH_BUNDLE names it. CI does not build it on every run; docs/packaging.md has the command.
"""

from __future__ import annotations

import json
import os
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

from engine import launch

ROOT = Path(__file__).resolve().parent.parent
BUNDLE = Path(os.environ.get("TUNESMITH_BUNDLE") or ROOT / "dist" / "tunesmith" / "tunesmith")
needs_bundle = pytest.mark.skipif(
    not BUNDLE.is_file(), reason=f"no built bundle at {BUNDLE} (build it with `python "
    "scripts/bootstrap.py bundle`, or set TUNESMITH_BUNDLE to its executable)")


def _entry():
    return runpy.run_path(str(ROOT / "packaging" / "tunesmith_main.py"), run_name="entry")


def test_engine_command_is_python_dash_m_engine_from_this_interpreter() -> None:
    assert launch.engine_command("explain", "--model", "x") == [
        sys.executable, "-m", "engine", "explain", "--model", "x"]
    assert launch.python_command("print(1)") == [sys.executable, "-c", "print(1)"]
    assert launch.frozen() is False


def test_entry_dispatches_dash_m_engine_to_the_engine(capsys) -> None:
    assert _entry()["main"](["-m", "engine", "no-such-verb"]) == 2
    assert "unknown verb 'no-such-verb'" in capsys.readouterr().err


def test_entry_runs_dash_c_and_refuses_other_modules(capsys) -> None:
    main = _entry()["main"]
    assert main(["-c", "print('from -c')"]) == 0
    assert main(["-m", "pip"]) == 2
    out = capsys.readouterr()
    assert "from -c" in out.out and "only `-m engine`" in out.err


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env.update(QT_QPA_PLATFORM="offscreen", OMP_NUM_THREADS="1")
    return env


@pytest.mark.bundle
@needs_bundle
def test_bundle_window_comes_up_offscreen_and_quits(tmp_path) -> None:
    proc = subprocess.run([str(BUNDLE), "--smoke"], capture_output=True, text=True,
                          timeout=300, cwd=tmp_path, env=_env())
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    assert any(line.startswith("visible ") for line in lines), proc.stdout
    assert "title Tunesmith" in proc.stdout


@pytest.mark.bundle
@needs_bundle
def test_bundle_runs_the_engine_child_on_the_offline_default(tmp_path) -> None:
    """The path every page takes: the bundle's executable as `-m engine VERB` (engine.launch)."""
    cmd = [str(BUNDLE), "-m", "engine", "explain", "--model", "smollm2-135m-instruct",
           "--method", "lora", "--json"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path,
                          env=_env())
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout)
    assert report, proc.stdout[:500]
    bad = subprocess.run([str(BUNDLE), "-m", "engine", "explain", "--model", "./no-such-folder",
                          "--method", "lora"], capture_output=True, text=True, timeout=300,
                         cwd=tmp_path, env=_env())
    assert bad.returncode == 2, bad.stderr[-2000:]
    assert "no-such-folder" in bad.stderr and "Traceback" not in bad.stderr
