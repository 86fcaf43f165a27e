"""AppContext: what every page is built from (the job, the worker pool, the settings)."""

from __future__ import annotations

from dataclasses import dataclass

from gui.controllers.job_model import JobModel
from gui.controllers.settings import AppSettings
from gui.controllers.tasks import TaskRunner


@dataclass
class AppContext:
    """What every page is built from: the job, the worker pool, the settings."""

    job: JobModel
    tasks: TaskRunner
    settings: AppSettings
