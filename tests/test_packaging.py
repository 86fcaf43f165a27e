"""A non-editable install carries resources/ as package data: the wheel holds the catalog,
presets and demo datasets, and an installed `tunesmith-engine` finds them from any folder."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SKIP = (".git", ".venv", "runs", "docs", "tests", "benchmarks", "build", "*.egg-info",
        "__pycache__", ".pytest_cache", ".ruff_cache", ".cache")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Built from a copy: an in-tree build would leave build/ and *.egg-info in the checkout.
    src = tmp_path_factory.mktemp("src") / "tunesmith"
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(*SKIP))
    dist = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                    "--no-build-isolation", "--wheel-dir", str(dist), str(src)],
                   check=True, capture_output=True, env=_env())
    [built] = dist.glob("tunesmith-*.whl")
    return built


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A new venv with only the wheel installed; this environment's packages (torch...) are
    reused through a .pth line, so nothing is downloaded. Returns its bin folder."""
    venv = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    py = venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    site = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()"
                           "['purelib'])"], check=True, capture_output=True, text=True)
    # Install first, while the venv sees nothing else (pip would call it installed already).
    subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "--quiet",
                    "--no-deps", str(wheel)], check=True, capture_output=True, env=_env())
    ours = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (Path(site.stdout.strip()) / "reuse-test-env.pth").write_text("\n".join(ours) + "\n")
    return py.parent


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


def test_wheel_carries_the_resources(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    for kind in ("catalog", "datasets", "presets"):
        for file in (REPO / "resources" / kind).iterdir():
            assert f"tunesmith_resources/{kind}/{file.name}" in names
    assert "engine/resources.py" in names and "gui/__main__.py" in names


def test_installed_engine_reads_its_own_resources(installed: Path, tmp_path: Path) -> None:
    py = installed / ("python.exe" if os.name == "nt" else "python")
    where = subprocess.run(
        [str(py), "-c", "import engine.resources as r, engine.catalog as c; "
         "print(r.root()); print(len(c.names()))"],
        cwd=tmp_path, env=_env(), check=True, capture_output=True, text=True).stdout.split()
    assert Path(where[0]).is_relative_to(installed.parent) and int(where[1]) > 0
    exe = installed / ("tunesmith-engine.exe" if os.name == "nt" else "tunesmith-engine")
    proc = subprocess.run([str(exe), "data", "resources/datasets/pirate-persona.jsonl",
                           "--json"], cwd=tmp_path, env=_env(), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["rows"] == 160


@pytest.mark.integration
def test_installed_engine_trains_a_preset_from_any_folder(installed: Path,
                                                          tmp_path: Path) -> None:
    """`tunesmith-engine train demo-persona` in an empty folder: one step, then stop."""
    exe = installed / ("tunesmith-engine.exe" if os.name == "nt" else "tunesmith-engine")
    proc = subprocess.run([str(exe), "train", "demo-persona", "--events-stdout"],
                          input="stop\n", cwd=tmp_path, env=_env(), capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    events = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert events[-1]["type"] == "run_finished" and events[-1]["status"] == "stopped"
    assert any(e["type"] == "step" for e in events)
    [run] = (tmp_path / "runs").iterdir()
    assert (run / "job.yaml").is_file()
