"""Tunesmith's bundled files (model catalog, presets, demo datasets), wherever it is installed.

The repository keeps them in ``resources/`` (DESIGN.md's layout); installed, the same files are
the package ``tunesmith_resources`` (setup.py maps the folder), read here through
importlib.resources. A source checkout that was never installed reads the folder itself.
Job files name a bundled file by its repository path, ``resources/datasets/...``: such a path
finds the bundled file from any working folder.
"""

from __future__ import annotations

import functools
import importlib.resources
from pathlib import Path

from engine.errors import UserError

PACKAGE = "tunesmith_resources"
PREFIX = "resources"  # the first part of a job file's path to a bundled file
_CHECKOUT = Path(__file__).resolve().parent.parent / "resources"


@functools.cache
def root() -> Path:
    """The folder holding catalog/, datasets/ and presets/."""
    try:
        folder = Path(str(importlib.resources.files(PACKAGE)))
    except ModuleNotFoundError:  # a source checkout run without installing it
        folder = _CHECKOUT
    return folder


def names(kind: str) -> list[str]:
    """The file names of one kind ("catalog", "datasets" or "presets"), sorted."""
    folder = root() / kind
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if p.is_file() and p.name != "README.md")


def path(kind: str, name: str) -> Path:
    """The bundled file ``kind/name``; the error lists the known names."""
    file = root() / kind / name
    if not file.is_file():
        known = ", ".join(names(kind)) or "none"
        raise UserError(f"no bundled {kind} file {name!r} (known: {known})",
                        f"reinstall Tunesmith if {root()} is incomplete", code="bad_input")
    return file


def preset(name: str) -> Path | None:
    """The bundled preset ``name`` (with or without .yaml), or None."""
    file = root() / "presets" / (name if name.endswith(".yaml") else f"{name}.yaml")
    return file if "/" not in name and file.is_file() else None


def bundled(relative: str | Path) -> Path | None:
    """The bundled file that ``resources/<kind>/<name>`` names, or None."""
    parts = Path(relative).parts
    if len(parts) < 3 or parts[0] != PREFIX or Path(relative).is_absolute():
        return None
    file = root().joinpath(*parts[1:])
    return file if file.exists() else None


def locate(source: str | Path) -> Path:
    """A path as a job file or the CLI gives it, bundled files found from any folder.

    ``resources/...`` means the bundled file when there is one (not the working folder's);
    any other path is taken as written, relative to the working folder.
    """
    return bundled(source) or Path(source).expanduser()
