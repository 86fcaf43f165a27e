"""Persisted settings: recent job files and window geometry (QSettings)."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import QByteArray, QObject, QSettings, Signal

MAX_RECENT = 8


class AppSettings(QObject):
    """A thin, typed layer over QSettings; tests pass an .ini path to stay isolated."""

    recent_changed = Signal()

    def __init__(self, ini_path: str | None = None, parent: QObject | None = None) -> None:
        super().__init__(parent)
        if ini_path:
            self._qs = QSettings(ini_path, QSettings.Format.IniFormat, self)
        else:
            self._qs = QSettings("Tunesmith", "Tunesmith", self)

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
