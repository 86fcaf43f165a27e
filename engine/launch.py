"""The one command line that starts an engine child (``python -m engine VERB ...``).

Every caller that runs the engine as a child process (the GUI's Train, Evaluate, Chat, Export
and Compare pages, and engine.compare's own trial runs) builds its command here. From a source
checkout or an installed package, ``sys.executable`` is the Python interpreter. Inside the
PyInstaller bundle (packaging/tunesmith.spec) it is the bundle's own executable, whose entry
(packaging/tunesmith_main.py) answers the same ``-m engine ...`` and ``-c CODE`` forms, so the
command is the same in both and ``engine.runs`` recognises a live run either way.
"""

from __future__ import annotations

import sys


def interpreter() -> str:
    """The program that runs Python code for Tunesmith: the interpreter, or the bundle."""
    return sys.executable


def frozen() -> bool:
    """True inside the PyInstaller bundle."""
    return bool(getattr(sys, "frozen", False))


def engine_command(verb: str, *args: str) -> list[str]:
    """``python -m engine VERB ARGS`` for this installation."""
    return [interpreter(), "-m", "engine", verb, *args]


def python_command(code: str) -> list[str]:
    """``python -c CODE`` for this installation (a child that only imports and measures)."""
    return [interpreter(), "-c", code]
