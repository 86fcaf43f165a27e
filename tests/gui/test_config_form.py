from __future__ import annotations

import dataclasses

from PySide6.QtWidgets import QCheckBox, QComboBox, QLineEdit, QSpinBox

from engine.config import TrainingConfig, field_help
from gui.controllers.job_model import JobModel
from gui.pages.qt_hyperparams_page import BASIC_KEYS, ELSEWHERE, advanced_keys
from gui.widgets.qt_config_form import QtConfigForm, section_keys
from gui.widgets.qt_widgets import SciSpinBox


def test_form_covers_every_training_field_with_tooltips(qtbot) -> None:
    job = JobModel()
    form = QtConfigForm(job, section_keys("training"))
    qtbot.addWidget(form)
    names = [f.name for f in dataclasses.fields(TrainingConfig)]
    assert [k.split(".")[1] for k in form.editors] == names
    assert isinstance(form.editors["training.batch_size"], QSpinBox)
    assert isinstance(form.editors["training.learning_rate"], SciSpinBox)
    assert isinstance(form.editors["training.gradient_checkpointing"], QCheckBox)
    assert isinstance(form.editors["training.optimizer"], QComboBox)
    assert isinstance(form.editors["training.sample_prompts"], QLineEdit)
    for key, editor in form.editors.items():
        assert editor.toolTip() == field_help("training", key.split(".")[1])


def test_editing_updates_the_job_and_the_job_updates_the_form(qtbot) -> None:
    job = JobModel()
    form = QtConfigForm(job, ["training.batch_size", "training.learning_rate",
                              "training.sample_prompts", "training.optimizer"])
    qtbot.addWidget(form)
    form.editors["training.batch_size"].setValue(16)
    assert job.job.training.batch_size == 16
    lr = form.editors["training.learning_rate"]
    lr.lineEdit().setText("3e-5")
    lr.interpretText()
    lr.editingFinished.emit()
    assert job.job.training.learning_rate == 3e-5
    assert lr.text() == "3e-05"
    prompts = form.editors["training.sample_prompts"]
    prompts.setText("Who are you?, Hi")
    prompts.editingFinished.emit()
    assert job.job.training.sample_prompts == ["Who are you?", "Hi"]
    job.set("training.optimizer", "adamw_8bit")
    assert form.editors["training.optimizer"].currentText() == "adamw_8bit"


def test_a_bad_value_shows_the_error_naming_the_key(qtbot) -> None:
    job = JobModel()
    form = QtConfigForm(job, ["training.max_steps"])
    qtbot.addWidget(form)
    form.editors["training.max_steps"].setValue(0)
    assert not form.error.isHidden()
    assert "training.max_steps" in form.error.text()
    assert job.job.training.max_steps == -1
    assert form.editors["training.max_steps"].value() == -1


def test_every_key_has_a_home() -> None:
    """New config keys appear under Advanced without GUI changes."""
    method_keys = set(section_keys("method"))
    shown = set(BASIC_KEYS) | ELSEWHERE | set(advanced_keys()) | method_keys
    every = {k for s in ("", "model", "dataset", "method", "training", "output")
             for k in section_keys(s)}
    assert every <= shown
    assert not set(BASIC_KEYS) & set(advanced_keys())
