"""Model: built-in defaults, the catalog of popular models, a folder / .gguf / hub id."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from PySide6.QtCore import Qt
from PySide6.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QFormLayout,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QWidget,
)

from engine.config import TASKS
from engine.errors import UserError
from gui.controllers import engine_calls, file_dialogs
from gui.widgets.qt_widgets import card, heading, human_count, page_layout
from gui.widgets.theme import WONT_FIT

if TYPE_CHECKING:
    from gui.controllers.app_context import AppContext

FACTS = (("display_name", "Model"), ("parameters", "Parameters"), ("model_type", "Architecture"),
         ("layers", "Layers"), ("hidden_size", "Hidden size"), ("heads", "Attention heads"),
         ("kv_heads", "Key/value heads"), ("intermediate_size", "MLP size"),
         ("vocab_size", "Vocabulary"), ("context", "Context length"), ("license", "License"))


def _described_size(description: str) -> float | None:
    """'… 22M parameters …' → 22e6, for built-ins the catalog does not list."""
    match = re.search(r"(\d+(?:\.\d+)?)([MB]) parameters", description)
    if match is None:
        return None
    return float(match.group(1)) * (1e6 if match.group(2) == "M" else 1e9)


def _fact_text(key: str, value: Any) -> str:
    if value in (None, ""):
        return "—"
    if key == "parameters":
        return f"{human_count(value)}  ({value:,})"
    if key == "context":
        return f"{value:,} tokens"
    return f"{value:,}" if isinstance(value, int) else str(value)


class QtModelPage(QWidget):
    def __init__(self, ctx: AppContext, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.job, self.tasks, self.settings = ctx.job, ctx.tasks, ctx.settings
        self.info: dict[str, Any] = {}
        self.defaults: dict[str, dict[str, Any]] = {}  # built-in models, once a worker read them
        layout = page_layout(self)
        layout.addWidget(heading("Model", "The base model to fine-tune: a built-in default "
                                 "(works offline), a popular model from the catalog, a local "
                                 "folder or .gguf file, or any hub id."))
        layout.addWidget(self._source_card())
        body = QHBoxLayout()
        body.setSpacing(12)
        body.addWidget(self._catalog_card(), 5)
        body.addWidget(self._facts_card(), 2)
        layout.addLayout(body, 1)
        self.job.changed.connect(self._on_job_changed)
        self._on_job_changed("")

    # ------------------------------------------------------------------ building
    def _source_card(self) -> QWidget:
        group, inner = card("Base model")
        row = QHBoxLayout()
        self.source_edit = QLineEdit()
        self.source_edit.setPlaceholderText("hub id (org/name), folder or .gguf file")
        self.source_edit.setToolTip(self.job.field("model.source").metadata["help"])
        self.source_edit.returnPressed.connect(self._on_use_source)
        self.use_button = QPushButton("Use")
        self.use_button.clicked.connect(self._on_use_source)
        self.folder_button = QPushButton("Local folder…")
        self.folder_button.clicked.connect(self._on_pick_folder)
        self.gguf_button = QPushButton(".gguf file…")
        self.gguf_button.clicked.connect(self._on_pick_gguf)
        self.task_combo = QComboBox()
        self.task_combo.addItems(list(TASKS))
        self.task_combo.setToolTip(self.job.field("task").metadata["help"])
        self.task_combo.currentTextChanged.connect(self._on_task_chosen)
        for w in (self.source_edit, self.use_button, self.folder_button, self.gguf_button):
            row.addWidget(w, 1 if w is self.source_edit else 0)
        row.addSpacing(12)
        row.addWidget(QLabel("Task"))
        row.addWidget(self.task_combo)
        inner.addLayout(row)
        self.source_error = QLabel()
        self.source_error.setStyleSheet(f"color: {WONT_FIT};")
        self.source_error.setWordWrap(True)
        self.source_error.hide()
        inner.addWidget(self.source_error)
        return group

    def _catalog_card(self) -> QWidget:
        group, inner = card("Built-in defaults and popular models")
        self.table = QTableWidget(0, 5)
        self.table.setHorizontalHeaderLabels(["Model", "Parameters", "Context", "License",
                                              "Source"])
        self.table.verticalHeader().hide()
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setAlternatingRowColors(True)
        self.table.setWordWrap(False)
        self.table.setTextElideMode(Qt.TextElideMode.ElideRight)
        header = self.table.horizontalHeader()
        for col in (0, 1, 2, 4):
            header.setSectionResizeMode(col, QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(3, QHeaderView.ResizeMode.Stretch)
        self.table.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.tasks.submit("catalog", "Reading the model catalog…", engine_calls.model_choices,
                          self._on_catalog_ready)
        self.table.itemSelectionChanged.connect(self._on_catalog_selected)
        inner.addWidget(self.table)
        return group

    def _catalog_rows(self, catalog: list[dict[str, Any]]
                      ) -> list[tuple[str, str, Any, Any, str, str]]:
        """(display, source, params, context, license, origin) for defaults then the catalog."""
        rows = []
        entries = {e["name"]: e for e in catalog}
        for name, default in self.defaults.items():
            entry = entries.pop(name, {})
            label = entry.get("display_name") or default["description"].split(" (")[0]
            params = entry.get("params") or _described_size(default["description"])
            rows.append((f"★ {label}", name, params, entry.get("context_length"),
                         default["license"], "built-in (offline)"))
        for entry in entries.values():
            rows.append((entry["display_name"], entry["hub_id"], entry.get("params"),
                         entry.get("context_length"), entry.get("license", ""), entry["hub_id"]))
        return rows

    def _on_catalog_ready(self, choices: dict[str, Any]) -> None:
        self.defaults = choices["defaults"]
        self._fill_catalog(choices["catalog"])
        self._select_row(self.job.job.model.source)

    def _fill_catalog(self, catalog: list[dict[str, Any]]) -> None:
        """Read on a worker: the catalog is a YAML file and the defaults live in
        engine.models, neither needed for the window's first paint."""
        rows = self._catalog_rows(catalog)
        self.table.setRowCount(len(rows))
        for r, (label, source, params, context, lic, origin) in enumerate(rows):
            cells = (label, human_count(params), human_count(context), lic or "—", origin)
            for c, text in enumerate(cells):
                item = QTableWidgetItem(text)
                item.setData(Qt.ItemDataRole.UserRole, source)
                item.setToolTip(text)
                if c in (1, 2):
                    item.setTextAlignment(Qt.AlignmentFlag.AlignRight
                                          | Qt.AlignmentFlag.AlignVCenter)
                self.table.setItem(r, c, item)

    def _facts_card(self) -> QWidget:
        group, inner = card("Architecture")
        form = QFormLayout()
        form.setLabelAlignment(Qt.AlignmentFlag.AlignRight)
        self.fact_labels: dict[str, QLabel] = {}
        for key, title in FACTS:
            value = QLabel("—")
            value.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
            value.setWordWrap(True)
            self.fact_labels[key] = value
            form.addRow(f"{title}:", value)
        inner.addLayout(form)
        self.description = QLabel()
        self.description.setWordWrap(True)
        self.description.setStyleSheet("color: palette(placeholder-text);")
        inner.addWidget(self.description)
        inner.addStretch(1)
        self.status = QLabel()
        self.status.setWordWrap(True)
        inner.addWidget(self.status)
        return group

    # ------------------------------------------------------------------ events
    def _on_job_changed(self, key: str) -> None:
        if key in ("", "task"):
            self.task_combo.blockSignals(True)
            self.task_combo.setCurrentText(self.job.job.task)
            self.task_combo.blockSignals(False)
        if key in ("", "model.source"):
            source = self.job.job.model.source
            self.source_edit.setText(source)
            self._select_row(source)
            self._request_info(source)

    def _select_row(self, source: str) -> None:
        self.table.blockSignals(True)
        self.table.clearSelection()
        for r in range(self.table.rowCount()):
            if self.table.item(r, 0).data(Qt.ItemDataRole.UserRole) == source:
                self.table.selectRow(r)
        self.table.blockSignals(False)

    def _request_info(self, source: str) -> None:
        self.status.setText(f"Reading the configuration of {source}…")
        self.tasks.submit("model_info", f"Reading {source}…",
                          lambda: engine_calls.model_info(source),
                          self._on_info_ready, self._on_info_failed)

    def _on_info_ready(self, info: dict[str, Any]) -> None:
        self.info = info
        for key, label in self.fact_labels.items():
            label.setText(_fact_text(key, info.get(key)))
        self.description.setText(info.get("description") or info.get("hub_id") or "")
        self.status.setText("")

    def _on_info_failed(self, exc: BaseException) -> None:
        self.info = {}
        for label in self.fact_labels.values():
            label.setText("—")
        message = exc.message if isinstance(exc, UserError) else f"{type(exc).__name__}: {exc}"
        self.status.setText(f"<span style='color:{WONT_FIT}'>{message}</span>")

    def _set_source(self, source: str) -> None:
        source = source.strip()
        if not source:
            return
        try:
            self.job.set("model.source", source)
        except UserError as exc:
            self.source_error.setText(exc.message)
            self.source_error.show()
            return
        self.source_error.hide()
        default = self.defaults.get(source)
        if default is not None:
            self.job.set("task", default["task"])

    def _on_use_source(self) -> None:
        self._set_source(self.source_edit.text())

    def _on_catalog_selected(self) -> None:
        items = self.table.selectedItems()
        if items:
            self._set_source(items[0].data(Qt.ItemDataRole.UserRole))

    def _on_pick_folder(self) -> None:
        path = file_dialogs.existing_dir(self, self.settings, "Model folder (with config.json)")
        if path:
            self._set_source(path)

    def _on_pick_gguf(self) -> None:
        path = file_dialogs.open_file(self, self.settings, "GGUF model", "GGUF (*.gguf)")
        if path:
            self._set_source(path)

    def _on_task_chosen(self, task: str) -> None:
        self.job.set("task", task)
