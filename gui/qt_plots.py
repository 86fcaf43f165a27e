"""Live training curves: loss (raw, smoothed, eval), learning rate, gradient norm, tokens/s.

Curves are made once; each event appends to a growing numpy buffer and marks the view dirty;
a single-shot timer redraws at most ~10 times a second with ``setData`` (STYLE.md §5).
"""

from __future__ import annotations

import math

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QTimer
from PySide6.QtGui import QPalette
from PySide6.QtWidgets import QGridLayout, QWidget

from engine import events as ev
from gui.run_controller import RunController

REDRAW_MS = 100
SMOOTHING = 0.9  # exponential moving average weight (TensorBoard-style, debiased)

pg.setConfigOptions(antialias=True, useNumba=False)


class Series:
    """x/y float buffers that double when full."""

    def __init__(self, capacity: int = 256) -> None:
        self.x = np.empty(capacity)
        self.y = np.empty(capacity)
        self.n = 0

    def append(self, x: float, y: float) -> None:
        if self.n == len(self.x):
            self.x = np.concatenate([self.x, np.empty_like(self.x)])
            self.y = np.concatenate([self.y, np.empty_like(self.y)])
        self.x[self.n], self.y[self.n] = x, y
        self.n += 1

    def clear(self) -> None:
        self.n = 0

    def data(self) -> tuple[np.ndarray, np.ndarray]:
        return self.x[: self.n], self.y[: self.n]


def make_plot(title: str, left: str) -> pg.PlotWidget:
    palette = QWidget().palette()
    widget = pg.PlotWidget(background=palette.color(QPalette.ColorRole.Base))
    fg = palette.color(QPalette.ColorRole.Text)
    item = widget.getPlotItem()
    item.setTitle(title, color=fg, size="10pt")
    for axis in ("left", "bottom"):
        item.getAxis(axis).setTextPen(fg)
        item.getAxis(axis).setPen(fg)
    item.setLabel("left", left)
    item.showGrid(x=True, y=True, alpha=0.2)
    item.setDownsampling(mode="peak")
    item.setClipToView(True)
    widget.setMinimumHeight(120)
    return widget


class QtTrainingPlots(QWidget):
    """The four live plots of the shown run, fed by ``RunController.events``."""

    def __init__(self, controller: RunController, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.controller = controller
        self.loss_plot = make_plot("Loss", "loss")
        self.loss_plot.addLegend(offset=(-10, 10))
        self.loss_plot.setLabel("bottom", "step")
        self.lr_plot = make_plot("Learning rate", "lr")
        self.grad_plot = make_plot("Gradient norm", "‖g‖")
        self.speed_plot = make_plot("Throughput", "tokens/s")
        self.raw = Series()
        self.smooth = Series()
        self.eval = Series()
        self.lr = Series()
        self.grad = Series()
        self.speed = Series()
        self.raw_curve = self.loss_plot.plot(pen=pg.mkPen((120, 160, 220, 110), width=1),
                                             name="train (raw)", connect="finite")
        self.smooth_curve = self.loss_plot.plot(pen=pg.mkPen((40, 110, 220), width=2),
                                                name="train (smoothed)")
        self.eval_curve = self.loss_plot.plot(pen=pg.mkPen((230, 120, 30), width=2),
                                              symbol="o", symbolSize=7,
                                              symbolBrush=(230, 120, 30), name="eval")
        self.lr_curve = self.lr_plot.plot(pen=pg.mkPen((60, 170, 90), width=2))
        self.grad_curve = self.grad_plot.plot(pen=pg.mkPen((170, 80, 190), width=1.5))
        self.speed_curve = self.speed_plot.plot(pen=pg.mkPen((200, 90, 90), width=1.5))
        self._ema = 0.0
        self._ema_n = 0
        self._timer = QTimer(self, singleShot=True, interval=REDRAW_MS)
        self._timer.timeout.connect(self._on_redraw)
        self.redraws = 0
        layout = QGridLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(6)
        layout.addWidget(self.loss_plot, 0, 0, 1, 3)
        layout.addWidget(self.lr_plot, 1, 0)
        layout.addWidget(self.grad_plot, 1, 1)
        layout.addWidget(self.speed_plot, 1, 2)
        layout.setRowStretch(0, 3)
        layout.setRowStretch(1, 2)
        controller.reset.connect(self._on_reset)
        controller.events.connect(self._on_events)
        self._on_events(controller.history)

    # ------------------------------------------------------------------ events
    def _on_reset(self, _run_dir: str = "") -> None:
        for series in (self.raw, self.smooth, self.eval, self.lr, self.grad, self.speed):
            series.clear()
        self._ema, self._ema_n = 0.0, 0
        self._schedule()

    def _on_events(self, batch: list[ev.Event]) -> None:
        changed = False
        for event in batch:
            if isinstance(event, ev.Step):
                self._add_step(event)
                changed = True
            elif isinstance(event, ev.Eval) and math.isfinite(event.eval_loss):
                self._add_eval(event)
                changed = True
        if changed:
            self._schedule()

    def _add_step(self, s: ev.Step) -> None:
        if self.raw.n and s.step <= self.raw.x[self.raw.n - 1]:
            self._truncate(s.step)  # resumed from an earlier checkpoint: redo those steps
        self.raw.append(s.step, s.loss if math.isfinite(s.loss) else math.nan)
        if math.isfinite(s.loss):
            self._ema = SMOOTHING * self._ema + (1 - SMOOTHING) * s.loss
            self._ema_n += 1
            self.smooth.append(s.step, self._ema / (1 - SMOOTHING**self._ema_n))
        self.lr.append(s.step, s.learning_rate)
        if s.grad_norm is not None:
            self.grad.append(s.step, s.grad_norm)
        if s.tokens_per_s:
            self.speed.append(s.step, s.tokens_per_s)

    def _add_eval(self, e: ev.Eval) -> None:
        if self.eval.n and e.step <= self.eval.x[self.eval.n - 1]:
            self.eval.n -= 1  # the same step evaluated again, or a resume that redoes it
        self.eval.append(e.step, e.eval_loss)

    def _truncate(self, step: int) -> None:
        for series in (self.raw, self.smooth, self.lr, self.grad, self.speed):
            series.n = int(np.searchsorted(series.x[: series.n], step))

    def _schedule(self) -> None:
        if not self._timer.isActive():
            self._timer.start()

    def _on_redraw(self) -> None:
        self.redraws += 1
        self.raw_curve.setData(*self.raw.data())
        self.smooth_curve.setData(*self.smooth.data())
        self.eval_curve.setData(*self.eval.data())
        self.lr_curve.setData(*self.lr.data())
        self.grad_curve.setData(*self.grad.data())
        self.speed_curve.setData(*self.speed.data())

    # ------------------------------------------------------------------ for tests
    def loss_points(self) -> list[tuple[int, float]]:
        x, y = self.raw.data()
        return [(int(a), float(b)) for a, b in zip(x, y, strict=True)]
