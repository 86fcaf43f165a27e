"""The page list, in one place: later issues slot their pages in here.

Each page is built on first visit (``build(ctx)`` imports its module only then), so the window
opens without importing pyqtgraph or any page it does not show yet.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field

from PySide6.QtWidgets import QWidget

from gui.job_model import JobModel
from gui.settings import AppSettings
from gui.tasks import TaskRunner


@dataclass
class AppContext:
    """What every page is built from: the job, the worker pool, the settings."""

    job: JobModel
    tasks: TaskRunner
    settings: AppSettings


@dataclass(frozen=True)
class PageSpec:
    key: str
    title: str
    subtitle: str  # one line under the title in the sidebar tooltip and the page header
    view: str  # "module:Class"; the class takes (ctx) or, for placeholders, (ctx, spec)
    step: bool = True  # a numbered step of the flow (Runs is not)
    placeholder: dict[str, str] = field(default_factory=dict)

    def build(self, ctx: AppContext) -> QWidget:
        module_name, _, class_name = self.view.partition(":")
        cls: Callable[..., QWidget] = getattr(importlib.import_module(module_name), class_name)
        return cls(ctx, self) if self.placeholder else cls(ctx)


_PLACEHOLDER = "gui.qt_placeholder_page:QtPlaceholderPage"

PAGES: list[PageSpec] = [
    PageSpec("model", "Model", "Pick the base model", "gui.qt_model_page:QtModelPage"),
    PageSpec("data", "Data", "Load and check your dataset", "gui.qt_data_page:QtDataPage"),
    PageSpec("method", "Method", "Choose how to fine-tune", "gui.qt_method_page:QtMethodPage"),
    PageSpec("hyperparameters", "Hyperparameters", "Tune the training run",
             "gui.qt_hyperparams_page:QtHyperparamsPage"),
    PageSpec("train", "Train", "Run and watch the training", "gui.qt_train_page:QtTrainPage"),
    PageSpec("evaluate", "Evaluate", "Measure and chat", "gui.qt_evaluate_page:QtEvaluatePage"),
    PageSpec("export", "Export", "Save the result", "gui.qt_export_page:QtExportPage"),
    PageSpec("runs", "Runs", "Past and running jobs", "gui.qt_runs_page:QtRunsPage", step=False),
]


def page_spec(key: str) -> PageSpec:
    for spec in PAGES:
        if spec.key == key:
            return spec
    raise KeyError(f"no page {key!r} (known: {', '.join(p.key for p in PAGES)})")
