"""A token-length histogram (pyqtgraph) with the max length marked and the overflow in red."""

from __future__ import annotations

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt
from PySide6.QtGui import QPalette
from PySide6.QtWidgets import QApplication, QVBoxLayout, QWidget

from gui.widgets.theme import ACCENT, WONT_FIT

BINS = 40


class QtLengthHistogram(QWidget):
    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        palette = QApplication.palette()
        self.plot = pg.PlotWidget(background=palette.color(QPalette.ColorRole.Base))
        text = palette.color(QPalette.ColorRole.Text)
        for axis in ("left", "bottom"):
            self.plot.getAxis(axis).setTextPen(text)
            self.plot.getAxis(axis).setPen(pg.mkPen(text, width=1))
        self.plot.setLabel("bottom", "tokens per row")
        self.plot.setLabel("left", "rows")
        self.plot.setMenuEnabled(False)
        self.plot.setMouseEnabled(x=False, y=False)
        self.plot.hideButtons()
        self.plot.setMinimumHeight(160)
        self.plot.getPlotItem().layout.setContentsMargins(4, 10, 8, 4)  # room for the top tick
        self._bars: list[pg.BarGraphItem] = []
        dashed = pg.mkPen(WONT_FIT, width=2, style=Qt.PenStyle.DashLine)
        self.max_line = pg.InfiniteLine(angle=90, movable=False, pen=dashed,
                                        label="max length {value:.0f}",
                                        labelOpts={"position": 0.9, "color": WONT_FIT,
                                                   "anchors": [(1, 0), (1, 0)]})
        self.plot.addItem(self.max_line)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.plot)
        self.counts: list[int] = []

    def set_lengths(self, lengths: list[int], max_length: int) -> None:
        for bar in self._bars:
            self.plot.removeItem(bar)
        self._bars = []
        self.max_line.setValue(max_length)
        if not lengths:
            self.counts = []
            self.plot.setXRange(0, max_length * 1.1)
            self.plot.setYRange(0, 1)
            return
        top = max(max(lengths), max_length) * 1.05
        counts, edges = np.histogram(lengths, bins=BINS, range=(0, top))
        self.counts = counts.tolist()
        width = edges[1] - edges[0]
        centers = edges[:-1] + width / 2
        inside = centers <= max_length
        for mask, color in ((inside, ACCENT), (~inside, WONT_FIT)):
            if mask.any():
                bar = pg.BarGraphItem(x=centers[mask], height=counts[mask], width=width * 0.9,
                                      brush=color, pen=None)
                self.plot.addItem(bar)
                self._bars.append(bar)
        self.plot.setXRange(0, top, padding=0)
        self.plot.setYRange(0, max(counts.max(), 1) * 1.12, padding=0.03)
