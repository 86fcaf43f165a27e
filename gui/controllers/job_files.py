"""Open and save job files with dialogs, shared by the window's menu and the pages."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from PySide6.QtWidgets import QMessageBox, QWidget

from engine.errors import UserError
from gui.controllers import file_dialogs

if TYPE_CHECKING:
    from gui.controllers.app_context import AppContext

JOB_FILTER = "Job files (*.yaml *.yml);;All files (*)"


def open_job(parent: QWidget, ctx: AppContext, path: str) -> bool:
    try:
        ctx.job.load(path)
    except UserError as exc:
        text = exc.message + (f"\n\n{exc.advice}" if exc.advice else "")
        QMessageBox.warning(parent, "Cannot open the job", text)
        return False
    ctx.settings.add_recent(path)
    return True


def save_job(parent: QWidget, ctx: AppContext, path: str) -> bool:
    try:
        ctx.job.save(path)
    except OSError as exc:
        QMessageBox.warning(parent, "Cannot save the job", f"{path}: {exc.strerror}")
        return False
    ctx.settings.add_recent(path)
    return True


def open_job_dialog(parent: QWidget, ctx: AppContext) -> bool:
    path = file_dialogs.open_file(parent, ctx.settings, "Open job", JOB_FILTER)
    return bool(path) and open_job(parent, ctx, path)


def save_job_dialog(parent: QWidget, ctx: AppContext) -> bool:
    start = ctx.job.path or f"{ctx.job.job.name}.yaml"
    path = file_dialogs.save_file(parent, ctx.settings, "Save job", JOB_FILTER, start)
    if not path:
        return False
    return save_job(parent, ctx, path if Path(path).suffix else f"{path}.yaml")
