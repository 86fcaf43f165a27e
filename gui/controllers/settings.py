"""Persisted settings: recent job files, the runs folder, the last job, window geometry.

One home for what the GUI remembers per user (QSettings). The runs folder lives here too: the
engine's default ``output.runs_dir`` is ``runs`` relative to the working folder (right for the
CLI), but the app's runs must not depend on where it was launched from, so the GUI puts them in
the user's data folder (``QStandardPaths.AppDataLocation``/runs) unless the user picks another.
"""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import QByteArray, QObject, QSettings, QStandardPaths, Signal

MAX_RECENT = 8


class AppSettings(QObject):
    """A thin, typed layer over QSettings; tests pass an .ini path to stay isolated."""

    recent_changed = Signal()
    runs_dir_changed = Signal(str)

    def __init__(self, ini_path: str | None = None, parent: QObject | None = None) -> None:
        super().__init__(parent)
        if ini_path:
            self._qs = QSettings(ini_path, QSettings.Format.IniFormat, self)
            # Isolated like the settings themselves: the runs folder sits next to the file.
            self._default_runs = str(Path(ini_path).resolve().parent / "runs")
        else:
            self._qs = QSettings("Tunesmith", "Tunesmith", self)
            self._default_runs = default_runs_dir()

    def runs_dir(self) -> str:
        """The folder every new job's runs go to (absolute; never the launch folder)."""
        value = self._qs.value("runs_dir", "")
        return str(value) if value else self._default_runs

    def set_runs_dir(self, path: str) -> None:
        path = str(Path(path).expanduser().resolve())
        if path != self.runs_dir():
            self._qs.setValue("runs_dir", path)
            self.runs_dir_changed.emit(path)

    def last_job(self) -> str:
        """The job file the app had open when it last closed ('' when none, or it is gone)."""
        value = str(self._qs.value("last_job", "") or "")
        return value if value and Path(value).is_file() else ""

    def set_last_job(self, path: str) -> None:
        self._qs.setValue("last_job", str(Path(path).resolve()) if path else "")

    def recent_files(self) -> list[str]:
        value = self._qs.value("recent_files", [])
        if isinstance(value, str):  # QSettings returns a lone item as a string
            value = [value]
        return [str(v) for v in (value or []) if Path(str(v)).is_file()]

    def add_recent(self, path: str) -> None:
        path = str(Path(path).resolve())
        files = [path, *(f for f in self.recent_files() if f != path)][:MAX_RECENT]
        self._qs.setValue("recent_files", files)
        self.recent_changed.emit()

    def geometry(self) -> QByteArray | None:
        value = self._qs.value("window/geometry")
        return value if isinstance(value, QByteArray) else None

    def set_geometry(self, value: QByteArray) -> None:
        self._qs.setValue("window/geometry", value)

    def value(self, key: str, default: object = None) -> object:
        return self._qs.value(key, default)

    def set_value(self, key: str, value: object) -> None:
        self._qs.setValue(key, value)

    def sync(self) -> None:
        self._qs.sync()


def default_runs_dir() -> str:
    """``<the user's data folder for Tunesmith>/runs`` (e.g. ~/.local/share/Tunesmith/…)."""
    base = QStandardPaths.writableLocation(QStandardPaths.StandardLocation.AppDataLocation)
    return str(Path(base or Path.home() / ".tunesmith") / "runs")
