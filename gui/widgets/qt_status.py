"""A page's status line and progress bar, driven by a child process's events."""

from __future__ import annotations

import html
from typing import Any

from PySide6.QtWidgets import QLabel

from gui.widgets.theme import WONT_FIT


def show_progress(bar: Any, status: QLabel, message: str, current: int, total: int) -> None:
    """A child's progress event on a bar (busy when it has no total) and a status line."""
    if total > 1:
        bar.setRange(0, total)
        bar.setValue(current)
    else:
        bar.setRange(0, 0)
    status.setText(f"{message}…" if message else "")


def show_failure(status: QLabel, message: str) -> None:
    status.setText(f"<span style='color:{WONT_FIT}'>Failed: {html.escape(message)}</span>")
