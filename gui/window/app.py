"""Building the application: theme, settings, worker pool, window; shutdown on aboutToQuit."""

from __future__ import annotations

import sys
import time

from PySide6.QtCore import QEvent, QObject, QTimer
from PySide6.QtWidgets import QApplication, QWidget

from engine import runs
from gui.controllers.app_context import AppContext
from gui.controllers.job_model import JobModel
from gui.controllers.settings import AppSettings
from gui.controllers.tasks import TaskRunner
from gui.widgets.theme import THEMES, follow_system_theme, set_theme
from gui.window.qt_main_window import QtMainWindow


def create_app(app: QApplication, *, theme: str | None = None,
               settings: AppSettings | None = None) -> AppContext:
    """``theme`` None: the one saved in the settings (View → Theme), else follow the system."""
    app.setApplicationName("Tunesmith")
    app.setOrganizationName("Tunesmith")
    settings = settings or AppSettings()
    saved = str(settings.value("theme", "system"))
    set_theme(app, theme or (saved if saved in THEMES else "system"))
    follow_system_theme(app)
    ctx = create_context(settings, parent=app)
    ctx.tasks.hold()  # the window releases it once it has painted
    app.aboutToQuit.connect(ctx.tasks.close)
    return ctx


def create_context(settings: AppSettings, parent: QObject | None = None) -> AppContext:
    """The job, the worker pool and the settings every page is built from."""
    job = JobModel(parent=parent, runs_dir=settings.runs_dir())
    settings.runs_dir_changed.connect(lambda path: setattr(job, "runs_dir", path))
    return AppContext(job=job, tasks=TaskRunner(parent), settings=settings)


def create_window(ctx: AppContext, *, job: str | None = None, page: str = "model",
                  reopen: bool = True) -> QtMainWindow:
    """The window with ``job`` open, or (``reopen``) the job open when the app last closed.

    When a run of that job is still training (its trainer holds the run's lock, e.g. kept
    going in the background when the window closed), the Train page opens attached to it.
    """
    window = QtMainWindow(ctx)
    path = job or (ctx.settings.last_job() if reopen else "")
    if path and window.open_job(path):
        live = runs.live_runs_of(ctx.job.job.output.runs_dir, ctx.job.job.name)
        if live:
            window.show_page("train")
            window.page("train").attach(live[0])  # type: ignore[attr-defined]
            return window
    window.show_page(page)
    return window


class _FirstPaint(QObject):
    """Prints the time from interpreter start to the window's first paint, then quits."""

    def __init__(self, window: QWidget, start: float) -> None:
        super().__init__(window)
        self._start = start
        window.installEventFilter(self)

    def eventFilter(self, obj: QObject, event: QEvent) -> bool:
        if event.type() == QEvent.Type.Paint:
            obj.removeEventFilter(self)
            QTimer.singleShot(0, QApplication.quit)  # first: a closed stdout must not stop it
            print(f"visible {time.perf_counter() - self._start:.3f}", flush=True)
            print(f"title {obj.windowTitle()}", flush=True)
        return False


def report_when_visible(window: QWidget, start: float) -> None:
    _FirstPaint(window, start)
    print(f"modules {len(sys.modules)}", flush=True)
