"""A page a later issue fills in: says plainly what will be there and how to do it today."""

from __future__ import annotations

from typing import TYPE_CHECKING

from PySide6.QtCore import Qt
from PySide6.QtGui import QGuiApplication
from PySide6.QtWidgets import QHBoxLayout, QLabel, QLineEdit, QPushButton, QWidget

from gui.qt_widgets import QtCommandBox, card, heading, page_layout

if TYPE_CHECKING:
    from gui.pages import AppContext, PageSpec


class QtPlaceholderPage(QWidget):
    def __init__(self, ctx: AppContext, spec: PageSpec, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.job = ctx.job
        info = spec.placeholder
        layout = page_layout(self)
        layout.addWidget(heading(spec.title, spec.subtitle))
        group, inner = card("Coming in a later version")
        what = QLabel(info["what"])
        what.setWordWrap(True)
        inner.addWidget(what)
        layout.addWidget(group)
        group2, inner2 = card("From the command line")
        how = QLabel(info["cli"])
        how.setWordWrap(True)
        inner2.addWidget(how)
        if "command" in info:
            inner2.addWidget(_static_command(info["command"]))
        else:
            self.command = QtCommandBox(ctx.job, info["verb"], info.get("suffix", ""))
            inner2.addWidget(self.command)
        note = QLabel("Save the job first (File → Save) so the command points at your file.")
        note.setStyleSheet("color: palette(placeholder-text);")
        inner2.addWidget(note)
        layout.addWidget(group2)
        layout.addStretch(1)
        layout.setAlignment(Qt.AlignmentFlag.AlignTop)


def _static_command(text: str) -> QWidget:
    box = QWidget()
    row = QHBoxLayout(box)
    row.setContentsMargins(0, 0, 0, 0)
    edit = QLineEdit(text, readOnly=True)
    edit.setStyleSheet("font-family: monospace;")
    button = QPushButton("Copy CLI command")
    button.clicked.connect(lambda: QGuiApplication.clipboard().setText(text))
    row.addWidget(edit, 1)
    row.addWidget(button)
    return box
