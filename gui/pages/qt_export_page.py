"""Export: the adapter, a merged 16-bit model and/or a GGUF file, from a finished run.

Each choice is one ``python -m engine export RUN_DIR --out DIR ... --events-stdout`` child
(:class:`gui.controllers.eval_controllers.ExportController` runs them in turn): the adapter goes to
``OUT/adapter``; the merged model to ``OUT/merged`` (with the GGUF file when both are chosen),
or the GGUF file alone to ``OUT/gguf``. Methods that cannot be merged say why before anything
runs, and merge/GGUF are switched off for them.
"""

from __future__ import annotations

import html
import shlex
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFrame,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QMessageBox,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QTextBrowser,
    QWidget,
)

from gui.controllers import file_dialogs
from gui.controllers.eval_controllers import ExportController
from gui.widgets.qt_remote_code import RemoteCodeAsker
from gui.widgets.qt_run_picker import QtRunPicker
from gui.widgets.qt_status import show_failure, show_progress
from gui.widgets.qt_widgets import card, connect_handlers, heading, muted, page_layout
from gui.widgets.theme import FITS, TIGHT, WONT_FIT

if TYPE_CHECKING:
    from gui.controllers.app_context import AppContext

KIND_TITLES = {"adapter": "Adapter", "merged": "Merged 16-bit model", "gguf": "GGUF file"}


def merge_refusal(run_dir: Path) -> str | None:
    """Why ``run_dir`` cannot be merged (method or task), or None; read from its job.yaml."""
    from engine.errors import UserError
    from engine.export import open_run

    try:
        info = open_run(run_dir, need_result=False)
    except (UserError, OSError, ValueError):
        return None  # the export itself will name the problem
    reason = info.merge_refusal()
    if reason is None:
        return None
    label = info.spec.label if info.job.task == "sft" else f"A {info.job.task} run"
    return f"{label} cannot be merged: {reason}."


def _non_empty(folder: Path) -> bool:
    return folder.is_dir() and any(folder.iterdir())


class QtExportPage(RemoteCodeAsker, QWidget):
    def __init__(self, ctx: AppContext, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.ctx, self.job = ctx, ctx.job
        self.controller = ExportController(self)
        self.refusal: str | None = None
        self._folders: list[Path] = []
        self._build()
        connect_handlers(self.controller, self, "state_changed", "progress", "exported",
                         "failed")
        self.picker.run_changed.connect(self._on_run_changed)
        self._on_run_changed(str(self.picker.run_dir() or ""))
        self._on_state_changed("idle")

    # ------------------------------------------------------------------ layout
    def _build(self) -> None:
        layout = page_layout(self)
        layout.addWidget(heading("Export", "Save the result: the adapter on its own, a merged "
                                 "16-bit model, or a GGUF file for llama.cpp and Ollama."))
        self.picker = QtRunPicker(self.job, self.ctx.tasks, "export_runs")
        layout.addWidget(self.picker)
        layout.addWidget(self._build_options())
        row = QHBoxLayout()
        self.export_button = QPushButton("⇩ Export")
        self.cancel_button = QPushButton("Cancel")
        self.progress = QProgressBar()
        self.progress.setTextVisible(False)
        self.progress.setMaximumHeight(12)
        self.status = muted(QLabel())
        self.status.setWordWrap(True)
        row.addWidget(self.export_button)
        row.addWidget(self.cancel_button)
        row.addWidget(self.progress, 1)
        row.addWidget(self.status, 2)
        layout.addLayout(row)
        self.command = QPlainTextEdit(readOnly=True)
        self.command.setFixedHeight(84)  # two commands, each wrapped once
        self.command.setStyleSheet("font-family: monospace;")
        self.command.setToolTip("The same export from a terminal")
        layout.addWidget(self.command)
        result, inner = card("Result")
        self.result_view = QTextBrowser()
        self.result_view.setPlaceholderText("What was written, and how each export was "
                                            "checked, appears here.")
        self.open_button = QPushButton("Open folder")
        self.open_button.setToolTip("Show the export folder in the file manager")
        inner.addWidget(self.result_view, 1)
        buttons = QHBoxLayout()
        buttons.addStretch(1)
        buttons.addWidget(self.open_button)
        inner.addLayout(buttons)
        layout.addWidget(result, 1)
        self.export_button.clicked.connect(self._on_export)
        self.cancel_button.clicked.connect(self.controller.cancel)
        self.open_button.clicked.connect(self._on_open_folder)

    def _build_options(self) -> QWidget:
        group, inner = card("What to write")
        grid = QGridLayout()
        self.out_edit = QLineEdit()
        self.out_edit.setToolTip("Each export goes to a folder of its own inside this one")
        browse = QPushButton("Browse…")
        browse.clicked.connect(self._on_browse)
        grid.addWidget(QLabel("Output folder"), 0, 0)
        grid.addWidget(self.out_edit, 0, 1, 1, 3)
        grid.addWidget(browse, 0, 4)
        self.adapter_box = QCheckBox("Adapter (PEFT folder: small; load it on top of the base)")
        self.merged_box = QCheckBox("Merged 16-bit model (standalone; the merge is checked "
                                    "against base + adapter)")
        self.gguf_box = QCheckBox("GGUF file for llama.cpp / Ollama, with a Modelfile")
        self.gguf_type = QComboBox()
        self.gguf_type.addItem("f16 (exact)", "f16")
        self.gguf_type.addItem("q8_0 (half the size)", "q8_0")
        self.gguf_type.addItem("Q5_K_M (llama.cpp's quantizer)", "q5_k_m")
        self.gguf_type.addItem("Q4_K_M (a quarter; llama.cpp's quantizer)", "q4_k_m")
        self.gguf_hint = QLabel()
        self.gguf_hint.setWordWrap(True)
        self.adapter_box.setChecked(True)
        grid.addWidget(self.adapter_box, 1, 1, 1, 3)
        grid.addWidget(self.merged_box, 2, 1, 1, 3)
        gguf_row = QHBoxLayout()
        gguf_row.addWidget(self.gguf_box)
        gguf_row.addWidget(self.gguf_type)
        gguf_row.addStretch(1)
        grid.addLayout(gguf_row, 3, 1, 1, 3)
        grid.addWidget(self.gguf_hint, 4, 1, 1, 3)
        grid.setColumnStretch(2, 1)
        inner.addLayout(grid)
        self.why = QLabel()
        self.why.setWordWrap(True)
        self.why.setFrameShape(QFrame.Shape.StyledPanel)
        self.why.setStyleSheet(f"QLabel {{ border-left: 4px solid {TIGHT}; padding: 6px; }}")
        inner.addWidget(self.why)
        for box in (self.adapter_box, self.merged_box, self.gguf_box):
            box.toggled.connect(self._on_options_changed)
        self.gguf_type.currentIndexChanged.connect(self._on_options_changed)
        self.out_edit.textChanged.connect(self._on_options_changed)
        return group

    # ------------------------------------------------------------------ choices
    def _on_run_changed(self, run_dir: str) -> None:
        self.refusal = merge_refusal(Path(run_dir)) if run_dir else None
        if run_dir:
            root = Path(self.job.job.output.runs_dir).resolve().parent / "exports"
            self.out_edit.setText(str(root / Path(run_dir).name))
        self.why.setText(f"{self.refusal} Export the adapter; it loads with peft on top of "
                         "the base model." if self.refusal else "")
        self.why.setVisible(bool(self.refusal))
        for box in (self.merged_box, self.gguf_box):
            box.setEnabled(self.refusal is None)
            box.setToolTip(self.refusal or "")
            if self.refusal:
                box.setChecked(False)
        self.gguf_type.setEnabled(self.refusal is None)
        self._on_options_changed()

    def plan(self, *, overwrite: bool = False) -> list[tuple[Path, list[str]]]:
        """(target folder, command) for each chosen export."""
        run_dir, out = self.picker.run_dir(), self.out_edit.text().strip()
        if run_dir is None or not out:
            return []
        root, steps = Path(out), []
        if self.adapter_box.isChecked():
            target = root / "adapter"
            steps.append((target, self.controller.command(run_dir, target, overwrite=overwrite)))
        merge, gguf = self.merged_box.isChecked(), self.gguf_box.isChecked()
        if (merge or gguf) and self.refusal is None:
            target = root / ("merged" if merge else "gguf")
            steps.append((target, self.controller.command(
                run_dir, target, merge=merge, gguf=gguf,
                gguf_type=str(self.gguf_type.currentData()), overwrite=overwrite)))
        return steps

    def _on_options_changed(self, *_args: object) -> None:
        lines = []
        for _target, cmd in self.plan():
            shown = ["python", "-m", "engine", *cmd[3:]]
            lines.append(shlex.join([a for a in shown if a != "--events-stdout"]))
        self.command.setPlainText("\n".join(lines))
        self._update_gguf_hint()
        self._update_buttons()

    def _update_gguf_hint(self) -> None:
        """The predicted GGUF size, or how to get llama.cpp's quantizer for a k-quant."""
        from engine.export import gguf_size_hint

        run_dir = self.picker.run_dir()
        show = self.gguf_box.isChecked() and run_dir is not None
        self.gguf_hint.setText(gguf_size_hint(run_dir, str(self.gguf_type.currentData()))
                               if show and run_dir is not None else "")
        self.gguf_hint.setVisible(show)

    def _on_browse(self) -> None:
        folder = file_dialogs.existing_dir(self, self.ctx.settings, "Export into",
                                           self.out_edit.text())
        if folder:
            self.out_edit.setText(folder)

    # ------------------------------------------------------------------ running
    def _on_export(self) -> None:
        steps = self.plan()
        if not steps or self.controller.is_running():
            return
        from engine.export import foreign_contents

        taken = [t for t, _ in steps if _non_empty(t)]
        foreign = {t: what for t in taken if (what := foreign_contents(t)) is not None}
        if foreign:
            self.tell_cannot_replace(foreign)
            return
        if taken and not self._confirm_overwrite(taken):
            return
        run_dir = self.picker.run_dir()
        if run_dir is not None and _loads_the_base(run_dir, steps) and not self.confirm_run(
                run_dir):
            return  # the base model's own code would run to merge, convert or load it
        steps = self.plan(overwrite=bool(taken))
        self._folders = [t for t, _ in steps]
        self.result_view.clear()
        self.controller.start([cmd for _, cmd in steps])

    def tell_cannot_replace(self, folders: dict[Path, str]) -> None:
        """An export replaces only an earlier export: say which folders hold other files."""
        names = "\n".join(f"{f}: {what}" for f, what in folders.items())
        QMessageBox.warning(
            self, "Cannot replace these folders",
            f"These folders hold files Tunesmith did not write:\n{names}\n\nAn export "
            "replaces only an earlier export. Pick another folder, or move those files away.")

    def _confirm_overwrite(self, folders: list[Path]) -> bool:
        names = "\n".join(str(f) for f in folders)
        answer = QMessageBox.question(
            self, "Replace the export?",
            f"These folders already hold files:\n{names}\n\nReplace them? The old files go "
            "only once the new export is complete.")
        return answer == QMessageBox.StandardButton.Yes

    def _update_buttons(self) -> None:
        running = self.controller.is_running()
        from engine.export import quantizer_available

        needs_quantizer = (self.gguf_box.isChecked() and not quantizer_available()
                           and str(self.gguf_type.currentData()).endswith("_k_m"))
        self.export_button.setEnabled(not running and bool(self.plan()) and not needs_quantizer)
        self.cancel_button.setEnabled(running)
        self.picker.setEnabled(not running)
        self.open_button.setEnabled(not running and self.export_folder() is not None)

    def export_folder(self) -> Path | None:
        folder = Path(self.out_edit.text().strip()) if self.out_edit.text().strip() else None
        return folder if folder is not None and folder.is_dir() else None

    def _on_state_changed(self, state: str) -> None:
        self.progress.setVisible(state == "running")
        if state == "running":
            self.progress.setRange(0, 0)
            self.status.setText("Starting the engine…")
        elif state == "done":
            self.result_view.verticalScrollBar().setValue(0)  # the first export first
            self.status.setText(f"<span style='color:{FITS}'>Done: "
                                f"{len(self.controller.results)} export(s) written.</span>")
        elif state == "cancelled":
            self.status.setText("Cancelled; nothing half-written is left in place.")
        elif state == "idle":
            self.status.setText("")
        self._update_buttons()

    def _on_progress(self, message: str, current: int, total: int) -> None:
        show_progress(self.progress, self.status, message, current, total)

    def _on_failed(self, message: str) -> None:
        show_failure(self.status, message)

    def _on_exported(self, result: dict[str, Any]) -> None:
        self.result_view.append(self._result_html(result))

    @staticmethod
    def _result_html(r: dict[str, Any]) -> str:
        kind = str(r.get("kind", ""))
        parts = [f"<p style='margin:0 0 4px 0'><b>{KIND_TITLES.get(kind, kind)}</b> → "
                 f"<code>{html.escape(str(r.get('path', '')))}</code><br>"]
        files = r.get("files") or []
        if files:
            parts.append(f"files: {html.escape(', '.join(files))}<br>")
        diff = r.get("max_logit_diff")
        if diff is not None:
            what = "GGUF vs merged" if kind == "gguf" else "merged vs base + adapter"
            parts.append(f"largest logit difference ({what}): <b>{diff:.2e}</b><br>")
        for note in r.get("notes") or []:
            parts.append(f"• {html.escape(str(note))}<br>")
        parts.append("</p>")
        return "".join(parts)

    def _on_open_folder(self) -> None:
        folder = self.export_folder()
        if folder is not None:
            problem = file_dialogs.open_folder(folder)
            if problem:
                self.status.setText(f"<span style='color:{WONT_FIT}'>{problem}</span>")

    # ------------------------------------------------------------------ lifetime
    def shutdown(self) -> None:
        self.controller.shutdown()


def _loads_the_base(run_dir: str | Path, steps: list[tuple[Path, list[str]]]) -> bool:
    """Whether the export loads the base model (merge, GGUF, or a fully fine-tuned model);
    copying an adapter runs none of its code."""
    from engine.config import load_job
    from engine.errors import UserError
    from engine.runs import JOB_FILE

    if any("--merge" in cmd or "--gguf" in cmd for _, cmd in steps):
        return True
    try:
        return load_job(Path(run_dir) / JOB_FILE).method.name == "full"
    except (UserError, OSError, ValueError):
        return True
