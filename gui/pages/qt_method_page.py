"""Method: the registered methods, their settings, the resource advisor and the architecture map.

Every row, label and settings panel comes from the engine's method registry (engine.methods),
read through :func:`gui.controllers.engine_calls.method_catalog` when the page is built.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from PySide6.QtCore import Qt
from PySide6.QtWidgets import (
    QAbstractItemView,
    QHeaderView,
    QLabel,
    QSplitter,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from gui.controllers import engine_calls
from gui.widgets.qt_advisor import QtAdvisor
from gui.widgets.qt_architecture_map import QtArchitectureMap
from gui.widgets.qt_config_form import QtConfigForm, section_keys
from gui.widgets.qt_widgets import card, heading, page_layout

if TYPE_CHECKING:
    from gui.controllers.app_context import AppContext

SHARE_KEYS = {"", "model.source"}


def _short_label(label: str) -> str:
    """A label short enough for the advisor's bars: "Prefix tuning" → "Prefix"."""
    return {"Full fine-tuning": "Full", "Bottleneck adapter": "Adapter"}.get(
        label, label.replace(" tuning", ""))


def _no_settings_text(name: str, info: dict[str, Any]) -> str:
    if name == "full":
        return ("Full fine-tuning has no method settings: it trains every weight. Set the "
                "learning rate lower (~2e-5).")
    return (f"{info['label']} has no method settings. Suggested learning rate: "
            f"~{info['suggested_lr']:g}.")


def _yes_no(flag: bool) -> str:
    return "✓" if flag else "—"


def share_text(share: float) -> str:
    if share >= 0.9995:
        return "100%"
    return f"{share * 100:.2g}%" if share >= 0.001 else f"{share * 100:.1g}%"


class QtMethodPage(QWidget):
    def __init__(self, ctx: AppContext, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.job, self.tasks = ctx.job, ctx.tasks
        self.methods = engine_calls.method_catalog()
        self.names = list(self.methods)
        # method.* keys that no method claims are shown for every method
        self._claimed = {k for info in self.methods.values() for k in info["settings"]}
        self.shares: dict[str, float] = {}
        layout = page_layout(self)
        layout.addWidget(heading("Method", "How to fine-tune: what each method trains, whether "
                                 "it fits your GPU, and where in the model it works."))
        splitter = QSplitter(Qt.Orientation.Horizontal)
        splitter.setChildrenCollapsible(False)
        splitter.addWidget(self._left_column())
        right = QSplitter(Qt.Orientation.Vertical)
        right.setChildrenCollapsible(False)
        short = {name: _short_label(info["label"]) for name, info in self.methods.items()}
        self.advisor = QtAdvisor(ctx, short)
        self.advisor.method_clicked.connect(self._on_method_clicked)
        self.arch_map = QtArchitectureMap(ctx)
        right.addWidget(self.advisor)
        right.addWidget(self.arch_map)
        right.setSizes([400, 240])
        splitter.addWidget(right)
        splitter.setSizes([470, 570])
        layout.addWidget(splitter, 1)
        self.job.changed.connect(self._on_job_changed)
        self._on_job_changed("")

    def _left_column(self) -> QWidget:
        column = QWidget()
        layout = QVBoxLayout(column)
        layout.setContentsMargins(0, 0, 6, 0)
        group, inner = card("Methods")
        self.table = QTableWidget(len(self.names), 4)
        self.table.setHorizontalHeaderLabels(["Method", "Trains", "Mergeable", "On 4-bit"])
        self.table.verticalHeader().hide()
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setVerticalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        for col in (1, 2, 3):
            header.setSectionResizeMode(col, QHeaderView.ResizeMode.ResizeToContents)
        self.table.horizontalHeaderItem(1).setToolTip("Share of the parameters trained, "
                                                      "counted on this model")
        self.table.horizontalHeaderItem(2).setToolTip("Can be merged into the base weights")
        self.table.horizontalHeaderItem(3).setToolTip("Works on a base loaded in 4-bit")
        self._fill_table()
        self.table.setFixedHeight(self.table.horizontalHeader().height() + 2
                                  + sum(self.table.rowHeight(r) for r in range(len(self.names))))
        self.table.itemSelectionChanged.connect(self._on_row_selected)
        inner.addWidget(self.table)
        self.summary = QLabel()
        self.summary.setWordWrap(True)
        inner.addWidget(self.summary)
        layout.addWidget(group)
        settings, settings_layout = card("Settings")
        keys = [k for k in section_keys("method") if k != "method.name"]
        self.form = QtConfigForm(self.job, keys)
        self.no_settings = QLabel()
        self.no_settings.setWordWrap(True)
        settings_layout.addWidget(self.form)
        settings_layout.addWidget(self.no_settings)
        settings_layout.addStretch(1)
        self.settings_group = settings
        layout.addWidget(settings, 1)
        return column

    def _fill_table(self) -> None:
        for r, name in enumerate(self.names):
            info = self.methods[name]
            cells = (info["label"], "…", _yes_no(info["mergeable"]),
                     _yes_no(info["works_on_4bit"]))
            for c, text in enumerate(cells):
                item = QTableWidgetItem(text)
                item.setData(Qt.ItemDataRole.UserRole, name)
                item.setToolTip(info["summary"])
                if c:
                    item.setTextAlignment(Qt.AlignmentFlag.AlignCenter)
                self.table.setItem(r, c, item)

    # ------------------------------------------------------------------ events
    def _on_job_changed(self, key: str) -> None:
        if key in ("", "method.name"):
            self._show_method(self.job.job.method.name)
        if key in SHARE_KEYS:
            self._request_shares()

    def _show_method(self, name: str) -> None:
        row = self.names.index(name)
        self.table.blockSignals(True)
        self.table.selectRow(row)
        self.table.blockSignals(False)
        info = self.methods[name]
        self._show_summary(name)
        self.settings_group.setTitle(f"{info['label']} settings")
        wanted = set(info["settings"])
        for key in self.form.editors:
            short = key.rpartition(".")[2]
            self.form.set_row_visible(key, short in wanted or short not in self._claimed)
        self.no_settings.setText(_no_settings_text(name, info))
        self.no_settings.setVisible(not wanted)

    def _show_summary(self, name: str) -> None:
        """The registry's blurb, then the share measured on this model (the table's figure)."""
        info = self.methods[name]
        text = f"<b>{info['label']}</b> — {info['summary']}"
        if name in self.shares:
            text += f" On this model: <b>{share_text(self.shares[name])}</b> trained."
        self.summary.setText(text)

    def _request_shares(self) -> None:
        source = self.job.job.model.source
        for r in range(self.table.rowCount()):
            self.table.item(r, 1).setText("…")
        self.tasks.submit("method_shares", "Counting trainable parameters…",
                          lambda: engine_calls.method_shares(source),
                          self._on_shares, self._on_shares_failed)

    def _on_shares(self, shares: dict[str, float | None]) -> None:
        self.shares = {k: v for k, v in shares.items() if v is not None}
        for r, name in enumerate(self.names):
            value = shares.get(name)
            self.table.item(r, 1).setText("—" if value is None else share_text(value))
        self._show_summary(self.job.job.method.name)

    def _on_shares_failed(self, exc: BaseException) -> None:
        for r in range(self.table.rowCount()):
            self.table.item(r, 1).setText("?")
            self.table.item(r, 1).setToolTip(f"Could not count: {exc}")

    def _on_row_selected(self) -> None:
        items = self.table.selectedItems()
        if items:
            self.job.set("method.name", items[0].data(Qt.ItemDataRole.UserRole))

    def _on_method_clicked(self, name: str) -> None:
        self.job.set("method.name", name)
