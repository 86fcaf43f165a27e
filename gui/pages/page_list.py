"""The page list, in one place: a new page gets its entry here.

Each page is built on first visit (``build(ctx)`` imports its module only then), so the window
opens without importing pyqtgraph or any page it does not show yet.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

from PySide6.QtWidgets import QWidget

from gui.controllers.app_context import AppContext


@dataclass(frozen=True)
class PageSpec:
    key: str
    title: str
    subtitle: str  # one line under the title in the sidebar tooltip and the page header
    view: str  # "module:Class"; the class takes (ctx)
    step: bool = True  # a numbered step of the flow (Runs is not)

    def build(self, ctx: AppContext) -> QWidget:
        module_name, _, class_name = self.view.partition(":")
        cls: Callable[..., QWidget] = getattr(importlib.import_module(module_name), class_name)
        return cls(ctx)


PAGES: list[PageSpec] = [
    PageSpec("model", "Model", "Pick the base model", "gui.pages.qt_model_page:QtModelPage"),
    PageSpec("data", "Data", "Load and check your dataset", "gui.pages.qt_data_page:QtDataPage"),
    PageSpec("method", "Method", "Choose how to fine-tune",
             "gui.pages.qt_method_page:QtMethodPage"),
    PageSpec("hyperparameters", "Hyperparameters", "Tune the training run",
             "gui.pages.qt_hyperparams_page:QtHyperparamsPage"),
    PageSpec("train", "Train", "Run and watch the training", "gui.pages.qt_train_page:QtTrainPage"),
    PageSpec("evaluate", "Evaluate", "Measure and chat",
             "gui.pages.qt_evaluate_page:QtEvaluatePage"),
    PageSpec("export", "Export", "Save the result", "gui.pages.qt_export_page:QtExportPage"),
    PageSpec("compare", "Compare methods", "Measure the methods on this job",
             "gui.pages.qt_compare_page:QtComparePage", step=False),
    PageSpec("runs", "Runs", "Past and running jobs",
             "gui.pages.qt_runs_page:QtRunsPage", step=False),
]


def page_spec(key: str) -> PageSpec:
    for spec in PAGES:
        if spec.key == key:
            return spec
    raise KeyError(f"no page {key!r} (known: {', '.join(p.key for p in PAGES)})")
