"""Live training curves: loss (raw, smoothed, eval), learning rate, gradient norm, tokens/s.

Curves are made once; each event appends to a growing numpy buffer and marks the view dirty;
a single-shot timer redraws at most ~10 times a second with ``setData`` (STYLE.md §5).
"""

from __future__ import annotations

import math

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QEvent, QTimer
from PySide6.QtGui import QPalette
from PySide6.QtWidgets import QApplication, QGridLayout, QWidget

from engine import events as ev
from gui.controllers.run_controller import RunController

REDRAW_MS = 100  # the loss plot: at most ~10 redraws a second
SMALL_REDRAW_MS = 500  # learning rate, gradient norm, throughput: ~2 a second
AXIS_WIDTH = 56  # fixed, so new tick labels never re-lay out the page
X_PADDING = 0.04  # room right of the last step, so its eval dot is drawn whole
SMOOTHING = 0.9  # exponential moving average weight (TensorBoard-style, debiased)

pg.setConfigOptions(antialias=False, useNumba=False)  # antialiasing doubles paint time


class Series:
    """x/y float buffers that double when full; appends are staged in lists (cheap per
    event) and moved into the arrays in one go when the data is read."""

    def __init__(self, capacity: int = 256) -> None:
        self.x = np.empty(capacity)
        self.y = np.empty(capacity)
        self._n = 0
        self._sx: list[float] = []
        self._sy: list[float] = []

    @property
    def n(self) -> int:
        return self._n + len(self._sx)

    @n.setter
    def n(self, value: int) -> None:
        self._flush()
        self._n = max(0, min(value, self._n))

    def append(self, x: float, y: float) -> None:
        self._sx.append(x)
        self._sy.append(y)

    def last_x(self) -> float:
        if self._sx:
            return self._sx[-1]
        return float(self.x[self._n - 1]) if self._n else -math.inf

    def clear(self) -> None:
        self._n = 0
        self._sx, self._sy = [], []

    def _flush(self) -> None:
        if not self._sx:
            return
        need = self._n + len(self._sx)
        if need > len(self.x):
            size = max(need, 2 * len(self.x))
            self.x = np.concatenate([self.x[: self._n], np.empty(size - self._n)])
            self.y = np.concatenate([self.y[: self._n], np.empty(size - self._n)])
        self.x[self._n: need] = self._sx
        self.y[self._n: need] = self._sy
        self._n = need
        self._sx, self._sy = [], []

    def data(self) -> tuple[np.ndarray, np.ndarray]:
        self._flush()
        return self.x[: self._n], self.y[: self._n]


def tick_text(value: float, spacing: float) -> str | None:
    """A tick label for very small or very large values (``2e-4``, ``5.5e-5``), else None
    for pyqtgraph's own; never a shared "(x1e-12)" factor on the axis label."""
    if value == 0:
        return "0"
    if abs(value) >= 1e-3 and abs(value) < 1e5:
        return None
    decimals = 0
    if spacing > 0:
        decimals = min(2, max(0, math.floor(math.log10(abs(value)))
                              - math.floor(math.log10(spacing))))
    mantissa, _, exponent = f"{value:.{decimals}e}".partition("e")
    return f"{mantissa}e{int(exponent)}"


class ValueAxis(pg.AxisItem):
    """A value axis with plain tick labels: no auto SI prefix, scientific only when small."""

    def __init__(self, orientation: str) -> None:
        super().__init__(orientation)
        self.enableAutoSIPrefix(False)

    def tickStrings(self, values: list[float], scale: float, spacing: float) -> list[str]:
        default = super().tickStrings(values, scale, spacing)
        return [tick_text(v * scale, spacing * scale) or d
                for v, d in zip(values, default, strict=True)]


class ThemedPlotWidget(pg.PlotWidget):
    """A plot whose background, axes, title and legend follow the application palette,
    also when the theme switches while it is shown (dark mode reaches the plots)."""

    def __init__(self, title: str) -> None:
        super().__init__(axisItems={"left": ValueAxis("left"), "bottom": ValueAxis("bottom")})
        self.title = title
        self.apply_palette()

    def apply_palette(self) -> None:
        palette = QApplication.palette()
        fg = palette.color(QPalette.ColorRole.Text)
        self.setBackground(palette.color(QPalette.ColorRole.Base))
        item = self.getPlotItem()
        item.setTitle(self.title, color=fg, size="10pt")
        for axis in ("left", "bottom"):
            item.getAxis(axis).setTextPen(fg)
            item.getAxis(axis).setPen(fg)
        if item.legend is not None:
            item.legend.setLabelTextColor(fg)
            for _sample, label in item.legend.items:
                label.setText(label.text, color=fg)

    def changeEvent(self, event: QEvent) -> None:
        built = getattr(self, "title", None) is not None and getattr(
            self, "plotItem", None) is not None  # events also arrive during construction
        if built and event.type() in (QEvent.Type.PaletteChange,
                                      QEvent.Type.ApplicationPaletteChange):
            self.apply_palette()
        super().changeEvent(event)


def make_plot(title: str, left: str) -> pg.PlotWidget:
    widget = ThemedPlotWidget(title)
    item = widget.getPlotItem()
    item.setLabel("left", left)
    item.getAxis("left").setWidth(AXIS_WIDTH)
    # No grid: its alpha-blended full-width lines triple the paint time of a plot.
    item.setDownsampling(auto=True, mode="peak")  # ~2 points a pixel, however long the run
    item.setClipToView(True)
    widget.setMinimumHeight(120)
    return widget


class StickyRange:
    """View ranges that change in steps, not at every new point.

    Each range change re-renders a plot's axes, the dearest part of a repaint; autorange
    would do it at every step. The x range is the run's planned steps (or grows by half);
    the y range grows past new extremes with a margin and shrinks only when the data fills
    less than a third of it. A pan or zoom by the user hands the range over to them.
    """

    def __init__(self, plot: pg.PlotWidget, floor: float | None = 0.0) -> None:
        self.view = plot.getPlotItem().getViewBox()
        self.view.disableAutoRange()
        self.view.sigRangeChangedManually.connect(self._on_manual)
        self.floor = floor  # losses, rates, norms and speeds are never negative
        self.reset()

    def reset(self) -> None:
        """Forget the last run's ranges: the view goes back to an empty 0..10 by 0..1."""
        self.manual = False
        self.x_max = 0.0
        self.y: tuple[float, float] | None = None
        self.changes = 0
        self.view.setXRange(0, 10, padding=X_PADDING)
        self.view.setYRange(0, 1, padding=0)

    def _on_manual(self, *_args: object) -> None:
        self.manual = True

    def fit(self, x_max: float, planned: int, ys: list[np.ndarray]) -> None:
        if self.manual:
            return
        data = np.concatenate([y[np.isfinite(y)] for y in ys]) if ys else np.empty(0)
        if not data.size:
            return
        want_x = float(planned) if planned >= x_max else max(10.0, x_max * 1.5)
        if want_x != self.x_max and (x_max > self.x_max or planned):
            self.x_max = want_x
            self.view.setXRange(0, want_x, padding=X_PADDING)
            self.changes += 1
        lo, hi = float(data.min()), float(data.max())
        if self.y is None or lo < self.y[0] or hi > self.y[1] or \
                (hi - lo) < (self.y[1] - self.y[0]) / 3:
            pad = max((hi - lo) * 0.15, abs(hi) * 0.1, 1e-12)
            bottom = lo - pad if self.floor is None else max(lo - pad, self.floor)
            self.y = (bottom, hi + pad)
            self.view.setYRange(*self.y, padding=0)
            self.changes += 1


def _set_data(curve: pg.PlotDataItem, series: Series) -> None:
    """A line; with one point a line draws nothing, so that point gets a dot."""
    x, y = series.data()
    single = int(np.isfinite(y).sum()) == 1
    if single != (curve.opts["symbol"] is not None):
        color = curve.opts["pen"].color() if hasattr(curve.opts["pen"], "color") else None
        curve.setSymbol("o" if single else None)
        if single:
            curve.setSymbolSize(6)
            curve.setSymbolBrush(color)
            curve.setSymbolPen(color)
    curve.setData(x, y)


class QtTrainingPlots(QWidget):
    """The four live plots of the shown run, fed by ``RunController.events``."""

    def __init__(self, controller: RunController, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.controller = controller
        self.loss_plot = make_plot("Loss", "loss")
        self.loss_plot.addLegend(offset=(-10, 10))
        self.loss_plot.setLabel("bottom", "step")
        self.lr_plot = make_plot("Learning rate", "lr")
        self.grad_plot = make_plot("Gradient norm", "norm")
        self.speed_plot = make_plot("Throughput", "tokens/s")
        self.raw = Series()
        self.smooth = Series()
        self.eval = Series()
        self.lr = Series()
        self.grad = Series()
        self.speed = Series()
        self.raw_curve = self.loss_plot.plot(pen=pg.mkPen((110, 150, 215, 170), width=1),
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
        self.planned = 0  # the run's max_steps
        self.ranges = {name: StickyRange(plot) for name, plot in (
            ("loss", self.loss_plot), ("lr", self.lr_plot), ("grad", self.grad_plot),
            ("speed", self.speed_plot))}
        self._timer = QTimer(self, singleShot=True, interval=REDRAW_MS)
        self._timer.timeout.connect(self._on_redraw)
        self._small_timer = QTimer(self, singleShot=True, interval=SMALL_REDRAW_MS)
        self._small_timer.timeout.connect(self._on_redraw_small)
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
        for plot in (self.loss_plot, self.lr_plot, self.grad_plot, self.speed_plot):
            plot.apply_palette()  # the legend exists now: its labels take the text colour
        self._on_events(controller.history)

    # ------------------------------------------------------------------ events
    def _on_reset(self, _run_dir: str = "") -> None:
        for series in (self.raw, self.smooth, self.eval, self.lr, self.grad, self.speed):
            series.clear()
        self._ema, self._ema_n = 0.0, 0
        self.planned = 0
        for sticky in self.ranges.values():
            sticky.reset()
        self._schedule()

    def _on_events(self, batch: list[ev.Event]) -> None:
        changed = False
        for event in batch:
            if isinstance(event, ev.Step):
                self._add_step(event)
                self.planned = max(self.planned, event.max_steps)
                changed = True
            elif isinstance(event, ev.RunStarted):
                self.planned = max(self.planned, event.max_steps)
            elif isinstance(event, ev.Eval) and math.isfinite(event.eval_loss):
                self._add_eval(event)
                changed = True
        if changed:
            self._schedule()

    def _add_step(self, s: ev.Step) -> None:
        if s.step <= self.raw.last_x():
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
        if e.step <= self.eval.last_x():
            self.eval.n -= 1  # the same step evaluated again, or a resume that redoes it
        self.eval.append(e.step, e.eval_loss)

    def _truncate(self, step: int) -> None:
        for series in (self.raw, self.smooth, self.lr, self.grad, self.speed):
            x, _ = series.data()
            series.n = int(np.searchsorted(x, step))

    def _schedule(self) -> None:
        # Staggered: the small plots repaint on other event-loop turns than the loss plot,
        # so no single turn paints all four (each paint blocks the GUI thread).
        if not self._timer.isActive():
            self._timer.start()
        if not self._small_timer.isActive():
            self._small_timer.start()

    def _on_redraw(self) -> None:
        self.redraws += 1
        _set_data(self.raw_curve, self.raw)
        _set_data(self.smooth_curve, self.smooth)
        self.eval_curve.setData(*self.eval.data())
        self._fit("loss", self.raw, self.smooth, self.eval)

    def _on_redraw_small(self) -> None:
        _set_data(self.lr_curve, self.lr)
        _set_data(self.grad_curve, self.grad)
        _set_data(self.speed_curve, self.speed)
        self._fit("lr", self.lr)
        self._fit("grad", self.grad)
        self._fit("speed", self.speed)

    def _fit(self, name: str, *series: Series) -> None:
        x_max = max((s.last_x() for s in series if s.n), default=0.0)
        self.ranges[name].fit(x_max, self.planned, [s.data()[1] for s in series if s.n])

    # ------------------------------------------------------------------ for tests
    def loss_points(self) -> list[tuple[int, float]]:
        x, y = self.raw.data()
        return [(int(a), float(b)) for a, b in zip(x, y, strict=True)]
