"""The mouse wheel never changes an input the user has not focused (issue 17).

Scrolling a form over a combo box, spin box or slider scrolls the form; the input changes only
once it has focus (clicked or tabbed into). One event filter, installed on each input by
:func:`guard_inputs` (the window calls it on every page it builds; forms call it on their
editors): the wheel event goes to the enclosing scroll area instead.
"""

from __future__ import annotations

from PySide6.QtCore import QEvent, QObject, Qt
from PySide6.QtWidgets import (
    QAbstractScrollArea,
    QAbstractSlider,
    QAbstractSpinBox,
    QApplication,
    QComboBox,
    QWidget,
)

INPUTS = (QComboBox, QAbstractSpinBox, QAbstractSlider)


class WheelGuard(QObject):
    """Swallows wheel events of an unfocused input and lets its parent scroll instead."""

    def eventFilter(self, obj: QObject, event: QEvent) -> bool:
        if (event.type() != QEvent.Type.Wheel or not isinstance(obj, QWidget)
                or obj.hasFocus()):
            return False
        area = _scroll_area(obj)
        if area is None:
            event.ignore()  # not accepted: Qt offers a real wheel event to the parent next
        else:
            # Straight to the form's scroll area: its viewport turns the wheel into a scroll.
            QApplication.sendEvent(area.viewport(), event)
        return True


def _scroll_area(widget: QWidget) -> QAbstractScrollArea | None:
    parent = widget.parentWidget()
    while parent is not None and not isinstance(parent, QAbstractScrollArea):
        parent = parent.parentWidget()
    return parent


_GUARD: WheelGuard | None = None


def _guard() -> WheelGuard:
    global _GUARD
    if _GUARD is None:
        _GUARD = WheelGuard()
    return _GUARD


def guard_input(widget: QWidget) -> None:
    """Guard one input; the wheel no longer gives it focus either."""
    if widget.property("wheel_guarded"):
        return
    widget.setProperty("wheel_guarded", True)
    if widget.focusPolicy() == Qt.FocusPolicy.WheelFocus:
        widget.setFocusPolicy(Qt.FocusPolicy.StrongFocus)
    widget.installEventFilter(_guard())


def guard_inputs(root: QWidget) -> None:
    """Guard ``root`` and every combo box, spin box and slider inside it."""
    if isinstance(root, INPUTS):
        guard_input(root)
    for kind in INPUTS:
        for widget in root.findChildren(kind):
            guard_input(widget)
