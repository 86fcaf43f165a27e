"""Diagnostic banners: one per problem, with its advice and one-click actions."""

from __future__ import annotations

from collections.abc import Callable

from PySide6.QtCore import Signal
from PySide6.QtWidgets import QFrame, QHBoxLayout, QLabel, QPushButton, QVBoxLayout, QWidget

LEVEL_COLORS = {  # background, border
    "error": ("#fde8e8", "#d64545"),
    "warning": ("#fff4e0", "#e0a030"),
    "info": ("#e8f1fd", "#4a86d8"),
}


class QtBanner(QFrame):
    """A coloured strip: a bold title, a message, action buttons and a close button."""

    dismissed = Signal(str)

    def __init__(self, code: str, level: str, title: str, message: str,
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.code = code
        self.setObjectName("banner")
        bg, border = LEVEL_COLORS.get(level, LEVEL_COLORS["info"])
        self.setStyleSheet(f"#banner {{ background: {bg}; border: 1px solid {border};"
                           f" border-left: 5px solid {border}; border-radius: 4px; }}"
                           f" #banner QLabel {{ color: #202020; background: transparent; }}")
        self.title = QLabel(f"<b>{title}</b>")
        self.message = QLabel(message)
        self.message.setWordWrap(True)
        text = QVBoxLayout()
        text.setSpacing(2)
        text.addWidget(self.title)
        text.addWidget(self.message)
        self.buttons = QHBoxLayout()
        self.buttons.setSpacing(6)
        self.close_button = QPushButton("Dismiss")
        self.close_button.clicked.connect(self._on_dismiss)
        row = QHBoxLayout(self)
        row.setContentsMargins(10, 6, 8, 6)
        row.addLayout(text, 1)
        row.addLayout(self.buttons)
        row.addWidget(self.close_button)
        self.actions: dict[str, QPushButton] = {}

    def add_action(self, text: str, slot: Callable[[], None]) -> QPushButton:
        button = QPushButton(text)
        button.clicked.connect(slot)
        self.buttons.addWidget(button)
        self.actions[text] = button
        return button

    def _on_dismiss(self) -> None:
        self.dismissed.emit(self.code)


class QtBannerArea(QWidget):
    """A column of banners, at most one per code (a newer one replaces the older)."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._layout = QVBoxLayout(self)
        self._layout.setContentsMargins(0, 0, 0, 0)
        self._layout.setSpacing(4)
        self.banners: dict[str, QtBanner] = {}

    def show_banner(self, code: str, level: str, title: str, message: str) -> QtBanner:
        self.remove(code)
        banner = QtBanner(code, level, title, message)
        banner.dismissed.connect(self.remove)
        self.banners[code] = banner
        self._layout.addWidget(banner)
        return banner

    def remove(self, code: str) -> None:
        old = self.banners.pop(code, None)
        if old is not None:
            old.hide()
            old.deleteLater()

    def clear(self) -> None:
        for code in list(self.banners):
            self.remove(code)

    def visible_codes(self) -> list[str]:
        return list(self.banners)
