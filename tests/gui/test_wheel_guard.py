"""The mouse wheel never changes an unfocused input: it scrolls the form instead (issue 17)."""

from __future__ import annotations

from PySide6.QtCore import QPoint, QPointF, Qt
from PySide6.QtGui import QWheelEvent
from PySide6.QtWidgets import QApplication, QScrollArea

from gui.controllers.job_model import JobModel
from gui.widgets.qt_config_form import QtConfigForm, section_keys


def wheel(widget, steps: int = -1) -> bool:  # type: ignore[no-untyped-def]
    """A synthetic wheel turn over the middle of ``widget``; True when something took it."""
    centre = QPointF(widget.width() / 2, widget.height() / 2)
    event = QWheelEvent(centre, QPointF(widget.mapToGlobal(centre.toPoint())), QPoint(0, 0),
                        QPoint(0, 120 * steps), Qt.MouseButton.NoButton,
                        Qt.KeyboardModifier.NoModifier, Qt.ScrollPhase.NoScrollPhase, False)
    QApplication.sendEvent(widget, event)
    return event.isAccepted()


def test_wheel_over_unfocused_inputs_scrolls_the_form_not_the_value(qtbot) -> None:
    job = JobModel()
    form = QtConfigForm(job, section_keys("training"))
    area = QScrollArea()
    area.setWidget(form)
    area.setWidgetResizable(True)
    area.resize(400, 200)  # far shorter than the form: it scrolls
    qtbot.addWidget(area)
    area.show()
    qtbot.waitExposed(area)
    device = form.editors["training.device"]
    batch = form.editors["training.batch_size"]
    before = (job.job.training.device, job.job.training.batch_size)
    bar = area.verticalScrollBar()
    assert bar.maximum() > 0 and bar.value() == 0
    for editor in (device, batch, form.editors["training.learning_rate"]):
        assert not editor.hasFocus()
        wheel(editor)
        assert not editor.hasFocus()  # the wheel no longer gives focus either
    assert (job.job.training.device, job.job.training.batch_size) == before
    assert bar.value() > 0  # the scroll area got the wheel instead

    batch.setFocus()
    qtbot.waitUntil(batch.hasFocus)
    wheel(batch, steps=1)  # a focused input still takes the wheel
    assert job.job.training.batch_size == before[1] + 1


def test_every_page_of_the_window_guards_its_inputs(qtbot, ctx) -> None:  # type: ignore[no-untyped-def]
    from PySide6.QtWidgets import QAbstractSpinBox, QComboBox

    from gui.window.qt_main_window import QtMainWindow

    window = QtMainWindow(ctx)
    window.ask_to_save = False
    qtbot.addWidget(window)
    page = window.page("hyperparameters")
    inputs = page.findChildren(QComboBox) + page.findChildren(QAbstractSpinBox)
    assert inputs and all(w.property("wheel_guarded") for w in inputs)
    window.shutdown()
