"""The Runs page: every run in the runs folder, its status and losses; overlay loss curves.

The folder is scanned on a worker thread every few seconds (``engine.runs.scan_runs``);
a run still training shows as *running* and can be watched live on the Train page.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyqtgraph as pg
from PySide6.QtCore import Qt, QTimer
from PySide6.QtGui import QBrush, QColor, QShowEvent
from PySide6.QtWidgets import (
    QAbstractItemView,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QPushButton,
    QSplitter,
    QTableWidget,
    QTableWidgetItem,
    QWidget,
)

from engine.runs import EVENTS_FILE, Curves, RunSummary, load_curves, scan_runs
from gui.controllers.run_controller import shared_controller
from gui.widgets.qt_config_form import ask_folder
from gui.widgets.qt_plots import make_plot
from gui.widgets.qt_remote_code import RemoteCodeAsker
from gui.widgets.qt_widgets import heading, page_layout

if TYPE_CHECKING:
    from gui.controllers.app_context import AppContext

REFRESH_MS = 3000
COLUMNS = ("Run", "Status", "Model", "Method", "Devices", "Steps", "Train loss", "Eval loss",
           "Started")
COLORS = [(40, 110, 220), (230, 120, 30), (60, 170, 90), (200, 60, 60), (150, 90, 200),
          (30, 170, 180), (200, 160, 30), (120, 120, 120)]


def _loss(value: float | None) -> str:
    return "" if value is None else f"{value:.4f}"


class QtRunsPage(RemoteCodeAsker, QWidget):
    def __init__(self, ctx: AppContext, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.ctx, self.job = ctx, ctx.job
        self.controller = shared_controller(ctx.job)
        self.runs: list[RunSummary] = []
        self.curves: dict[Path, Curves] = {}
        self.stamps: dict[Path, tuple[int, int]] = {}  # events file (mtime, size) per curve
        self.plotted: list[Any] = []
        self._build()
        self.timer = QTimer(self, interval=REFRESH_MS)
        self.timer.timeout.connect(self._on_tick)
        self.timer.start()
        self.job.changed.connect(self._on_job_changed)
        self.controller.state_changed.connect(self._on_state_changed)
        self.refresh()

    def _build(self) -> None:
        layout = page_layout(self)
        layout.addWidget(heading("Runs", "Every run in the runs folder. Select several to "
                                         "compare their loss curves."))
        row = QHBoxLayout()
        self.folder_label = QLabel()
        self.folder_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.folder_button = QPushButton("Change folder…")
        self.folder_button.setToolTip("Choose the folder that holds your runs; new runs go "
                                      "there too (remembered for next time)")
        self.folder_button.clicked.connect(self._on_change_folder)
        self.refresh_button = QPushButton("Refresh")
        self.watch_button = QPushButton("Watch on Train page")
        self.resume_button = QPushButton("Resume")
        self.refresh_button.clicked.connect(self.refresh)
        self.watch_button.clicked.connect(self._on_watch)
        self.resume_button.clicked.connect(self._on_resume)
        row.addWidget(self.folder_label, 1)
        for button in (self.folder_button, self.refresh_button, self.watch_button,
                       self.resume_button):
            row.addWidget(button)
        layout.addLayout(row)
        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setHorizontalHeaderLabels(COLUMNS)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.verticalHeader().hide()
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        self.table.itemSelectionChanged.connect(self._on_selection)
        self.plot = make_plot("Loss curves of the selected runs", "loss")
        self.plot.setLabel("bottom", "step")
        self.legend = self.plot.addLegend(offset=(-10, 10))
        split = QSplitter(Qt.Orientation.Vertical)
        split.addWidget(self.table)
        split.addWidget(self.plot)
        split.setSizes([260, 320])
        layout.addWidget(split, 1)
        self._update_buttons()

    # ------------------------------------------------------------------ scanning
    def runs_dir(self) -> Path:
        return Path(self.job.job.output.runs_dir).resolve()

    def refresh(self) -> None:
        folder = self.runs_dir()
        self.folder_label.setText(f"Runs folder: {folder}")
        selected, stamps = self.selected_dirs(), dict(self.stamps)
        self.ctx.tasks.submit("runs_scan", "Reading the runs folder",
                              lambda: _scan(folder, selected, stamps), self._on_scanned)

    def _on_scanned(self, result: tuple[list[RunSummary], dict[Path, _Loaded]]) -> None:
        runs, curves = result
        selected = set(self.selected_dirs())
        self.runs = runs
        self._keep(curves)
        self.table.blockSignals(True)
        self.table.setRowCount(len(runs))
        for i, run in enumerate(runs):
            for j, text in enumerate(self._cells(run)):
                item = QTableWidgetItem(text)
                item.setData(Qt.ItemDataRole.UserRole, str(run.run_dir))
                if j == 1 and run.running:
                    item.setForeground(QBrush(QColor(40, 150, 60)))
                self.table.setItem(i, j, item)
        self._select_rows(selected)
        self.table.blockSignals(False)
        self._draw()
        self._update_buttons()

    def _cells(self, run: RunSummary) -> list[str]:
        steps = f"{run.step} / {run.max_steps}" if run.max_steps else str(run.step)
        started = time.strftime("%Y-%m-%d %H:%M", time.localtime(run.started)) \
            if run.started else ""
        return [run.name, run.status, Path(run.model).name or run.model, run.method,
                str(run.devices), steps,
                _loss(run.final_loss), _loss(run.final_eval_loss), started]

    # ------------------------------------------------------------------ selection and plot
    def selected_dirs(self) -> list[Path]:
        rows = sorted({i.row() for i in self.table.selectedIndexes()})
        return [Path(self.table.item(r, 0).data(Qt.ItemDataRole.UserRole)) for r in rows
                if self.table.item(r, 0) is not None]

    def selected_runs(self) -> list[RunSummary]:
        dirs = set(self.selected_dirs())
        return [r for r in self.runs if r.run_dir in dirs]

    def select_runs(self, run_dirs: list[Path]) -> None:
        self._select_rows({Path(p).resolve() for p in run_dirs})

    def _select_rows(self, wanted: set[Path]) -> None:
        model = self.table.selectionModel()
        flags = model.SelectionFlag.Select | model.SelectionFlag.Rows
        self.table.clearSelection()
        for row in range(self.table.rowCount()):
            if Path(self.table.item(row, 0).data(Qt.ItemDataRole.UserRole)) in wanted:
                model.select(self.table.model().index(row, 0), flags)

    def _on_selection(self) -> None:
        stale = [p for p in self.selected_dirs()
                 if p not in self.curves or self.stamps.get(p) != events_stamp(p)]
        if stale:
            self.ctx.tasks.submit("runs_curves", "Reading loss curves",
                                  lambda: _load(stale), self._on_curves)
        self._draw()
        self._update_buttons()

    def _on_curves(self, curves: dict[Path, _Loaded]) -> None:
        self._keep(curves)
        self._draw()

    def _keep(self, loaded: dict[Path, _Loaded]) -> None:
        for run_dir, (stamp, curves) in loaded.items():
            self.curves[run_dir], self.stamps[run_dir] = curves, stamp

    def _draw(self) -> None:
        item = self.plot.getPlotItem()
        item.clear()
        self.legend.clear()
        self.plotted = []
        for i, run_dir in enumerate(self.selected_dirs()):
            curves = self.curves.get(run_dir)
            if curves is None:
                continue
            color = COLORS[i % len(COLORS)]
            line = item.plot(curves.steps, curves.losses, pen=pg.mkPen(color, width=2),
                             name=f"{run_dir.name} (train)")
            self.plotted.append(line)
            if curves.eval_steps:
                dots = item.plot(curves.eval_steps, curves.eval_losses,
                                 pen=pg.mkPen(color, width=1, style=Qt.PenStyle.DashLine),
                                 symbol="o", symbolSize=6, symbolBrush=color,
                                 name=f"{run_dir.name} (eval)")
                self.plotted.append(dots)

    def _update_buttons(self) -> None:
        runs = self.selected_runs()
        one = runs[0] if len(runs) == 1 else None
        busy = self.controller.is_active()
        self.watch_button.setEnabled(one is not None and not busy)
        self.resume_button.setEnabled(one is not None and not busy and not one.running
                                      and one.status != "completed" and one.has_checkpoint)

    # ------------------------------------------------------------------ actions
    def _on_watch(self) -> None:
        runs = self.selected_runs()
        if len(runs) == 1 and not self.controller.is_active():
            self.controller.attach(runs[0].run_dir)
            self._show_train_page()

    def _on_resume(self) -> None:
        runs = self.selected_runs()
        if len(runs) == 1 and not self.controller.is_active():
            if not self.confirm_run(runs[0].run_dir):
                return
            self.controller.resume(runs[0].run_dir)
            self._show_train_page()

    def _show_train_page(self) -> None:
        window = self.window()
        if hasattr(window, "show_page"):
            window.show_page("train")

    def _on_change_folder(self) -> None:
        path = ask_folder(self, "Choose the runs folder", str(self.runs_dir()))
        if path:
            self.set_runs_dir(path)

    def set_runs_dir(self, path: str) -> None:
        """Show (and train new runs in) ``path``; the app remembers it as the runs folder."""
        self.ctx.settings.set_runs_dir(path)
        self.job.set("output.runs_dir", str(Path(path).resolve()))

    def _on_tick(self) -> None:
        if self.isVisible():
            self.refresh()

    def showEvent(self, event: QShowEvent) -> None:
        super().showEvent(event)
        self.refresh()  # a run may have moved on (or ended) while the page was hidden

    def _on_state_changed(self, _state: str) -> None:
        self._update_buttons()

    def _on_job_changed(self, key: str) -> None:
        if key in ("", "output.runs_dir"):
            self.refresh()


_Loaded = tuple[tuple[int, int], Curves]  # (events file stamp, curves read at that stamp)


def events_stamp(run_dir: Path) -> tuple[int, int]:
    """(mtime in ns, size) of a run's events file: it changes whenever the run writes."""
    try:
        st = (run_dir / EVENTS_FILE).stat()
    except OSError:
        return (0, 0)
    return (st.st_mtime_ns, st.st_size)


def _load(run_dirs: list[Path]) -> dict[Path, _Loaded]:
    out = {}
    for run_dir in run_dirs:
        stamp = events_stamp(run_dir)  # taken first: a line written meanwhile reloads again
        out[run_dir] = (stamp, load_curves(run_dir))
    return out


def _scan(folder: Path, selected: list[Path],
          stamps: dict[Path, tuple[int, int]]) -> tuple[list[RunSummary], dict[Path, _Loaded]]:
    """Summaries of every run, and the curves of selected runs whose events file changed
    since their curves were read, running or not (worker thread)."""
    runs = scan_runs(folder)
    return runs, _load([p for p in selected if stamps.get(p) != events_stamp(p)])
