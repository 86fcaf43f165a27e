"""The measured "efficiency vs performance" figure: quality against memory and against speed.

One point per finished method, labelled with its name; drawn once per comparison (no live data).
"""

from __future__ import annotations

from typing import Any

import pyqtgraph as pg
from PySide6.QtCore import Qt
from PySide6.QtGui import QPalette
from PySide6.QtWidgets import QHBoxLayout, QWidget

from gui.widgets.theme import ACCENT, FITS
from gui.widgets.units import UNIT

AXES = (("peak_memory_gb", "Peak memory", UNIT), ("tokens_per_s", "Speed", "tokens/s"))


def points(data: dict[str, Any], x_key: str) -> list[tuple[str, float, float]]:
    """(label, x, quality %) of each finished method that has both numbers."""
    out = []
    for row in data.get("methods", []):
        x, q = row.get(x_key), row.get("quality")
        if row.get("status") == "completed" and x is not None and q is not None:
            out.append((str(row.get("label") or row.get("method")), float(x), 100.0 * q))
    return out


def grouped_labels(pts: list[tuple[str, float, float]], x_span: float, y_span: float,
                   near: float = 0.06) -> list[tuple[str, float, float]]:
    """One label per cluster of points closer than ``near`` of each axis' span (methods with
    the same numbers, e.g. prefix tuning and P-tuning v2, would print over each other)."""
    groups: list[list[tuple[str, float, float]]] = []
    for p in pts:  # in the table's order
        for g in groups:
            if abs(g[0][1] - p[1]) <= near * x_span and abs(g[0][2] - p[2]) <= near * y_span:
                g.append(p)
                break
        else:
            groups.append([p])
    return [(", ".join(p[0] for p in g), g[0][1], g[0][2]) for g in groups]


class QtCompareChart(QWidget):
    """Two scatter plots side by side: quality (% of the reference) vs memory, vs speed."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        self.plots: dict[str, pg.PlotWidget] = {}
        self.scatters: dict[str, pg.ScatterPlotItem] = {}
        self._labels: dict[str, list[pg.TextItem]] = {}
        background = self.palette().color(QPalette.ColorRole.Base)
        for key, title, unit in AXES:
            plot = pg.PlotWidget(background=background)
            plot.setLabel("bottom", f"{title} ({unit})")
            plot.setLabel("left", "Quality (% of reference)")
            plot.showGrid(x=True, y=True, alpha=0.25)
            plot.setMenuEnabled(False)
            plot.setXRange(0, 1)
            plot.setYRange(0, 110)
            line = pg.InfiniteLine(100, angle=0, pen=pg.mkPen(FITS, style=Qt.PenStyle.DashLine))
            plot.addItem(line)  # the reference itself
            scatter = pg.ScatterPlotItem(size=11, brush=pg.mkBrush(ACCENT),
                                         pen=pg.mkPen("w", width=1))
            plot.addItem(scatter)
            self.plots[key], self.scatters[key], self._labels[key] = plot, scatter, []
            layout.addWidget(plot)

    def show_comparison(self, data: dict[str, Any]) -> None:
        ref = data.get("reference") or "reference"
        text = self.palette().color(QPalette.ColorRole.Text)
        for key, _title, _unit in AXES:
            plot = self.plots[key]
            plot.setLabel("left", f"Quality (% of {ref})")
            for item in self._labels[key]:
                plot.removeItem(item)
            pts = points(data, key)
            self.scatters[key].setData([p[1] for p in pts], [p[2] for p in pts])
            self._labels[key] = []
            if not pts:
                continue
            # From zero (honest bars of memory and speed), with room for the labels.
            xs, ys = [p[1] for p in pts], [p[2] for p in pts]
            x_max = max(xs) * 1.45 or 1
            y_min, y_max = min(0.0, min(ys)) - 8, max(100.0, max(ys)) + 8
            plot.setXRange(0, x_max, padding=0)
            plot.setYRange(y_min, y_max, padding=0)
            for label, x, y in grouped_labels(pts, x_max, y_max - y_min):
                item = pg.TextItem(label, color=text, anchor=(-0.08, 0.5))  # right of the dot
                item.setPos(x, y)
                plot.addItem(item)
                self._labels[key].append(item)
