"""The Help menu's windows: the user guide, the keyboard shortcuts and the About box.

The About box reads the versions and the detected GPU from ``engine.telemetry`` (in a worker:
importing torch takes seconds); the guide is ``docs/guide.md`` rendered in the app.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import PySide6
from PySide6.QtCore import qVersion
from PySide6.QtGui import QIcon
from PySide6.QtWidgets import QDialog, QDialogButtonBox, QTextBrowser, QVBoxLayout, QWidget

import engine
from engine import resources

GUIDE = Path("docs") / "guide.md"
ICON_NAME = "tunesmith"  # resources/icons/tunesmith.svg and tunesmith-<size>.png


def guide_path() -> Path | None:
    """docs/guide.md of a source checkout, or the copy bundled with the resources."""
    for folder in (resources.root().parent, resources.root()):
        path = folder / GUIDE
        if path.is_file():
            return path
    return None


def window_icon() -> QIcon | None:
    """The app's icon from resources/icons (SVG, plus any PNG sizes), or None without one."""
    folder = resources.root() / "icons"
    files = sorted(folder.glob(f"{ICON_NAME}*.png")) if folder.is_dir() else []
    svg = folder / f"{ICON_NAME}.svg"
    if svg.is_file():
        files.insert(0, svg)
    if not files:
        return None
    icon = QIcon()
    for file in files:
        icon.addFile(str(file))
    return None if icon.isNull() else icon


def about_html(info: dict[str, Any]) -> str:
    """The About box's text from ``engine.telemetry.library_versions()``."""
    rows = [("Tunesmith", engine.__version__), ("Qt / PySide6",
                                                   f"{qVersion()} / {PySide6.__version__}")]
    for name, version in info.get("versions", {}).items():
        rows.append((name, version or "not installed"))
    cuda = info.get("cuda")
    rows.append(("CUDA (torch build)", (cuda or "none (CPU build)")
                 + ("" if info.get("cuda_available") or not cuda else ", no GPU answers")))
    gpus = info.get("gpus") or []
    gpu_text = "; ".join(f"{g.get('name', 'GPU')} ({g.get('total_gb', 0):.1f} GiB, driver "
                         f"{g.get('driver') or '?'})" for g in gpus)
    rows.append(("GPU", gpu_text or f"none detected ({info.get('gpu_reason') or 'no NVML'})"))
    cells = "".join(f"<tr><td><b>{html.escape(k)}</b>&nbsp;&nbsp;</td>"
                    f"<td>{html.escape(str(v))}</td></tr>" for k, v in rows)
    return ("<h3>Tunesmith</h3><p>Fine-tune language models on your own machine: pick a "
            "model, data and method, watch it train, chat with it and export it.</p>"
            f"<table>{cells}</table>")


def shortcuts_html(shortcuts: list[tuple[str, str]]) -> str:
    cells = "".join(f"<tr><td><b>{html.escape(keys)}</b>&nbsp;&nbsp;&nbsp;</td>"
                    f"<td>{html.escape(what)}</td></tr>" for keys, what in shortcuts)
    return f"<h3>Keyboard shortcuts</h3><table>{cells}</table>"


class QtTextDialog(QDialog):
    """A closable window with rich text or Markdown (the guide, shortcuts, About)."""

    def __init__(self, title: str, parent: QWidget | None = None, *, size: tuple[int, int]
                 = (520, 420)) -> None:
        super().__init__(parent)
        self.setWindowTitle(title)
        self.browser = QTextBrowser()
        self.browser.setOpenExternalLinks(True)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        buttons.rejected.connect(self.close)
        layout = QVBoxLayout(self)
        layout.addWidget(self.browser)
        layout.addWidget(buttons)
        self.resize(*size)

    def set_html(self, text: str) -> None:
        self.browser.setHtml(text)

    def set_markdown(self, text: str, folder: Path) -> None:
        self.browser.setSearchPaths([str(folder)])  # the guide's screenshots, by relative path
        self.browser.setMarkdown(text)


def guide_dialog(parent: QWidget) -> QtTextDialog:
    dialog = QtTextDialog("Tunesmith guide", parent, size=(860, 700))
    path = guide_path()
    if path is None:
        dialog.set_html("<h3>Tunesmith guide</h3><p>The guide (docs/guide.md) is not part of "
                        "this installation. Each page's heading says what it is for; hover a "
                        "setting for what it does.</p>")
    else:
        dialog.set_markdown(path.read_text(encoding="utf-8"), path.parent)
    return dialog
