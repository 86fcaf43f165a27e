"""Light and dark palettes that follow the system's colour scheme (Qt ≥ 6.5)."""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtGui import QColor, QFont, QFontDatabase, QFontInfo, QGuiApplication, QPalette
from PySide6.QtWidgets import QApplication

# Semantic colours shared by the views (status of a method, trained tokens and modules).
FITS = "#2e9d4f"
TIGHT = "#d89614"
WONT_FIT = "#d0453a"
ACCENT = "#3d7bd9"


def is_dark() -> bool:
    """True when the application palette is dark (system scheme, or forced for screenshots)."""
    return QApplication.palette().color(QPalette.ColorRole.Window).lightness() < 128


def trained_background() -> str:
    return "#1f4d2e" if is_dark() else "#d4f2dc"


def muted_text() -> str:
    return "#8a9099" if is_dark() else "#6b7280"


def _dark_palette() -> QPalette:
    p = QPalette()
    base, window, text = QColor("#1e1f22"), QColor("#2b2d31"), QColor("#e6e6e6")
    roles = {
        QPalette.ColorRole.Window: window, QPalette.ColorRole.WindowText: text,
        QPalette.ColorRole.Base: base, QPalette.ColorRole.AlternateBase: QColor("#26282c"),
        QPalette.ColorRole.Text: text, QPalette.ColorRole.Button: QColor("#36383d"),
        QPalette.ColorRole.ButtonText: text, QPalette.ColorRole.ToolTipBase: QColor("#3a3c42"),
        QPalette.ColorRole.ToolTipText: text, QPalette.ColorRole.Highlight: QColor(ACCENT),
        QPalette.ColorRole.HighlightedText: QColor("#ffffff"),
        QPalette.ColorRole.PlaceholderText: QColor("#80858c"),
        QPalette.ColorRole.Link: QColor("#6fa8ff"), QPalette.ColorRole.Mid: QColor("#44474d"),
    }
    for role, color in roles.items():
        p.setColor(role, color)
    for role in (QPalette.ColorRole.Text, QPalette.ColorRole.WindowText,
                 QPalette.ColorRole.ButtonText):
        p.setColor(QPalette.ColorGroup.Disabled, role, QColor("#7a7d83"))
    return p


def _light_palette() -> QPalette:
    p = QApplication.style().standardPalette()
    p.setColor(QPalette.ColorRole.Highlight, QColor(ACCENT))
    p.setColor(QPalette.ColorRole.HighlightedText, QColor("#ffffff"))
    return p


def system_prefers_dark() -> bool:
    hints = QGuiApplication.styleHints()
    return hints.colorScheme() == Qt.ColorScheme.Dark


# Cards: a rounded frame with the title set into its top edge.
STYLE_SHEET = """
QGroupBox { border: 1px solid palette(mid); border-radius: 6px; margin-top: 10px;
            padding-top: 8px; }
QGroupBox::title { subcontrol-origin: margin; subcontrol-position: top left; left: 10px;
                   padding: 0 4px; font-weight: 600; }
"""


# Colour emoji fonts tried after the UI font, so an emoji in a dataset shows, not a box.
EMOJI_FONTS = ("Noto Color Emoji", "Apple Color Emoji", "Segoe UI Emoji", "Twemoji Mozilla",
               "EmojiOne Color", "Symbola")


def font_with_fallbacks(font: QFont) -> QFont:
    """``font`` with the installed emoji fonts as fallback families."""
    installed = set(QFontDatabase.families())
    # The family really used (a generic "Sans Serif" resolved by fontconfig): with a name no
    # font has, every glyph, digits and spaces too, would come from the emoji font.
    first = QFontInfo(font).family()
    out = QFont(font)
    out.setFamilies([first, *(f for f in EMOJI_FONTS if f in installed and f != first)])
    return out


def apply_theme(app: QApplication, dark: bool | None = None) -> None:
    """Fusion with a light or dark palette; ``dark=None`` follows the system."""
    app.setStyle("Fusion")
    app.setFont(font_with_fallbacks(app.font()))
    dark = system_prefers_dark() if dark is None else dark
    app.setPalette(_dark_palette() if dark else _light_palette())
    app.setStyleSheet(STYLE_SHEET)
    app.setProperty("tunesmith_dark", dark)


THEMES = ("system", "light", "dark")


def set_theme(app: QApplication, theme: str) -> None:
    """``system`` follows the OS (and its later switches); ``light``/``dark`` pin one."""
    app.setProperty("tunesmith_theme", theme)
    apply_theme(app, None if theme == "system" else theme == "dark")


def follow_system_theme(app: QApplication) -> None:
    """Re-apply the palette when the system switches between light and dark."""
    def on_change(_scheme: object) -> None:
        if app.property("tunesmith_theme") in (None, "system"):
            apply_theme(app)

    QGuiApplication.styleHints().colorSchemeChanged.connect(on_change)
