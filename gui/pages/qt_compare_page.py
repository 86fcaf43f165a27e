"""Compare methods: the lesson's trade-off table, measured on the user's own model and data.

The comparison runs ``python -m engine compare JOB --out DIR --events-stdout`` in a child
process (:class:`gui.controllers.compare_controller.CompareController`); each method trains in
its own grandchild. The table fills in live, method by method, beside the lesson's claimed
figures; the chart plots quality against memory and speed; "Use this method" makes the chosen
row the job's method. A finished comparison reopens from its folder.
"""

from __future__ import annotations

import html
import math
import shlex
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PySide6.QtCore import Qt
from PySide6.QtGui import QBrush, QColor
from PySide6.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QComboBox,
    QFileDialog,
    QGridLayout,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QWidget,
)

from engine import compare
from engine.errors import UserError
from engine.methods import METHODS
from gui.controllers.compare_controller import CompareController
from gui.widgets.qt_compare_chart import QtCompareChart
from gui.widgets.qt_widgets import card, connect_handlers, heading, human_count, muted, page_layout
from gui.widgets.theme import FITS, TIGHT, WONT_FIT
from gui.widgets.units import UNIT

if TYPE_CHECKING:
    from gui.controllers.app_context import AppContext

DEFAULT_METHODS = ("full", "lora", "qlora")  # ticked at first: the lesson's main three
# (header, row key or None for computed cells, tooltip)
COLUMNS = (
    ("Method", None, "The fine-tuning method"),
    ("Status", None, "Live progress, then completed / failed / skipped with the reason"),
    ("Trained", "trainable_params", "Trainable parameters"),
    ("Share", "trainable_share", "Share of all parameters that is trained (measured)"),
    ("Lesson share", None, "The lesson's claimed share of parameters trained"),
    ("Peak memory", "peak_memory_gb", "GPU: peak reserved by torch; CPU: the training "
     "process's peak RSS above the libraries alone"),
    ("Tokens/s", "tokens_per_s", "Real (non-padding) tokens per second, median over steps"),
    ("Wall", "wall_s", "Seconds: training child plus evaluation child"),
    ("Train loss", "final_train_loss", "The last training step's loss"),
    ("Held-out loss", "held_out_loss", "Mean cross-entropy per answer token on the held-out "
     "split (the same rows for every method)"),
    ("Perplexity", "perplexity", "e^held-out loss"),
    ("Quality", "quality", "(base loss − method loss) / (base loss − reference loss)"),
    ("Lesson quality", None, "The lesson's claimed quality relative to full fine-tuning"),
)
STATUS_COLORS = {"completed": FITS, "running": TIGHT, "failed": WONT_FIT, "skipped": WONT_FIT,
                 "stopped": TIGHT}


def _fmt(value: Any, spec: str, suffix: str = "") -> str:
    if not isinstance(value, int | float) or (isinstance(value, float)
                                               and not math.isfinite(value)):
        return "—"
    return format(value, spec) + suffix


def cell_text(key: str, value: Any) -> str:
    if key == "trainable_params":
        return human_count(value)
    if key == "trainable_share":
        return _fmt(None if value is None else 100 * value, ".3g", "%")
    if key == "quality":
        return _fmt(None if value is None else 100 * value, ".0f", "%")
    spec = {"peak_memory_gb": ".2f", "tokens_per_s": ",.0f", "wall_s": ".0f",
            "perplexity": ".2f"}.get(key, ".4f")
    suffix = {"peak_memory_gb": f" {UNIT}", "wall_s": " s"}.get(key, "")
    return _fmt(value, spec, suffix)


def _item(text: str, color: str | None = None, tip: str = "") -> QTableWidgetItem:
    item = QTableWidgetItem(text)
    item.setTextAlignment(Qt.AlignmentFlag.AlignCenter)
    if color:
        item.setForeground(QBrush(QColor(color)))
    if tip:
        item.setToolTip(tip)
    return item


class QtComparePage(QWidget):
    def __init__(self, ctx: AppContext, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.ctx, self.job = ctx, ctx.job
        self.controller = CompareController(self)
        self.data: dict[str, Any] = {}
        self._rows: dict[str, int] = {}  # method -> table row
        self._running: str = ""
        self._build()
        connect_handlers(self.controller, self, "state_changed", "progress", "method_changed",
                         "failed")
        self.controller.result.connect(self.show_comparison)
        self.table.itemSelectionChanged.connect(self._on_selection)
        self.job.changed.connect(self._show_command)
        self._on_state_changed("idle")
        self.refresh_past()

    # ------------------------------------------------------------------ layout
    def _build(self) -> None:
        layout = page_layout(self)
        layout.addWidget(heading("Compare methods", "Train each method briefly on this job's "
                                 "model and data, then measure what the lesson claims: share "
                                 "trained, memory, speed and held-out quality."))
        layout.addWidget(self._build_controls())
        busy = QHBoxLayout()
        self.progress = QProgressBar()
        self.progress.setTextVisible(False)
        self.progress.setMaximumHeight(12)
        self.status = muted(QLabel())
        self.status.setWordWrap(True)
        busy.addWidget(self.progress, 1)
        busy.addWidget(self.status, 3)
        layout.addLayout(busy)
        table_box, inner = card("Measured, beside the lesson's figures")
        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setHorizontalHeaderLabels([c[0] for c in COLUMNS])
        for i, (_h, _k, tip) in enumerate(COLUMNS):
            self.table.horizontalHeaderItem(i).setToolTip(tip)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.verticalHeader().hide()
        self.table.setWordWrap(True)  # a failure's reason is a sentence
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(1, QHeaderView.ResizeMode.Stretch)
        inner.addWidget(self.table)
        use = QHBoxLayout()
        self.use_button = QPushButton("Use this method")
        self.use_button.setToolTip("Make the selected row the job's method (method.name)")
        self.use_button.clicked.connect(self._on_use)
        self.note = muted(QLabel())
        self.note.setWordWrap(True)
        use.addWidget(self.use_button)
        use.addWidget(self.note, 1)
        inner.addLayout(use)
        layout.addWidget(table_box, 4)
        chart_box, chart_inner = card("Efficiency vs performance (measured)")
        self.chart = QtCompareChart()
        chart_inner.addWidget(self.chart)
        layout.addWidget(chart_box, 3)
        self.command = QLineEdit(readOnly=True)
        self.command.setStyleSheet("font-family: monospace;")
        self.command.setToolTip("The same comparison from a terminal")
        layout.addWidget(self.command)

    def _build_controls(self) -> QWidget:
        box = QWidget()
        grid = QGridLayout(box)
        grid.setContentsMargins(0, 0, 0, 0)
        methods = QHBoxLayout()
        self.method_boxes: dict[str, QCheckBox] = {}
        for name, spec in METHODS.items():
            check = QCheckBox(spec.label)
            check.setToolTip(f"{spec.summary}\nlearning rate {spec.suggested_lr:g}")
            check.setChecked(name in DEFAULT_METHODS)
            check.toggled.connect(self._show_command)
            self.method_boxes[name] = check
            methods.addWidget(check)
        methods.addStretch(1)
        grid.addLayout(methods, 0, 0, 1, 2)
        row = QHBoxLayout()
        self.run_button = QPushButton("▶ Compare")
        self.run_button.setToolTip("Train each ticked method in turn, in child processes")
        self.stop_button = QPushButton("■ Stop")
        self.steps = QSpinBox(minimum=1, maximum=100_000, value=compare.DEFAULT_STEPS)
        self.steps.setToolTip("Optimizer steps per method (the same for all)")
        self.steps.valueChanged.connect(self._show_command)
        self.past = QComboBox()
        self.past.setToolTip("Comparisons found in the job's runs folder")
        self.past.setMinimumWidth(260)
        self.open_button = QPushButton("Open…")
        self.open_button.setToolTip("Reopen a comparison folder")
        row.addWidget(self.run_button)
        row.addWidget(self.stop_button)
        row.addWidget(QLabel("Steps per method"))
        row.addWidget(self.steps)
        row.addStretch(1)
        row.addWidget(QLabel("Past"))
        row.addWidget(self.past)
        row.addWidget(self.open_button)
        grid.addLayout(row, 1, 0, 1, 2)
        self.run_button.clicked.connect(self._on_run)
        self.stop_button.clicked.connect(self.controller.stop)
        self.past.activated.connect(self._on_past)
        self.open_button.clicked.connect(self._on_open)
        return box

    # ------------------------------------------------------------------ actions
    def chosen_methods(self) -> list[str]:
        return [name for name, box in self.method_boxes.items() if box.isChecked()]

    def _show_command(self, *_args: object) -> None:
        cmd = ["python", "-m", "engine", "compare", self.job.path or "job.yaml",
               "--methods", ",".join(self.chosen_methods()), "--steps",
               str(self.steps.value())]
        self.command.setText(shlex.join(cmd))

    def _on_run(self) -> None:
        methods = self.chosen_methods()
        if not methods or self.controller.is_running():
            return
        self.data = {}
        self._fill_rows([compare.blank_row(m, status="waiting") for m in methods])
        self.controller.start(self.job.job, methods=methods, steps=self.steps.value())

    def refresh_past(self) -> None:
        self.past.clear()
        for folder in compare.scan_comparisons(self.job.job.output.runs_dir):
            self.past.addItem(folder.name, str(folder))
        self.past.setEnabled(self.past.count() > 0)

    def _on_past(self, index: int) -> None:
        folder = self.past.itemData(index)
        if folder:
            self.open_folder(folder)

    def _on_open(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Open a comparison folder",
                                                  self.job.job.output.runs_dir)
        if folder:
            self.open_folder(folder)

    def open_folder(self, folder: str | Path) -> None:
        try:
            data = compare.load_comparison(folder)
        except UserError as exc:
            self.status.setText(f"<span style='color:{WONT_FIT}'>{html.escape(exc.message)}"
                                "</span>")
            return
        self.show_comparison(data)
        # The controls say what the reopened comparison ran, so its command reruns it.
        ran = {row.get("method") for row in data["methods"]}
        for name, box in self.method_boxes.items():
            box.setChecked(name in ran)
        if isinstance(data.get("steps"), int) and data["steps"] > 0:
            self.steps.setValue(data["steps"])
        self.status.setText(f"Opened {html.escape(str(folder))}.")

    def _on_use(self) -> None:
        method = self.selected_method()
        if method is None:
            return
        self.job.set("method.name", method)
        self.note.setText(f"The job's method is now {METHODS[method].label}. Its suggested "
                          f"learning rate is {METHODS[method].suggested_lr:g} (Hyperparameters "
                          "page).")

    def selected_method(self) -> str | None:
        rows = self.table.selectionModel().selectedRows()
        if not rows:
            return None
        item = self.table.item(rows[0].row(), 0)
        return None if item is None else str(item.data(Qt.ItemDataRole.UserRole))

    def _on_selection(self) -> None:
        method = self.selected_method()
        row = next((r for r in self.data.get("methods", []) if r["method"] == method), None)
        self.use_button.setEnabled(method is not None and not self.controller.is_running()
                                   and (row is None or row.get("status") == "completed"))

    # ------------------------------------------------------------------ the table
    def _fill_rows(self, rows: list[dict[str, Any]]) -> None:
        self.table.setRowCount(len(rows))
        self._rows = {}
        for i, row in enumerate(rows):
            self._rows[row["method"]] = i
            self._set_row(i, row)
        self.table.resizeRowsToContents()

    def _set_row(self, i: int, row: dict[str, Any]) -> None:
        claim = compare.LESSON_CLAIMS.get(row["method"], {})
        name = _item(str(row.get("label") or row["method"]))
        name.setData(Qt.ItemDataRole.UserRole, row["method"])
        name.setTextAlignment(Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter)
        self.table.setItem(i, 0, name)
        status = str(row.get("status") or "")
        text = status + (f": {row['reason']}" if row.get("reason") else "")
        self.table.setItem(i, 1, _item(text, STATUS_COLORS.get(status), text))
        for col, (_h, key, _tip) in enumerate(COLUMNS[2:], start=2):
            if key is None:
                value = claim.get("share" if col == 4 else "quality") or ""
                self.table.setItem(i, col, _item(value or "—", None, claim.get("verdict", "")))
            else:
                self.table.setItem(i, col, _item(cell_text(key, row.get(key))))

    def show_comparison(self, data: dict[str, Any]) -> None:
        self.data = data
        self._fill_rows(data.get("methods", []))
        self.chart.show_comparison(data)
        ref = data.get("reference")
        machine = data.get("machine", {})
        kind = next((r["memory_kind"] for r in data["methods"] if r.get("memory_kind")), "")
        parts = [f"{data.get('model', '')}, {data.get('steps')} steps of batch "
                 f"{data.get('batch_size')} on {data.get('device', '')} "
                 f"({machine.get('cpu') or machine.get('gpu') or ''})."]
        if ref:
            parts.append(f"Quality is relative to {METHODS[ref].label}"
                         + (" (full fine-tuning did not run)" if ref != "full" else "")
                         + f"; base held-out loss {_fmt(data.get('base_loss'), '.4f')}.")
        else:
            parts.append("No quality: neither full fine-tuning nor LoRA finished.")
        if kind:
            parts.append(f"Memory: {compare.MEMORY_KINDS.get(kind, kind)}.")
        self.note.setText(" ".join(parts))
        self.refresh_past()
        self._on_selection()

    # ------------------------------------------------------------------ controller
    def _on_state_changed(self, state: str) -> None:
        running = state == "running"
        self.run_button.setEnabled(not running)
        self.stop_button.setEnabled(running)
        self.open_button.setEnabled(not running)
        self.progress.setVisible(running)
        for box in self.method_boxes.values():
            box.setEnabled(not running)
        if running:
            self.progress.setRange(0, 0)
            self.status.setText("Starting the engine…")
        elif state == "cancelled":
            self.status.setText("Stopped.")
        elif state == "idle":
            self.status.setText("Tick the methods and press Compare (each trains for the same "
                                "steps, in turn), or open a past comparison.")
        elif state == "done":
            self.status.setText(f"Done: {html.escape(str(self.controller.folder))}")
        self._show_command()
        self._on_selection()

    def _on_method_changed(self, data: dict[str, Any]) -> None:
        row = data.get("row") or {}
        method = str(data.get("method"))
        if method not in self._rows:
            return
        self._running = method if data.get("status") == "running" else ""
        self._set_row(self._rows[method], row)

    def _on_progress(self, message: str, current: int, total: int) -> None:
        if total > 1:
            self.progress.setRange(0, total)
            self.progress.setValue(current)
        self.status.setText(html.escape(message))
        if self._running in self._rows and message.startswith(f"{self._running}:"):
            detail = message.split(":", 1)[1].strip()
            self.table.setItem(self._rows[self._running], 1,
                               _item(f"running: {detail}", STATUS_COLORS["running"]))

    def _on_failed(self, message: str) -> None:
        self.status.setText(f"<span style='color:{WONT_FIT}'>Failed: "
                            f"{html.escape(message)}</span>")

    def shutdown(self) -> None:
        self.controller.shutdown()


__all__ = ["QtComparePage"]
