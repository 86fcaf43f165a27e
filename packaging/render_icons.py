"""Render resources/icons/tunesmith.svg into the PNG sizes the desktop and the window use.

    QT_QPA_PLATFORM=offscreen python packaging/render_icons.py

Writes resources/icons/tunesmith-<size>.png for each size in SIZES with Qt's own SVG
renderer (the one the app uses), so the PNGs are reproducible from the SVG alone.
"""

from __future__ import annotations

import sys
from pathlib import Path

from PySide6.QtCore import Qt
from PySide6.QtGui import QGuiApplication, QImage, QPainter
from PySide6.QtSvg import QSvgRenderer

ICONS = Path(__file__).resolve().parent.parent / "resources" / "icons"
NAME = "tunesmith"
SIZES = (16, 32, 48, 64, 128, 256, 512)


def render(svg: Path, size: int) -> QImage:
    renderer = QSvgRenderer(str(svg))
    if not renderer.isValid():
        raise SystemExit(f"error: {svg} is not a valid SVG")
    image = QImage(size, size, QImage.Format.Format_ARGB32_Premultiplied)
    image.fill(Qt.GlobalColor.transparent)
    painter = QPainter(image)
    painter.setRenderHint(QPainter.RenderHint.Antialiasing)
    renderer.render(painter)
    painter.end()
    return image


def main() -> int:
    _app = QGuiApplication.instance() or QGuiApplication(sys.argv[:1])
    svg = ICONS / f"{NAME}.svg"
    for size in SIZES:
        out = ICONS / f"{NAME}-{size}.png"
        if not render(svg, size).save(str(out)):
            print(f"error: could not write {out}", file=sys.stderr)
            return 1
        print(out.relative_to(ICONS.parent.parent))
    return 0


if __name__ == "__main__":
    sys.exit(main())
