"""Hyperparameters: sane defaults, an Advanced section, presets by VRAM tier, the job file."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from PySide6.QtCore import Qt
from PySide6.QtWidgets import (
    QComboBox,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QScrollArea,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from engine.config import JobConfig
from engine.errors import UserError
from gui.controllers import job_files
from gui.controllers.presets import load_preset, preset_names
from gui.widgets.qt_config_form import QtConfigForm, section_keys
from gui.widgets.qt_widgets import QtCommandBox, card, heading, page_layout
from gui.widgets.theme import WONT_FIT

if TYPE_CHECKING:
    from gui.controllers.app_context import AppContext

BASIC_KEYS = ["name", "training.epochs", "training.max_steps", "training.batch_size",
              "training.grad_accum", "training.learning_rate", "training.lr_scheduler",
              "training.warmup_ratio", "training.optimizer", "training.precision",
              "training.gradient_checkpointing", "dataset.eval_split"]
# Keys edited on other pages; everything else not basic lands under Advanced automatically.
ELSEWHERE = {"task", "model.source", "dataset.path", "dataset.format", "dataset.max_length",
             "dataset.overflow"}


SECTION_TITLES = {"training": "Training", "dataset": "Data", "model": "Model",
                  "output": "Output", "": "Job"}
LABEL_WIDTH = 170  # one label column width across the section forms, so editors line up


def advanced_sections() -> dict[str, list[str]]:
    """Section → the keys shown under Advanced: every key not basic and not on another page."""
    out = {}
    for section in ("training", "dataset", "model", "output", ""):
        keys = [k for k in section_keys(section) if k not in BASIC_KEYS and k not in ELSEWHERE]
        if keys:
            out[section] = keys
    return out


def advanced_keys() -> list[str]:
    return [k for keys in advanced_sections().values() for k in keys]


def step_summary(job: JobConfig) -> str:
    """The arithmetic a user would do by hand: effective batch, tokens per step, run length."""
    t, d = job.training, job.dataset
    effective = t.batch_size * t.grad_accum
    length = (f"<b>{t.max_steps:,}</b> optimizer steps" if t.max_steps > 0
              else f"<b>{t.epochs:g}</b> passes over the training rows")
    held_out = (f"{d.eval_split:.0%} of the rows" if d.eval_split < 1
                else f"{int(d.eval_split)} rows")
    ckpt = "on (less memory, ~30% slower)" if t.gradient_checkpointing else "off"
    return (f"Effective batch: {t.batch_size} × {t.grad_accum} = <b>{effective}</b> sequences "
            f"per optimizer step, up to <b>{effective * d.max_length:,}</b> tokens "
            f"(max length {d.max_length:,}).<br><br>"
            f"Run length: {length}; learning rate {t.learning_rate:g} with a {t.lr_scheduler} "
            f"schedule after {t.warmup_ratio:.0%} warm-up.<br><br>"
            f"Held out for evaluation: {held_out}. Gradient checkpointing: {ckpt}. "
            f"Precision: {t.precision}. Optimizer: {t.optimizer}.")


NO_PRESET = "No preset applied"


def job_to_mapping(job: JobConfig) -> dict[str, Any]:
    return dataclasses.asdict(job)


def _holds(job: dict[str, Any], values: dict[str, Any]) -> bool:
    """True when every key of the (nested, partial) preset has its value in the job."""
    for key, want in values.items():
        have = job.get(key) if isinstance(job, dict) else None
        if isinstance(want, dict):
            if not isinstance(have, dict) or not _holds(have, want):
                return False
        elif have != want and not (isinstance(have, list | tuple) and list(have) == want):
            return False
    return True


class QtHyperparamsPage(QWidget):
    def __init__(self, ctx: AppContext, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.ctx, self.job = ctx, ctx.job
        layout = page_layout(self)
        layout.addWidget(heading("Hyperparameters", "Defaults that work; hover a setting for "
                                 "what it does. Start from a preset for your GPU's memory."))
        columns = QHBoxLayout()
        columns.setSpacing(12)
        left = QVBoxLayout()
        left.addWidget(self._presets_card())
        basic, basic_layout = card("Training")
        self.basic_form = QtConfigForm(self.job, BASIC_KEYS)
        for label in self.basic_form.labels.values():
            label.setMinimumWidth(LABEL_WIDTH)
        basic_layout.addWidget(self.basic_form)
        left.addWidget(basic, 1)
        columns.addLayout(left, 1)
        self.right = QVBoxLayout()
        self.right.addWidget(self._advanced_card(), 0)
        self.right.addWidget(self._summary_card(), 1)
        columns.addLayout(self.right, 1)
        layout.addLayout(columns, 1)
        layout.addWidget(self._job_file_card())

    # ------------------------------------------------------------------ building
    def _presets_card(self) -> QWidget:
        group, inner = card("Preset")
        row = QHBoxLayout()
        self.preset_combo = QComboBox()
        self.preset_combo.addItems(preset_names())
        # Nothing is applied at first: the box shows no preset's name until one is.
        self.preset_combo.setPlaceholderText(NO_PRESET)
        self.preset_combo.setCurrentIndex(-1)
        self.applied_preset: str | None = None
        self.preset_combo.currentTextChanged.connect(self._on_preset_chosen)
        self.job.changed.connect(self._on_job_changed_preset)
        self.apply_preset_button = QPushButton("Apply preset")
        self.apply_preset_button.clicked.connect(self._on_apply_preset)
        row.addWidget(self.preset_combo, 1)
        row.addWidget(self.apply_preset_button)
        inner.addLayout(row)
        self.preset_info = QLabel()
        self.preset_info.setWordWrap(True)
        self.preset_info.setStyleSheet("color: palette(placeholder-text);")
        inner.addWidget(self.preset_info)
        self._on_preset_chosen(self.preset_combo.currentText())
        return group

    def _advanced_card(self) -> QWidget:
        group, inner = card("Advanced")
        keys = advanced_keys()
        self.advanced_toggle = QToolButton()
        self.advanced_toggle.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
        self.advanced_toggle.setCheckable(True)
        self.advanced_toggle.setArrowType(Qt.ArrowType.RightArrow)
        self.advanced_toggle.setText(f"Show {len(keys)} rarely-changed settings")
        self.advanced_toggle.toggled.connect(self._on_advanced_toggled)
        inner.addWidget(self.advanced_toggle)
        body = QWidget()
        body_layout = QVBoxLayout(body)
        body_layout.setContentsMargins(0, 0, 8, 0)
        self.advanced_forms: list[QtConfigForm] = []
        for section, section_keys_ in advanced_sections().items():
            title = QLabel(SECTION_TITLES.get(section, section))
            title.setStyleSheet("font-weight: 600; margin-top: 6px;")
            form = QtConfigForm(self.job, section_keys_)
            form.folder_chosen.connect(self._on_folder_chosen)
            for label in form.labels.values():
                label.setMinimumWidth(LABEL_WIDTH)
            body_layout.addWidget(title)
            body_layout.addWidget(form)
            self.advanced_forms.append(form)
        body_layout.addStretch(1)
        self.advanced_scroll = QScrollArea()
        self.advanced_scroll.setWidgetResizable(True)
        self.advanced_scroll.setFrameShape(QScrollArea.Shape.NoFrame)
        self.advanced_scroll.setWidget(body)
        self.advanced_scroll.hide()
        inner.addWidget(self.advanced_scroll, 1)
        self.advanced_hint = QLabel("Evaluation and checkpoint intervals, seed, device, sample "
                                    "prompts, packing, columns, attention kernel, runs folder…")
        self.advanced_hint.setWordWrap(True)
        self.advanced_hint.setStyleSheet("color: palette(placeholder-text);")
        inner.addWidget(self.advanced_hint)
        self.advanced_group = group
        return group

    def _summary_card(self) -> QWidget:
        group, inner = card("What one step does")
        self.summary = QLabel()
        self.summary.setWordWrap(True)
        self.summary.setTextFormat(Qt.TextFormat.RichText)
        inner.addWidget(self.summary)
        inner.addStretch(1)
        self.job.changed.connect(self._on_summary_changed)
        self._on_summary_changed()
        return group

    def _job_file_card(self) -> QWidget:
        group, inner = card("Job file")
        row = QHBoxLayout()
        self.load_button = QPushButton("Load job…")
        self.load_button.clicked.connect(self._on_load)
        self.save_button = QPushButton("Save job…")
        self.save_button.clicked.connect(self._on_save)
        self.command = QtCommandBox(self.job, "train")
        row.addWidget(self.load_button)
        row.addWidget(self.save_button)
        row.addSpacing(12)
        row.addWidget(self.command, 1)
        inner.addLayout(row)
        self.file_status = QLabel()
        inner.addWidget(self.file_status)
        self.job.path_changed.connect(self._on_path_changed)
        self.job.dirty_changed.connect(self._on_path_changed)
        self._on_path_changed()
        return group

    def editor(self, key: str) -> QWidget:
        """The editor of ``key`` (``training.seed``), basic or advanced."""
        for form in (self.basic_form, *self.advanced_forms):
            if key in form.editors:
                return form.editors[key]
        raise KeyError(key)

    # ------------------------------------------------------------------ events
    def _on_preset_chosen(self, name: str) -> None:
        if not name:
            has_any = self.preset_combo.count() > 0
            self.preset_info.setText("Pick a preset for your GPU's memory, then Apply." if
                                     has_any else "No presets found in resources/presets.")
            self.apply_preset_button.setEnabled(False)
            return
        self.apply_preset_button.setEnabled(True)
        preset = load_preset(name)
        pending = "" if name == self.applied_preset else " <i>Not applied yet: press Apply.</i>"
        self.preset_info.setText(preset.description + pending)
        self.preset_info.setToolTip(preset.description)

    def _on_job_changed_preset(self, key: str) -> None:
        """Once the job no longer holds the applied preset's values, the box says so."""
        name = self.applied_preset
        if name is None:
            return
        if not _holds(job_to_mapping(self.job.job), load_preset(name).values):
            self.applied_preset = None
            self.preset_combo.setCurrentIndex(-1)
            self.preset_info.setText(f"Custom settings (changed since preset {name}).")

    def _on_apply_preset(self) -> None:
        name = self.preset_combo.currentText()
        self.applied_preset = None  # the job passes through other values while it changes
        try:
            self.job.update(load_preset(name).values)
        except (UserError, ValueError) as exc:
            message = getattr(exc, "message", str(exc))
            self.preset_info.setText(f"<span style='color:{WONT_FIT}'>{message}</span>")
            return
        self.applied_preset = name
        self.preset_combo.setCurrentText(name)
        self._on_preset_chosen(name)
        self.file_status.setText(f"Applied preset {name}.")

    def _on_summary_changed(self, *_args: object) -> None:
        self.summary.setText(step_summary(self.job.job))

    def _on_advanced_toggled(self, shown: bool) -> None:
        self.right.setStretch(0, 1 if shown else 0)  # the settings take the column's height
        self.right.setStretch(1, 0 if shown else 1)
        self.advanced_scroll.setVisible(shown)
        self.advanced_hint.setVisible(not shown)
        self.advanced_toggle.setArrowType(Qt.ArrowType.DownArrow if shown
                                          else Qt.ArrowType.RightArrow)
        self.advanced_toggle.setText(("Hide" if shown else "Show") + self.advanced_toggle.text()
                                     .partition(" ")[1] + self.advanced_toggle.text()
                                     .partition(" ")[2])

    def _on_folder_chosen(self, key: str, path: str) -> None:
        if key == "output.runs_dir":  # picked by hand: the app's runs folder from now on
            self.ctx.settings.set_runs_dir(path)

    def _on_load(self) -> None:
        job_files.open_job_dialog(self, self.ctx)

    def _on_save(self) -> None:
        if job_files.save_job_dialog(self, self.ctx):
            self.file_status.setText(f"Saved {self.job.path}")

    def _on_path_changed(self, *_args: object) -> None:
        where = self.job.path or "not saved yet"
        self.file_status.setText(f"Job file: {where}" + ("  (unsaved changes)"
                                                          if self.job.dirty else ""))
