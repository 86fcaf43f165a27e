"""The live plots: one point shows, ranges start over for a new run, axes read plainly,
and the colours follow the theme."""

from __future__ import annotations

import pytest
from PySide6.QtGui import QPalette
from PySide6.QtWidgets import QApplication

from engine import events as ev
from gui.controllers.run_controller import RunController
from gui.widgets.qt_plots import QtTrainingPlots, tick_text


@pytest.fixture
def plots(qtbot, qapp):  # type: ignore[no-untyped-def]
    from gui.widgets.theme import apply_theme

    apply_theme(qapp, dark=False)
    controller = RunController()
    widget = QtTrainingPlots(controller)
    qtbot.addWidget(widget)
    widget.resize(900, 500)
    widget.show()
    yield widget
    widget.close()


def _steps(n: int, loss: float, lr: float = 2e-4, planned: int = 0) -> list[ev.Event]:
    return [ev.Step(step=i, max_steps=planned or n, loss=loss - 0.01 * i, learning_rate=lr,
                    grad_norm=1.5, tokens_per_s=100.0) for i in range(1, n + 1)]


def _flush(plots: QtTrainingPlots) -> None:
    plots._on_redraw()
    plots._on_redraw_small()


def _y_range(plot) -> list[float]:  # type: ignore[no-untyped-def]
    return plot.getPlotItem().getViewBox().viewRange()[1]


def _x_range(plot) -> list[float]:  # type: ignore[no-untyped-def]
    return plot.getPlotItem().getViewBox().viewRange()[0]


def test_a_single_point_is_drawn_as_a_dot(plots) -> None:  # type: ignore[no-untyped-def]
    plots._on_events(_steps(1, 2.0, planned=50))
    _flush(plots)
    for curve in (plots.raw_curve, plots.smooth_curve, plots.lr_curve, plots.grad_curve):
        assert curve.opts["symbol"] == "o"
        assert len(curve.getData()[0]) == 1
    y0, y1 = _y_range(plots.loss_plot)
    assert y0 < 2.0 - 0.01 < y1  # inside the view, not on its edge
    plots._on_events(_steps(3, 2.0, planned=50)[1:])
    _flush(plots)
    assert plots.raw_curve.opts["symbol"] is None  # a line again


def test_a_new_run_starts_with_fresh_ranges(plots) -> None:  # type: ignore[no-untyped-def]
    plots._on_events(_steps(200, 9.0))
    _flush(plots)
    assert _x_range(plots.loss_plot)[1] > 200 and _y_range(plots.loss_plot)[1] > 8.5
    plots.controller.reset.emit("other-run")
    assert _x_range(plots.loss_plot)[1] < 20  # the old run's range is gone at once
    plots._on_events(_steps(4, 1.0, planned=8))
    _flush(plots)
    x1 = _x_range(plots.loss_plot)[1]
    y0, y1 = _y_range(plots.loss_plot)
    assert 8 < x1 < 10  # the new run's planned 8 steps, with room for the last dot
    assert y1 < 1.5 and y0 >= 0  # the loss never shown below zero


def test_loss_axis_never_goes_below_zero(plots) -> None:  # type: ignore[no-untyped-def]
    plots._on_events([ev.Step(step=1, max_steps=4, loss=0.05, learning_rate=1e-4),
                      ev.Step(step=2, max_steps=4, loss=3.0, learning_rate=1e-4)])
    _flush(plots)
    assert _y_range(plots.loss_plot)[0] >= 0


def test_the_last_eval_dot_is_inside_the_view(plots) -> None:  # type: ignore[no-untyped-def]
    plots._on_events([*_steps(8, 2.0), ev.Eval(step=8, eval_loss=1.9)])
    _flush(plots)
    x1 = _x_range(plots.loss_plot)[1]
    width = plots.loss_plot.getPlotItem().getViewBox().width()
    assert (x1 - 8) / x1 * width >= 7  # at least a symbol's width to the right edge


def test_axis_labels_read_plainly(plots) -> None:  # type: ignore[no-untyped-def]
    plots._on_events(_steps(5, 2.0, lr=1e-12))
    _flush(plots)
    lr_axis = plots.lr_plot.getPlotItem().getAxis("left")
    assert "x1e" not in lr_axis.labelString()
    assert lr_axis.tickStrings([2e-4, 4e-4], 1.0, 2e-4) == ["2e-4", "4e-4"]
    assert tick_text(5.5e-5, 5e-6) == "5.5e-5"
    assert tick_text(0.5, 0.1) is None and tick_text(0, 1) == "0"
    grad_label = plots.grad_plot.getPlotItem().getAxis("left").labelString()
    assert "norm" in grad_label and "‖" not in grad_label


def test_plots_follow_dark_mode(plots, qapp) -> None:  # type: ignore[no-untyped-def]
    from gui.widgets.theme import apply_theme

    light = plots.loss_plot.backgroundBrush().color().lightness()
    apply_theme(qapp, dark=True)
    QApplication.processEvents()
    dark_base = QApplication.palette().color(QPalette.ColorRole.Base)
    assert plots.loss_plot.backgroundBrush().color() == dark_base
    assert plots.loss_plot.backgroundBrush().color().lightness() < 128 < light
    text = QApplication.palette().color(QPalette.ColorRole.Text).name()
    assert text in plots.lr_plot.getPlotItem().getAxis("left").labelString()
    legend = plots.loss_plot.getPlotItem().legend
    assert all(label.opts["color"] == text or label.opts["color"].name() == text
               for _sample, label in legend.items)
    apply_theme(qapp, dark=False)
