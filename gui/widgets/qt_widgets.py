"""Small widgets shared by the pages: headings, cards, the CLI command box, a number spin box."""

from __future__ import annotations

import math
from typing import Any

from PySide6.QtCore import Qt
from PySide6.QtGui import QGuiApplication, QValidator
from PySide6.QtWidgets import (
    QDoubleSpinBox,
    QFrame,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from gui.controllers.job_model import JobModel


def connect_handlers(source: Any, view: Any, *signals: str) -> None:
    """Connect each named signal of ``source`` to the view's ``_on_<signal>`` slot."""
    for name in signals:
        getattr(source, name).connect(getattr(view, f"_on_{name}"))


def heading(text: str, subtitle: str = "") -> QWidget:
    box = QWidget()
    layout = QVBoxLayout(box)
    layout.setContentsMargins(0, 0, 0, 4)
    layout.setSpacing(2)
    title = QLabel(text)
    title.setObjectName("pageTitle")
    title.setStyleSheet("font-size: 18pt; font-weight: 600;")
    layout.addWidget(title)
    if subtitle:
        sub = QLabel(subtitle)
        sub.setWordWrap(True)
        sub.setObjectName("pageSubtitle")
        layout.addWidget(sub)
    return box


def card(title: str) -> tuple[QGroupBox, QVBoxLayout]:
    group = QGroupBox(title)
    layout = QVBoxLayout(group)
    layout.setContentsMargins(10, 12, 10, 10)
    layout.setSpacing(6)
    return group, layout


def hline() -> QFrame:
    line = QFrame()
    line.setFrameShape(QFrame.Shape.HLine)
    line.setFrameShadow(QFrame.Shadow.Sunken)
    return line


def page_layout(page: QWidget) -> QVBoxLayout:
    layout = QVBoxLayout(page)
    layout.setContentsMargins(20, 16, 20, 16)
    layout.setSpacing(10)
    return layout


class QtCommandBox(QWidget):
    """The CLI command for the current job (``python -m engine train job.yaml``) with Copy."""

    def __init__(self, job: JobModel, verb: str = "train", suffix: str = "",
                 parent: QWidget | None = None, *, template: str = "") -> None:
        super().__init__(parent)
        self.job, self._verb, self._suffix, self._template = job, verb, suffix, template
        self.edit = QLineEdit(readOnly=True)
        self.edit.setStyleSheet("font-family: monospace;")
        self.copy_button = QPushButton("Copy CLI command")
        self.copy_button.setToolTip("Copy the command that runs this job from a terminal")
        self.copy_button.clicked.connect(self._on_copy)
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.edit, 1)
        layout.addWidget(self.copy_button)
        job.changed.connect(self._on_job_changed)
        job.path_changed.connect(self._on_job_changed)
        self._on_job_changed()

    def command(self) -> str:
        if self._template:  # e.g. "python -m engine export {run_dir} --out exported"
            job = self.job.job
            run_dir = f"{job.output.runs_dir.rstrip('/')}/{job.name}-<timestamp>"
            return self._template.format(run_dir=run_dir)
        text = self.job.cli_command(self._verb)
        return f"{text} {self._suffix}".strip()

    def _on_job_changed(self, *_args: object) -> None:
        self.edit.setText(self.command())

    def _on_copy(self) -> None:
        QGuiApplication.clipboard().setText(self.command())
        self.copy_button.setText("Copied ✓")


class SciSpinBox(QDoubleSpinBox):
    """A float spin box that shows and accepts scientific notation (2e-4)."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setDecimals(12)
        self.setRange(-1e12, 1e12)
        self.setKeyboardTracking(False)

    def textFromValue(self, value: float) -> str:
        return f"{value:g}"

    def valueFromText(self, text: str) -> float:
        try:
            return float(text)
        except ValueError:
            return self.value()

    def validate(self, text: str, pos: int) -> object:
        try:
            float(text)
        except ValueError:
            ok = all(c in "0123456789.eE+-" for c in text)
            return (QValidator.State.Intermediate if ok else QValidator.State.Invalid), text, pos
        return QValidator.State.Acceptable, text, pos

    def stepBy(self, steps: int) -> None:
        value = self.value()
        step = 10 ** math.floor(math.log10(abs(value))) if value else 0.01
        self.setValue(value + steps * step)
        self.editingFinished.emit()


def muted(label: QLabel) -> QLabel:
    label.setStyleSheet("color: palette(placeholder-text);")
    return label


def set_elided_tooltip(label: QLabel) -> None:
    label.setToolTip(label.text())
    label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)


def human_count(n: Any) -> str:
    if not isinstance(n, int | float):
        return "—"
    for div, unit in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= div:
            return f"{n / div:.1f}{unit}".replace(".0", "")
    return str(int(n))
