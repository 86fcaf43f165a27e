"""A form built from config dataclass fields, so new config keys appear without GUI changes.

int → spin box, float → spin box taking 2e-4, bool → check box, ``choices`` → combo box,
str and list[str] → line edit (lists comma-separated), with a Browse… folder picker when the
field's metadata says ``folder``. Tooltips are each field's help text.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any

from PySide6.QtCore import Signal
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from engine.config import JobConfig
from engine.errors import UserError
from gui.controllers.job_model import JobModel
from gui.widgets.qt_wheel_guard import guard_inputs
from gui.widgets.qt_widgets import SciSpinBox
from gui.widgets.theme import WONT_FIT

LABELS = {"lr_scheduler": "LR scheduler", "r": "Rank (r)", "max_steps": "Max steps",
          "grad_accum": "Gradient accumulation", "eval_steps": "Eval every N steps",
          "save_steps": "Save every N steps"}


def label_for(name: str) -> str:
    return LABELS.get(name, name.replace("_", " ").capitalize())


def section_keys(section: str) -> list[str]:
    """Every dotted key of a JobConfig section, in declaration order ('' for top level)."""
    hints = typing.get_type_hints(JobConfig)
    cls = hints[section] if section else JobConfig
    prefix = f"{section}." if section else ""
    return [f"{prefix}{f.name}" for f in dataclasses.fields(cls)
            if not dataclasses.is_dataclass(typing.get_type_hints(cls)[f.name])]


def _field_type(job: JobModel, key: str) -> Any:
    section, _, name = key.rpartition(".")
    owner = type(job.get(section)) if section else JobConfig
    return typing.get_type_hints(owner)[name]


def ask_folder(parent: QWidget, title: str, start: str) -> str:
    """A folder picker ('' when cancelled); tests replace it."""
    return QFileDialog.getExistingDirectory(parent, title, start)


class QtConfigForm(QWidget):
    """Editors for ``keys`` of the job; each edit goes through ``JobModel.set``.

    ``folder_chosen(key, path)`` fires after a folder was picked with a Browse… button.
    """

    folder_chosen = Signal(str, str)

    def __init__(self, job: JobModel, keys: list[str], parent: QWidget | None = None, *,
                 inline: bool = False) -> None:
        super().__init__(parent)
        self.job = job
        self.editors: dict[str, QWidget] = {}
        self.labels: dict[str, QLabel] = {}
        self.browse_buttons: dict[str, QPushButton] = {}
        self._inline = QHBoxLayout() if inline else None
        self._form = QFormLayout()
        self._form.setLabelAlignment(self._form.labelAlignment())
        self._form.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
        self.error = QLabel()
        self.error.setWordWrap(True)
        self.error.setStyleSheet(f"color: {WONT_FIT};")
        self.error.hide()
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(self._inline or self._form)
        layout.addWidget(self.error)
        for key in keys:
            self._add_row(key)
        job.changed.connect(self._on_job_changed)

    def _add_row(self, key: str) -> None:
        editor = self._make_editor(key)
        guard_inputs(editor)  # scrolling the form never changes a setting
        help_text = self.job.field(key).metadata.get("help", "")
        editor.setToolTip(help_text)
        label = QLabel(label_for(key.rpartition(".")[2]))
        label.setToolTip(help_text)
        self.editors[key] = editor
        self.labels[key] = label
        field_widget = self._with_browse(key, editor)
        if self._inline is not None:
            self._inline.addWidget(label)
            self._inline.addWidget(field_widget)
            self._inline.addSpacing(12)
        else:
            self._form.addRow(label, field_widget)
        self._show(key)

    def _with_browse(self, key: str, editor: QWidget) -> QWidget:
        """The editor, or for a folder key the editor and a Browse… button in a row."""
        if not self.job.field(key).metadata.get("folder"):
            return editor
        row = QWidget()
        layout = QHBoxLayout(row)
        layout.setContentsMargins(0, 0, 0, 0)
        button = QPushButton("Browse…")
        button.setToolTip("Choose the folder")
        button.clicked.connect(lambda _c=False, k=key: self._on_browse(k))
        layout.addWidget(editor, 1)
        layout.addWidget(button)
        self.browse_buttons[key] = button
        return row

    def _on_browse(self, key: str) -> None:
        path = ask_folder(self, f"Choose {label_for(key.rpartition('.')[2]).lower()}",
                          str(self.job.get(key)))
        if path:
            self._commit(key, path)
            if self.job.get(key) == path:
                self.folder_chosen.emit(key, path)

    def _make_editor(self, key: str) -> QWidget:
        tp = _field_type(self.job, key)
        choices = self.job.field(key).metadata.get("choices")
        if choices:
            combo = QComboBox()
            combo.addItems(list(choices))
            combo.currentTextChanged.connect(lambda text, k=key: self._commit(k, text))
            return combo
        if tp is bool:
            box = QCheckBox()
            box.toggled.connect(lambda on, k=key: self._commit(k, on))
            return box
        if tp is int:
            spin = QSpinBox()
            spin.setRange(-1 if key.endswith("max_steps") else 0, 10**9)
            spin.setKeyboardTracking(False)
            spin.valueChanged.connect(lambda v, k=key: self._commit(k, v))
            return spin
        if tp is float:
            sci = SciSpinBox()
            sci.setRange(0, 1e9)
            sci.editingFinished.connect(lambda k=key, w=sci: self._commit(k, w.value()))
            return sci
        edit = QLineEdit()
        edit.editingFinished.connect(lambda k=key, w=edit: self._commit_text(k, w.text()))
        return edit

    def _commit_text(self, key: str, text: str) -> None:
        if typing.get_origin(_field_type(self.job, key)) is list:
            self._commit(key, [t.strip() for t in text.split(",") if t.strip()])
        else:
            self._commit(key, text)

    def _commit(self, key: str, value: Any) -> None:
        try:
            self.job.set(key, value)
        except UserError as exc:
            self.error.setText(exc.message)
            self.error.show()
            self._show(key)
            return
        self.error.hide()

    def _on_job_changed(self, key: str) -> None:
        for k in self.editors if not key else [key]:
            if k in self.editors:
                self._show(k)

    def _show(self, key: str) -> None:
        editor, value = self.editors[key], self.job.get(key)
        editor.blockSignals(True)
        if isinstance(editor, QComboBox):
            editor.setCurrentText(str(value))
        elif isinstance(editor, QCheckBox):
            editor.setChecked(bool(value))
        elif isinstance(editor, QSpinBox | SciSpinBox):
            editor.setValue(value)
        elif isinstance(editor, QLineEdit):
            editor.setText(", ".join(value) if isinstance(value, list) else str(value))
        editor.blockSignals(False)

    def set_row_visible(self, key: str, visible: bool) -> None:
        if self._inline is not None:
            self.labels[key].setVisible(visible)
            self.editors[key].setVisible(visible)
        else:
            self._form.setRowVisible(self.labels[key], visible)
