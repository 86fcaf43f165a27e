"""Predicted peak memory per method as horizontal bars against the VRAM line."""

from __future__ import annotations

from dataclasses import dataclass

from PySide6.QtCore import QRectF, Qt, Signal
from PySide6.QtGui import QColor, QFontMetrics, QMouseEvent, QPainter, QPaintEvent, QPalette, QPen
from PySide6.QtWidgets import QSizePolicy, QWidget

from gui.widgets.theme import FITS, TIGHT, WONT_FIT
from gui.widgets.units import UNIT, gib

STATUS_COLORS = {"fits": FITS, "tight": TIGHT, "won't fit": WONT_FIT}
ROW_H = 20
TOP = 16  # room for the VRAM label above the rows


@dataclass(frozen=True)
class MemoryRow:
    key: str
    label: str
    low: float
    expected: float
    high: float
    status: str  # fits | tight | won't fit


def status_for(low: float, expected: float, high: float, vram: float) -> str:
    """Fits when even the high estimate fits, tight when the expected one does."""
    del low
    if high <= vram:
        return "fits"
    return "tight" if expected <= vram else "won't fit"


class QtMemoryBars(QWidget):
    """Click a row to choose that method (``row_clicked(key)``)."""

    row_clicked = Signal(str)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.rows: list[MemoryRow] = []
        self.vram = 0.0
        self.selected = ""
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.setMouseTracking(True)

    def set_rows(self, rows: list[MemoryRow], vram: float) -> None:
        self.rows, self.vram = rows, vram
        self.setFixedHeight(ROW_H * max(len(rows), 1) + TOP + 2)
        self.update()

    def set_selected(self, key: str) -> None:
        self.selected = key
        self.update()

    def _scale_max(self) -> float:
        highs = [r.high for r in self.rows] or [1.0]
        return max(min(max(highs), self.vram * 2.5 if self.vram else max(highs)), self.vram * 1.15,
                   0.1)

    def paintEvent(self, event: QPaintEvent) -> None:
        del event
        p = QPainter(self)
        p.setRenderHint(QPainter.RenderHint.Antialiasing)
        pal = self.palette()
        fm = QFontMetrics(self.font())
        label_w = max([fm.horizontalAdvance(r.label) for r in self.rows] + [60]) + 10
        status_w = fm.horizontalAdvance(f"{gib(99.99)}  won't fit") + 8
        x0, x1 = label_w, self.width() - status_w
        scale = (x1 - x0) / self._scale_max()
        for i, row in enumerate(self.rows):
            self._paint_row(p, fm, TOP + i * ROW_H, row, x0, x1, scale, pal)
        self._paint_vram(p, fm, x0, x1, scale, pal)
        p.end()

    def _paint_row(self, p: QPainter, fm: QFontMetrics, y: int, row: MemoryRow, x0: float,
                   x1: float, scale: float, pal: QPalette) -> None:
        if row.key == self.selected:
            p.fillRect(QRectF(0, y, self.width(), ROW_H), _selection(pal))
        text = pal.color(QPalette.ColorRole.Text)
        p.setPen(text)
        mid = y + ROW_H / 2 + fm.ascent() / 2 - 2
        p.drawText(4, int(mid), row.label)
        color = QColor(STATUS_COLORS[row.status])
        end = min(row.expected * scale, x1 - x0)
        p.fillRect(QRectF(x0, y + 5, end, ROW_H - 10), color)
        # low–high whisker: the uncertainty of the prediction
        p.setPen(QPen(text, 1))
        lo, hi = x0 + min(row.low * scale, x1 - x0), x0 + min(row.high * scale, x1 - x0)
        p.drawLine(int(lo), int(y + ROW_H / 2), int(hi), int(y + ROW_H / 2))
        p.drawLine(int(hi), y + 7, int(hi), y + ROW_H - 7)
        if row.high * scale > x1 - x0:
            p.drawText(int(x1 - fm.horizontalAdvance("»")), int(mid), "»")
        p.setPen(color)
        p.drawText(int(x1 + 8), int(mid), f"{gib(row.expected)}  {row.status}")

    def _paint_vram(self, p: QPainter, fm: QFontMetrics, x0: float, x1: float, scale: float,
                    pal: QPalette) -> None:
        if not self.vram:
            return
        x = x0 + self.vram * scale
        bottom = TOP + ROW_H * len(self.rows)
        p.setPen(QPen(pal.color(QPalette.ColorRole.Text), 2, Qt.PenStyle.DashLine))
        p.drawLine(int(x), TOP - 2, int(x), bottom)
        label = f"{self.vram:g} {UNIT} VRAM"
        lx = min(max(x - fm.horizontalAdvance(label) / 2, x0), x1 - fm.horizontalAdvance(label))
        p.drawText(int(lx), fm.ascent(), label)

    def mousePressEvent(self, event: QMouseEvent) -> None:
        index = int((event.position().y() - TOP) // ROW_H)
        if 0 <= index < len(self.rows):
            self.row_clicked.emit(self.rows[index].key)


def _selection(pal: QPalette) -> QColor:
    color = QColor(pal.color(QPalette.ColorRole.Highlight))
    color.setAlpha(60)
    return color
