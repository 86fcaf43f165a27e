"""File dialogs that open where the user last was (or their home folder, never the folder
the app was launched from), and opening a folder in the system's file manager.

One home for both: every page's Browse button goes through :func:`open_file`,
:func:`save_file` or :func:`existing_dir`, which remember the chosen folder in the settings.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from PySide6.QtCore import QUrl
from PySide6.QtGui import QDesktopServices
from PySide6.QtWidgets import QFileDialog, QWidget

if TYPE_CHECKING:
    from gui.controllers.settings import AppSettings

LAST_DIR_KEY = "dialogs/last_dir"


def start_dir(settings: AppSettings | None, suggested: str = "") -> str:
    """Where a dialog opens: ``suggested`` when it is an existing path (its folder for a
    file name), else the last folder used, else the home folder."""
    if suggested:
        path = Path(suggested).expanduser()
        if path.is_absolute() and (path.exists() or path.parent.is_dir()):
            return str(path)
    last = settings.value(LAST_DIR_KEY) if settings is not None else None
    usable = isinstance(last, str) and last and Path(last).is_dir()
    folder = str(last) if usable else str(Path.home())
    if suggested and not Path(suggested).is_absolute():
        return str(Path(folder) / suggested)  # a bare file name, e.g. "my-run.yaml"
    return folder


def remember(settings: AppSettings | None, chosen: str) -> None:
    if settings is None or not chosen:
        return
    path = Path(chosen)
    settings.set_value(LAST_DIR_KEY, str(path if path.is_dir() else path.parent))


def open_file(parent: QWidget, settings: AppSettings | None, title: str, filters: str,
              suggested: str = "") -> str:
    return _pick_file(QFileDialog.getOpenFileName, parent, settings, title, filters, suggested)


def save_file(parent: QWidget, settings: AppSettings | None, title: str, filters: str,
              suggested: str = "") -> str:
    return _pick_file(QFileDialog.getSaveFileName, parent, settings, title, filters, suggested)


def _pick_file(dialog: Any, parent: QWidget, settings: AppSettings | None, title: str,
               filters: str, suggested: str) -> str:
    """Open ``dialog`` (QFileDialog's open or save) in the remembered folder; remember the
    folder of what was picked."""
    path, _ = dialog(parent, title, start_dir(settings, suggested), filters)
    remember(settings, path)
    return str(path)


def existing_dir(parent: QWidget, settings: AppSettings | None, title: str,
                 suggested: str = "") -> str:
    path = QFileDialog.getExistingDirectory(parent, title, start_dir(settings, suggested))
    remember(settings, path)
    return path


def open_folder(folder: str | Path) -> str:
    """Show ``folder`` in the file manager; "" on success, else what to tell the user."""
    folder = Path(folder)
    if not folder.is_dir():
        return f"{folder} does not exist (any more)."
    if QDesktopServices.openUrl(QUrl.fromLocalFile(str(folder))):
        return ""
    return (f"No file manager answered. The folder is {folder} "
            "(copy the path, or install a file manager such as xdg-utils' default).")
