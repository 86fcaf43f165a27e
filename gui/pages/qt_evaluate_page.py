"""Evaluate: base vs tuned on the held-out split, answers side by side, and a chat.

The evaluation runs ``python -m engine evaluate RUN_DIR --events-stdout`` in a child process
(:class:`gui.controllers.eval_controllers.EvaluateController`) and shows the run's
``evaluation.json`` when it ends. The Chat tab (:class:`gui.widgets.qt_chat.QtChat`) holds its
models in another child, closed when the page is left and when the app quits.
"""

from __future__ import annotations

import html
import shlex
from typing import TYPE_CHECKING, Any

from PySide6.QtCore import Qt
from PySide6.QtGui import QBrush, QColor, QHideEvent
from PySide6.QtWidgets import (
    QAbstractItemView,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QTabWidget,
    QTextBrowser,
    QVBoxLayout,
    QWidget,
)

from gui.controllers.eval_controllers import ChatController, EvaluateController
from gui.widgets.qt_chat import QtChat
from gui.widgets.qt_remote_code import RemoteCodeAsker
from gui.widgets.qt_run_picker import QtRunPicker
from gui.widgets.qt_status import show_failure, show_progress
from gui.widgets.qt_widgets import card, connect_handlers, heading, muted, page_layout
from gui.widgets.theme import ACCENT, FITS, WONT_FIT, muted_text

if TYPE_CHECKING:
    from gui.controllers.app_context import AppContext


def _table(rows: int, columns: list[str]) -> QTableWidget:
    table = QTableWidget(rows, len(columns))
    table.setHorizontalHeaderLabels(columns)
    table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
    table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Stretch)
    table.verticalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Stretch)
    return table


def _item(text: str, color: str | None = None) -> QTableWidgetItem:
    item = QTableWidgetItem(text)
    item.setTextAlignment(Qt.AlignmentFlag.AlignCenter)
    if color:
        item.setForeground(QBrush(QColor(color)))
    return item


def _change(base: float, tuned: float) -> tuple[str, str | None]:
    if not base:
        return "", None
    pct = 100.0 * (tuned - base) / base
    return f"{pct:+.1f}%", FITS if pct < 0 else WONT_FIT if pct > 0 else None


class QtEvaluatePage(RemoteCodeAsker, QWidget):
    def __init__(self, ctx: AppContext, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.ctx, self.job = ctx, ctx.job
        self.controller = EvaluateController(self)
        self.chat_controller = ChatController(self)
        self.result: dict[str, Any] = {}
        self._build()
        connect_handlers(self.controller, self, "state_changed", "progress", "result", "failed")
        self.picker.run_changed.connect(self._on_run_changed)
        self._on_run_changed(str(self.picker.run_dir() or ""))
        self._on_state_changed("idle")

    # ------------------------------------------------------------------ layout
    def _build(self) -> None:
        layout = page_layout(self)
        layout.addWidget(heading("Evaluate", "Base vs tuned on the run's held-out data, "
                                 "answers side by side, and a chat with both."))
        self.picker = QtRunPicker(self.job, self.ctx.tasks, "evaluate_runs")
        layout.addWidget(self.picker)
        self.tabs = QTabWidget()
        self.tabs.addTab(self._build_evaluation(), "Evaluation")
        self.chat = QtChat(self.chat_controller)
        self.tabs.addTab(self.chat, "Chat")
        layout.addWidget(self.tabs, 1)

    def _build_evaluation(self) -> QWidget:
        box = QWidget()
        layout = QVBoxLayout(box)
        layout.setContentsMargins(8, 8, 8, 8)
        row = QHBoxLayout()
        self.evaluate_button = QPushButton("▶ Evaluate")
        self.evaluate_button.setToolTip("Score base and tuned on the held-out split and let "
                                        "both answer the prompts (in a child process)")
        self.cancel_button = QPushButton("Cancel")
        self.max_tokens = QSpinBox(minimum=1, maximum=2048, value=64)
        self.max_tokens.setToolTip("Length of each answer, in tokens")
        self.prompts = QLineEdit()
        self.prompts.setPlaceholderText("Prompts, separated by | (empty: the job's sample "
                                        "prompts or the first held-out questions)")
        row.addWidget(self.evaluate_button)
        row.addWidget(self.cancel_button)
        row.addWidget(QLabel("Answer length"))
        row.addWidget(self.max_tokens)
        row.addWidget(self.prompts, 1)
        layout.addLayout(row)
        busy = QHBoxLayout()
        self.progress = QProgressBar()
        self.progress.setTextVisible(False)
        self.progress.setMaximumHeight(12)
        self.status = muted(QLabel())
        busy.addWidget(self.progress, 1)
        busy.addWidget(self.status, 2)
        layout.addLayout(busy)
        across = QHBoxLayout()
        scores, inner = card("Held-out scores")
        self.scores = _table(2, ["Base", "Tuned", "Change"])
        self.scores.setVerticalHeaderLabels(["Loss", "Perplexity"])
        self.scores.setMinimumWidth(340)
        self.scores.setMaximumHeight(110)
        self.matrix = _table(0, [])
        self.matrix.setToolTip("Confusion matrix: rows are the true labels, columns the "
                               "predicted ones")
        self.note = muted(QLabel())
        self.note.setWordWrap(True)
        self.explain = muted(QLabel(
            "Loss: the mean cross-entropy per answer token on the run's held-out rows (the "
            "tokens training learned from); lower is better. Perplexity is e^loss: roughly how "
            "many tokens the model hesitates between. Base is the same model without the "
            "trained weights."))
        self.explain.setWordWrap(True)
        inner.addWidget(self.scores)
        inner.addWidget(self.matrix, 1)
        inner.addWidget(self.note)
        inner.addWidget(self.explain)
        inner.addStretch(1)
        answers, inner2 = card("Answers side by side (greedy)")
        self.answers = QTextBrowser()
        self.answers.setPlaceholderText("Press Evaluate: base and tuned answer the same "
                                        "prompts here.")
        inner2.addWidget(self.answers)
        across.addWidget(scores, 2)
        across.addWidget(answers, 3)
        layout.addLayout(across, 1)
        self.command = QPlainTextEdit(readOnly=True)
        self.command.setMaximumHeight(40)
        self.command.setStyleSheet("font-family: monospace;")
        self.command.setToolTip("The same evaluation from a terminal")
        layout.addWidget(self.command)
        self.evaluate_button.clicked.connect(self._on_evaluate)
        self.cancel_button.clicked.connect(self.controller.cancel)
        self.matrix.hide()
        return box

    # ------------------------------------------------------------------ actions
    def _on_run_changed(self, run_dir: str) -> None:
        self.chat.set_run(run_dir)
        self._show_command()
        self._on_state_changed(self.controller.state)

    def _prompt_list(self) -> list[str]:
        return [p.strip() for p in self.prompts.text().split("|") if p.strip()]

    def _show_command(self) -> None:
        run_dir = self.picker.run_dir()
        cmd = ["python", "-m", "engine", "evaluate", str(run_dir or "RUN_DIR"),
               "--max-new-tokens", str(self.max_tokens.value())]
        if self._prompt_list():
            cmd += ["--prompts", "prompts.txt"]
        self.command.setPlainText(shlex.join(cmd))

    def _on_evaluate(self) -> None:
        run_dir = self.picker.run_dir()
        if run_dir is None or self.controller.is_running():
            return
        self._show_command()
        if not self.confirm_run(run_dir):
            return
        self.controller.start(run_dir, prompts=self._prompt_list() or None,
                              max_new_tokens=self.max_tokens.value())

    # ------------------------------------------------------------------ controller
    def _on_state_changed(self, state: str) -> None:
        running = state == "running"
        self.evaluate_button.setEnabled(not running and self.picker.run_dir() is not None)
        self.cancel_button.setEnabled(running)
        self.picker.setEnabled(not running)
        self.progress.setVisible(running)
        if running:
            self.progress.setRange(0, 0)
            self.status.setText("Starting the engine…")
        elif state == "cancelled":
            self.status.setText("Cancelled.")
        elif state == "idle":
            self.status.setText("" if self.picker.run_dir() else
                                "No finished run yet: train one on the Train page.")

    def _on_progress(self, message: str, current: int, total: int) -> None:
        show_progress(self.progress, self.status, message, current, total)

    def _on_failed(self, message: str) -> None:
        show_failure(self.status, message)

    def _on_result(self, result: dict[str, Any]) -> None:
        self.result = result
        elapsed = result.get("elapsed_s")
        self.status.setText(f"Done in {elapsed:.1f} s on {result.get('eval_rows', 0)} "
                            f"held-out rows." if elapsed is not None else "Done.")
        self.note.setText(result.get("note", ""))
        if result.get("task") == "classify":
            self._show_classify(result.get("tuned") or {})
        else:
            self._show_losses(result.get("base") or {}, result.get("tuned") or {})
        self._show_answers(result.get("answers") or [])

    def _show_losses(self, base: dict[str, float], tuned: dict[str, float]) -> None:
        self.scores.setVerticalHeaderLabels(["Loss", "Perplexity"])
        self.scores.setHorizontalHeaderLabels(["Base", "Tuned", "Change"])
        self.scores.setRowCount(2)
        self.matrix.hide()
        for row, key, fmt in ((0, "loss", "{:.4f}"), (1, "perplexity", "{:.2f}")):
            b, t = base.get(key), tuned.get(key)
            self.scores.setItem(row, 0, _item(fmt.format(b) if b is not None else "—"))
            self.scores.setItem(row, 1, _item(fmt.format(t) if t is not None else "—"))
            text, color = _change(b, t) if b is not None and t is not None else ("", None)
            self.scores.setItem(row, 2, _item(text, color))

    def _show_classify(self, metrics: dict[str, Any]) -> None:
        self.explain.setText("Accuracy and macro-F1 (the mean F1 over every label) of the tuned "
                             "classifier on the held-out rows; the matrix counts true labels "
                             "(rows) against predictions (columns).")
        self.scores.setVerticalHeaderLabels(["Accuracy", "Macro-F1"])
        self.scores.setHorizontalHeaderLabels(["Base", "Tuned", "Change"])
        for row, key in ((0, "accuracy"), (1, "macro_f1")):
            value = metrics.get(key)
            self.scores.setItem(row, 0, _item("—"))
            self.scores.setItem(row, 1, _item(f"{value:.3f}" if value is not None else "—"))
            self.scores.setItem(row, 2, _item(""))
        labels = [str(x) for x in metrics.get("labels", [])]
        matrix = metrics.get("confusion_matrix") or []
        self.matrix.setRowCount(len(labels))
        self.matrix.setColumnCount(len(labels))
        self.matrix.setHorizontalHeaderLabels([f"→ {x}" for x in labels])
        self.matrix.setVerticalHeaderLabels(labels)
        peak = max((max(r) for r in matrix if r), default=0) or 1
        for i, row in enumerate(matrix):
            for j, count in enumerate(row):
                item = _item(str(count))
                shade = QColor(FITS if i == j else ACCENT)
                shade.setAlphaF(0.15 + 0.6 * count / peak if count else 0.0)
                item.setBackground(QBrush(shade))
                self.matrix.setItem(i, j, item)
        self.matrix.setVisible(bool(labels))

    def _show_answers(self, answers: list[dict[str, str]]) -> None:
        muted_color = muted_text()
        cells = ["<table width='100%' cellspacing='0' cellpadding='6' border='0'>",
                 "<tr><th align='left' width='50%'>Base</th>"
                 "<th align='left' width='50%'>Tuned</th></tr>"]
        for a in answers:
            cells.append(f"<tr><td colspan='2' style='color:{muted_color}; border-top:1px solid "
                         f"{muted_color}'><b>» {html.escape(a.get('prompt', ''))}</b></td></tr>")
            cells.append(f"<tr><td valign='top'>{html.escape(a.get('base', '')) or '—'}</td>"
                         f"<td valign='top'>{html.escape(a.get('tuned', '')) or '—'}</td></tr>")
        cells.append("</table>")
        self.answers.setHtml("".join(cells) if answers else "")

    # ------------------------------------------------------------------ lifetime
    def hideEvent(self, event: QHideEvent) -> None:
        super().hideEvent(event)
        if not event.spontaneous():  # the page was left (not the window minimized)
            self.chat_controller.close()

    def shutdown(self) -> None:
        self.controller.shutdown()
        self.chat_controller.shutdown()
