"""Data: pick or drop a file, see its format, its rows as the model sees them, its problems
and its token lengths against the max length."""

from __future__ import annotations

import html
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PySide6.QtCore import QTimer
from PySide6.QtGui import QDragEnterEvent, QDropEvent
from PySide6.QtWidgets import (
    QComboBox,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QPushButton,
    QTextBrowser,
    QWidget,
)

from engine.config import FORMATS
from engine.errors import DataError, UserError
from gui.controllers import engine_calls, file_dialogs
from gui.widgets.qt_config_form import QtConfigForm
from gui.widgets.qt_histogram import QtLengthHistogram
from gui.widgets.qt_widgets import card, heading, page_layout
from gui.widgets.theme import FITS, WONT_FIT, muted_text, trained_background

if TYPE_CHECKING:
    from gui.controllers.app_context import AppContext

DATA_FILTER = "Datasets (*.jsonl *.json *.csv *.parquet *.txt);;All files (*)"
# Job keys whose change means the dataset must be inspected again.
INSPECT_KEYS = {"", "task", "model.source", "dataset.path", "dataset.format",
                "dataset.max_length", "dataset.overflow", "dataset.text_column",
                "dataset.label_column", "dataset.system_prompt", "dataset.split"}


class QtDataPage(QWidget):
    def __init__(self, ctx: AppContext, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.job, self.tasks, self.settings = ctx.job, ctx.tasks, ctx.settings
        self.report: Any = None
        self.setAcceptDrops(True)
        layout = page_layout(self)
        layout.addWidget(heading("Data", "Pick or drop a dataset file. Rows are shown exactly "
                                 "as the model will see them, with the chat template applied."))
        layout.addWidget(self._source_card())
        grid = QGridLayout()
        grid.setSpacing(12)
        grid.addWidget(self._preview_card(), 0, 0, 2, 1)
        grid.addWidget(self._histogram_card(), 0, 1)
        grid.addWidget(self._problems_card(), 1, 1)
        grid.setColumnStretch(0, 5)
        grid.setColumnStretch(1, 4)
        grid.setRowStretch(0, 1)
        grid.setRowStretch(1, 1)
        layout.addLayout(grid, 1)
        self._debounce = QTimer(self, singleShot=True, interval=250)
        self._debounce.timeout.connect(self._on_inspect)
        self.job.changed.connect(self._on_job_changed)
        self._on_job_changed("")

    # ------------------------------------------------------------------ building
    def _source_card(self) -> QWidget:
        group, inner = card("Dataset")
        row = QHBoxLayout()
        self.path_edit = QLineEdit()
        self.path_edit.setPlaceholderText("a .jsonl / .json / .csv / .parquet / .txt file — "
                                          "or drop one anywhere on this page")
        self.path_edit.setToolTip(self.job.field("dataset.path").metadata["help"])
        self.path_edit.editingFinished.connect(self._on_path_edited)
        self.browse_button = QPushButton("Browse…")
        self.browse_button.clicked.connect(self._on_browse)
        row.addWidget(self.path_edit, 1)
        row.addWidget(self.browse_button)
        row.addSpacing(12)
        row.addWidget(QLabel("Format"))
        self.format_combo = QComboBox()
        self.format_combo.addItems(list(FORMATS))
        self.format_combo.setToolTip(self.job.field("dataset.format").metadata["help"])
        self.format_combo.currentTextChanged.connect(self._on_format_chosen)
        row.addWidget(self.format_combo)
        self.detected_label = QLabel()
        row.addWidget(self.detected_label)
        inner.addLayout(row)
        row2 = QHBoxLayout()
        self.length_form = QtConfigForm(self.job, ["dataset.max_length", "dataset.overflow"],
                                        inline=True)
        row2.addWidget(self.length_form)
        row2.addStretch(1)
        self.rows_label = QLabel()
        row2.addWidget(self.rows_label)
        inner.addLayout(row2)
        return group

    def _preview_card(self) -> QWidget:
        group, inner = card("Preview — the first rows as the model sees them")
        legend = QLabel(f"<span style='background:{trained_background()}'>&nbsp;trained&nbsp;"
                        f"</span>&nbsp; tokens the loss is computed on &nbsp;&nbsp;"
                        f"<span style='color:{muted_text()}'>context</span> (not trained)")
        inner.addWidget(legend)
        self.preview = QTextBrowser()
        self.preview.setOpenLinks(False)
        inner.addWidget(self.preview, 1)
        return group

    def _histogram_card(self) -> QWidget:
        group, inner = card("Token lengths")
        self.histogram = QtLengthHistogram()
        inner.addWidget(self.histogram, 1)
        self.length_summary = QLabel()
        self.length_summary.setWordWrap(True)
        inner.addWidget(self.length_summary)
        return group

    def _problems_card(self) -> QWidget:
        group, inner = card("Problems")
        self.problems = QListWidget()
        self.problems.setWordWrap(True)
        inner.addWidget(self.problems)
        self.problems_group = group
        return group

    # ------------------------------------------------------------------ events
    def _on_job_changed(self, key: str) -> None:
        ds = self.job.job.dataset
        if key in ("", "dataset.path"):
            self.path_edit.setText(ds.path)
        if key in ("", "dataset.format"):
            self.format_combo.blockSignals(True)
            self.format_combo.setCurrentText(ds.format)
            self.format_combo.blockSignals(False)
        if key in INSPECT_KEYS:
            self._debounce.start()

    def _on_inspect(self) -> None:
        job = self.job.job
        if not job.dataset.path:
            self._show_empty()
            return
        self.rows_label.setText("Reading…")
        self.tasks.submit("inspect_data", f"Checking {Path(job.dataset.path).name}…",
                          lambda: engine_calls.inspect_for_job(job),
                          self._on_report, self._on_report_failed)

    def _on_report(self, result: tuple[Any, str]) -> None:
        report, note = result
        self.report = report
        how = "detected" if report.detected else "chosen"
        self.detected_label.setText(f"{how}: <b>{report.format}</b>")
        self.rows_label.setText(f"{report.rows:,} rows")
        self.preview.setHtml(_preview_html(report.preview) if report.preview
                             else _note_html(note or "No preview: the rows have no text."))
        self._show_problems(report.problems)
        self.histogram.set_lengths(report.lengths, self.job.job.dataset.max_length)
        self.length_summary.setText(_length_summary(report, self.job.job.dataset.overflow)
                                    if report.lengths else note)

    def _on_report_failed(self, exc: BaseException) -> None:
        self.report = None
        self.detected_label.setText("")
        self.rows_label.setText("")
        message = exc.message if isinstance(exc, UserError) else f"{type(exc).__name__}: {exc}"
        if isinstance(exc, ModuleNotFoundError):
            message = "The dataset inspector is not available in this build yet."
        self.preview.setHtml(_note_html(message, error=True))
        problems = exc.problems if isinstance(exc, DataError) else []
        self._show_problems(problems or [message])
        self.histogram.set_lengths([], self.job.job.dataset.max_length)
        self.length_summary.setText("")

    def _show_empty(self) -> None:
        self.report = None
        self.detected_label.setText("")
        self.rows_label.setText("")
        self.preview.setHtml(_note_html("Choose a dataset file, or drop one on this page."))
        self.problems.clear()
        self.problems_group.setTitle("Problems")
        self.histogram.set_lengths([], self.job.job.dataset.max_length)
        self.length_summary.setText("")

    def _show_problems(self, problems: list[str]) -> None:
        self.problems.clear()
        self.problems.addItems(problems or ["No problems found: every row is usable."])
        color = WONT_FIT if problems else FITS
        for i in range(self.problems.count()):
            self.problems.item(i).setForeground(_qcolor(color))
        self.problems_group.setTitle(f"Problems ({len(problems)})" if problems else "Problems")

    def _on_path_edited(self) -> None:
        self._set_path(self.path_edit.text().strip())

    def _set_path(self, path: str) -> None:
        try:
            self.job.set("dataset.path", path)
        except UserError as exc:
            self.rows_label.setText(exc.message)

    def _on_browse(self) -> None:
        path = file_dialogs.open_file(self, self.settings, "Dataset", DATA_FILTER)
        if path:
            self._set_path(path)

    def _on_format_chosen(self, fmt: str) -> None:
        self.job.set("dataset.format", fmt)

    def dragEnterEvent(self, event: QDragEnterEvent) -> None:
        if any(u.isLocalFile() for u in event.mimeData().urls()):
            event.acceptProposedAction()

    def dropEvent(self, event: QDropEvent) -> None:
        files = [u.toLocalFile() for u in event.mimeData().urls() if u.isLocalFile()]
        if files:
            self._set_path(files[0])
            event.acceptProposedAction()


def _qcolor(name: str) -> Any:
    from PySide6.QtGui import QColor

    return QColor(name)


def _note_html(text: str, *, error: bool = False) -> str:
    color = WONT_FIT if error else muted_text()
    return f"<p style='color:{color}'>{html.escape(text)}</p>"


def _preview_html(rows: list[list[tuple[str, bool]]]) -> str:
    parts = []
    for i, segments in enumerate(rows, 1):
        spans = "".join(_segment_html(text, trained) for text, trained in segments)
        parts.append(f"<p style='color:{muted_text()}; margin-top:8px'><b>Row {i}</b></p>"
                     f"<p style='white-space:pre-wrap; font-family:monospace'>{spans}</p>")
    return "".join(parts)


def _segment_html(text: str, trained: bool) -> str:
    escaped = html.escape(text)
    if trained:
        return f"<span style='background:{trained_background()}'>{escaped}</span>"
    return f"<span style='color:{muted_text()}'>{escaped}</span>"


def _length_summary(report: Any, overflow: str) -> str:
    lengths = sorted(report.lengths)
    p95 = lengths[min(len(lengths) - 1, int(len(lengths) * 0.95))]
    over = report.dropped if overflow == "drop" else report.truncated
    verb = "dropped" if overflow == "drop" else "truncated"
    color = WONT_FIT if over else FITS
    return (f"median {lengths[len(lengths) // 2]:,} · p95 {p95:,} · longest {lengths[-1]:,} "
            f"tokens — <span style='color:{color}'><b>{over:,}</b> of {len(lengths):,} rows "
            f"would be {verb}</span> at max length {report.max_length:,}")
