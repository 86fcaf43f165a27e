"""Choose a finished run of the job's runs folder (Evaluate and Export pages).

The folder is scanned on the worker pool (``engine.runs.scan_runs``). The default choice
is the run the Train page just finished, else the newest finished run; Browse… takes any run
folder. ``run_changed(path)`` says which run is chosen ("" when none).
"""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QShowEvent
from PySide6.QtWidgets import QComboBox, QFileDialog, QHBoxLayout, QLabel, QPushButton, QWidget

from engine.runs import RunSummary, scan_runs, summarize_run
from gui.controllers.job_model import JobModel
from gui.controllers.run_controller import shared_controller
from gui.controllers.tasks import TaskRunner
from gui.widgets.qt_widgets import muted


def _describe(run: RunSummary) -> str:
    loss = f", final loss {run.final_loss:.3f}" if run.final_loss is not None else ""
    return f"{run.method or '?'} · {run.model} · step {run.step}{loss} · {run.status}"


class QtRunPicker(QWidget):
    run_changed = Signal(str)

    def __init__(self, job: JobModel, tasks: TaskRunner, channel: str,
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.job, self.tasks, self._channel = job, tasks, channel
        self.runs: list[RunSummary] = []
        self._shown = False
        self.controller = shared_controller(job)
        self.combo = QComboBox()
        self.combo.setMinimumWidth(320)
        self.combo.setPlaceholderText("no finished run yet: train one on the Train page")
        self.refresh_button = QPushButton("Refresh")
        self.browse_button = QPushButton("Browse…")
        self.summary = muted(QLabel())
        self.refresh_button.setToolTip("Look for runs in the job's runs folder again")
        self.browse_button.setToolTip("Choose any run folder (runs/<name>-<timestamp>)")
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(QLabel("Run"))
        layout.addWidget(self.combo, 2)
        layout.addWidget(self.refresh_button)
        layout.addWidget(self.browse_button)
        layout.addWidget(self.summary, 3)
        self.combo.currentIndexChanged.connect(self._on_index_changed)
        self.refresh_button.clicked.connect(self.refresh)
        self.browse_button.clicked.connect(self._on_browse)
        self.controller.finished.connect(self._on_training_finished)
        self.job.changed.connect(self._on_job_changed)
        self.refresh()

    def run_dir(self) -> Path | None:
        index = self.combo.currentIndex()
        return self.runs[index].run_dir if 0 <= index < len(self.runs) else None

    def run(self) -> RunSummary | None:
        index = self.combo.currentIndex()
        return self.runs[index] if 0 <= index < len(self.runs) else None

    def runs_dir(self) -> Path:
        return Path(self.job.job.output.runs_dir).resolve()

    def refresh(self) -> None:
        folder = self.runs_dir()
        self.tasks.submit(self._channel, "Looking for runs…",
                              lambda: [r for r in scan_runs(folder) if not r.running],
                              self._on_scanned)

    def select(self, run_dir: str | Path) -> None:
        """Choose ``run_dir`` (added to the list when it lies elsewhere)."""
        run_dir = Path(run_dir).resolve()
        for i, run in enumerate(self.runs):
            if run.run_dir.resolve() == run_dir:
                self.combo.setCurrentIndex(i)
                return
        self._set_runs([summarize_run(run_dir), *self.runs], run_dir)

    def _on_scanned(self, runs: list[RunSummary]) -> None:
        current = self.run_dir()
        trained = self.controller.run_dir if self.controller.state == "finished" else None
        extra = [r for r in self.runs if r.run_dir.parent.resolve() != self.runs_dir()]
        self._set_runs([*extra, *runs], current or trained)

    def _set_runs(self, runs: list[RunSummary], prefer: Path | None) -> None:
        before = self.run_dir()
        self.runs = runs
        self.combo.blockSignals(True)
        self.combo.clear()
        for run in runs:
            self.combo.addItem(run.name, str(run.run_dir))
            self.combo.setItemData(self.combo.count() - 1, str(run.run_dir),
                                  Qt.ItemDataRole.ToolTipRole)
        names = [r.run_dir.resolve() for r in runs]
        index = names.index(prefer.resolve()) if prefer is not None and \
            prefer.resolve() in names else (0 if runs else -1)
        self.combo.setCurrentIndex(index)
        self.combo.blockSignals(False)
        self._show_summary()
        if self.run_dir() != before:
            self.run_changed.emit(str(self.run_dir() or ""))

    def _on_index_changed(self, _index: int) -> None:
        self._show_summary()
        self.run_changed.emit(str(self.run_dir() or ""))

    def _show_summary(self) -> None:
        run = self.run()
        self.summary.setText(_describe(run) if run is not None else "")
        self.summary.setToolTip(str(run.run_dir) if run is not None else "")

    def _on_browse(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Choose a run folder", str(self.runs_dir()))
        if folder:
            self.select(folder)

    def _on_training_finished(self, _status: str) -> None:
        if self.controller.run_dir is not None:
            self.select(self.controller.run_dir)
            self.refresh()

    def showEvent(self, event: QShowEvent) -> None:
        super().showEvent(event)
        if not event.spontaneous() and self._shown:  # back on the page: runs may have come
            self.refresh()
        self._shown = True

    def _on_job_changed(self, key: str) -> None:
        if key in ("", "output.runs_dir"):
            self.refresh()
