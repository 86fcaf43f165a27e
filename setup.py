"""The one packaging fact pyproject.toml cannot state: resources/ installs as a package.

DESIGN.md keeps resources/ (catalog, presets, demo datasets) at the top of the repository.
Installed, it becomes the package ``tunesmith_resources`` (its files as package data), so
engine.resources finds it through importlib.resources wherever Tunesmith is installed.
Everything else about the distribution is in pyproject.toml.
"""

from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).resolve().parent
KINDS = sorted(p.name for p in (HERE / "resources").iterdir()
               if p.is_dir() and not p.name.startswith((".", "_")))

setup(
    packages=[*find_packages(include=["engine*", "gui*"]), "tunesmith_resources",
              *(f"tunesmith_resources.{kind}" for kind in KINDS)],
    package_dir={"tunesmith_resources": "resources"},
    package_data={"tunesmith_resources": ["*.md"],
                  **{f"tunesmith_resources.{kind}": ["*"] for kind in KINDS}},
)
