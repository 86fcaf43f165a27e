"""A page a later issue fills in: says plainly what will be there and how to do it today."""

from __future__ import annotations

from typing import TYPE_CHECKING

from PySide6.QtWidgets import QLabel, QPlainTextEdit, QWidget

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
        self.command = QtCommandBox(ctx.job, info["verb"], info.get("suffix", ""),
                                    template=info.get("command", ""))
        inner2.addWidget(self.command)
        note = QLabel("Save the job first (File → Save) so the command points at your file."
                      if "command" not in info else
                      "A run's folder is named after the job and the time it started "
                      "(<timestamp>); look it up in the runs folder.")
        note.setStyleSheet("color: palette(placeholder-text);")
        inner2.addWidget(note)
        layout.addWidget(group2)
        group3, inner3 = card("This job")
        self.job_text = QPlainTextEdit(readOnly=True)
        self.job_text.setStyleSheet("font-family: monospace;")
        inner3.addWidget(self.job_text)
        layout.addWidget(group3, 1)
        self.job.changed.connect(self._on_job_changed)
        self._on_job_changed()

    def _on_job_changed(self, *_args: object) -> None:
        self.job_text.setPlainText(self.job.to_yaml())
