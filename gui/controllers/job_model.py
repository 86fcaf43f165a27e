"""The job being edited: a QObject holding an ``engine.config.JobConfig`` with change signals."""

from __future__ import annotations

import copy
import dataclasses
import shlex
from pathlib import Path
from typing import Any

from PySide6.QtCore import QObject, Signal

from engine.config import JobConfig, OutputConfig, dump_job, job_from_dict, load_job, save_job


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


class JobModel(QObject):
    """One job file. Keys are dotted: ``training.batch_size``, ``name``.

    ``changed(key)`` fires after every change; key is ``""`` when the whole job was replaced.
    Every change is validated by the config's own ``__post_init__``: a bad value raises
    ``ConfigError`` naming the key and leaves the job as it was.
    """

    changed = Signal(str)
    path_changed = Signal(str)
    dirty_changed = Signal(bool)

    def __init__(self, job: JobConfig | None = None, parent: QObject | None = None, *,
                 runs_dir: str = "") -> None:
        super().__init__(parent)
        # The app's runs folder (AppSettings.runs_dir): a job that keeps the engine's default
        # ``runs`` (relative to wherever the app was launched) trains there instead.
        self.runs_dir = runs_dir
        self._job = self._placed(job or JobConfig())
        self._path = ""
        self._dirty = False

    # ------------------------------------------------------------------ reading
    @property
    def job(self) -> JobConfig:
        """The current job; treat it as read-only and change it through :meth:`set`."""
        return self._job

    @property
    def path(self) -> str:
        return self._path

    @property
    def dirty(self) -> bool:
        return self._dirty

    def get(self, key: str) -> Any:
        obj: Any = self._job
        for part in key.split("."):
            obj = getattr(obj, part)
        return obj

    def field(self, key: str) -> dataclasses.Field[Any]:
        section, _, name = key.rpartition(".")
        owner = self.get(section) if section else self._job
        for f in dataclasses.fields(owner):
            if f.name == name:
                return f
        raise KeyError(key)

    def to_yaml(self) -> str:
        return dump_job(self._job)

    # ------------------------------------------------------------------ changing
    def set(self, key: str, value: Any) -> None:
        if self.get(key) == value:
            return
        section, _, name = key.rpartition(".")
        if section:
            new_section = dataclasses.replace(self.get(section), **{name: value})
            self._job = dataclasses.replace(self._job, **{section: new_section})
        else:
            self._job = dataclasses.replace(self._job, **{name: value})
        self._set_dirty(True)
        self.changed.emit(key)

    def update(self, partial: dict[str, Any]) -> None:
        """Merge a nested mapping (a preset, an advisor recommendation) into the job."""
        self.replace(job_from_dict(_merge(self._job.to_dict(), partial)), dirty=True)

    def replace(self, job: JobConfig, *, dirty: bool = True) -> None:
        self._job = self._placed(job)
        self._set_dirty(dirty)
        self.changed.emit("")

    def _placed(self, job: JobConfig) -> JobConfig:
        if self.runs_dir and job.output.runs_dir == OutputConfig().runs_dir:
            output = dataclasses.replace(job.output, runs_dir=self.runs_dir)
            return dataclasses.replace(job, output=output)
        return job

    # ------------------------------------------------------------------ files
    def load(self, path: str | Path) -> None:
        job = load_job(path)  # raises UserError / ConfigError naming the key
        self._set_path(str(Path(path)))
        self.replace(job, dirty=False)

    def save(self, path: str | Path | None = None) -> str:
        target = str(path or self._path)
        if not target:
            raise ValueError("no path to save the job to")
        save_job(self._job, target)
        self._set_path(target)
        self._set_dirty(False)
        return target

    def cli_command(self, verb: str = "train") -> str:
        job_file = _display_path(self._path) if self._path else f"{self._job.name}.yaml"
        return f"python -m engine {verb} {shlex.quote(job_file)}"

    def _set_path(self, path: str) -> None:
        if path != self._path:
            self._path = path
            self.path_changed.emit(path)

    def _set_dirty(self, dirty: bool) -> None:
        if dirty != self._dirty:
            self._dirty = dirty
            self.dirty_changed.emit(dirty)


def _display_path(path: str) -> str:
    """A path relative to the working folder when it lies inside it (shorter commands)."""
    p = Path(path).resolve()
    try:
        return str(p.relative_to(Path.cwd()))
    except ValueError:
        return str(p)
