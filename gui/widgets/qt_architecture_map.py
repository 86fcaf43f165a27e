"""The architecture map: the model's module tree with what the method trains highlighted."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from PySide6.QtCore import QTimer
from PySide6.QtGui import QBrush, QColor, QFont
from PySide6.QtWidgets import (
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QTreeWidget,
    QTreeWidgetItem,
    QWidget,
)

from gui.controllers import engine_calls
from gui.widgets.qt_widgets import card, human_count
from gui.widgets.theme import WONT_FIT, trained_background

if TYPE_CHECKING:
    from gui.controllers.app_context import AppContext

MAP_KEYS = {"", "model.source", "method.name", "method.r", "method.alpha",
            "method.target_modules", "method.num_virtual_tokens", "method.prefix_projection",
            "method.bottleneck_size"}


class QtArchitectureMap(QWidget):
    def __init__(self, ctx: AppContext, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.job, self.tasks = ctx.job, ctx.tasks
        self.result: dict[str, Any] = {}
        group, inner = card("Architecture map — what the method trains")
        self.summary = QLabel("Building the module tree…")
        self.summary.setWordWrap(True)
        inner.addWidget(self.summary)
        self.tree = QTreeWidget()
        self.tree.setHeaderLabels(["Module", "Type", "Parameters", "Trained"])
        self.tree.setUniformRowHeights(True)
        self.tree.setIndentation(14)
        header = self.tree.header()
        header.setStretchLastSection(False)
        for col in (0, 2, 3):
            header.setSectionResizeMode(col, QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(1, QHeaderView.ResizeMode.Stretch)  # the type elides
        inner.addWidget(self.tree, 1)
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(group)
        self._debounce = QTimer(self, singleShot=True, interval=300)
        self._debounce.timeout.connect(self._on_build)
        self.job.changed.connect(self._on_job_changed)
        self._debounce.start()

    def _on_job_changed(self, key: str) -> None:
        if key in MAP_KEYS:
            self._debounce.start()

    def _on_build(self) -> None:
        job = self.job.job
        source, method = job.model.source, job.method
        self.summary.setText(f"Building the module tree of {source} with {method.name}…")
        self.tasks.submit("architecture_map", "Building the architecture map…",
                          lambda: engine_calls.architecture_map(source, method),
                          self._on_map, self._on_failed)

    def _on_map(self, result: dict[str, Any]) -> None:
        self.result = result
        total, trained = result["total"], result["trainable"]
        share = trained / total * 100 if total else 0
        note = result.get("note", "")
        self.summary.setText(f"Trains <b>{human_count(trained)}</b> of {human_count(total)} "
                             f"parameters (<b>{share:.3g}%</b>). "
                             f"<span style='background:{trained_background()}'>&nbsp;Highlighted"
                             f"&nbsp;</span> modules are trained. {note}")
        self.tree.clear()
        root = _item(result["tree"])
        self.tree.addTopLevelItem(root)
        _expand_first_branch(root)

    def _on_failed(self, exc: BaseException) -> None:
        self.result = {}
        self.tree.clear()
        message = getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}"
        self.summary.setText(f"<span style='color:{WONT_FIT}'>No map: {message}</span>")

    def trained_names(self) -> list[str]:
        """Dotted names of the trained leaves (tests, and a 'copy' action later)."""
        out: list[str] = []
        _collect(self.result.get("tree") or {}, "", out)
        return out


def _item(node: dict[str, Any]) -> QTreeWidgetItem:
    trained = node.get("trainable", 0)
    kind = node.get("type", "")
    if node.get("shared_with"):
        kind = f"{kind} (shares {node['shared_with'].rsplit('.', 1)[-1]})"
    mark = "  + added" if node.get("added") else ""
    item = QTreeWidgetItem([node["name"], kind, human_count(node["params"]),
                            (human_count(trained) + mark) if trained else ""])
    if node.get("added"):
        item.setToolTip(0, "Added by the method; the base model's weights stay as they are")
    if trained:
        brush = QBrush(QColor(trained_background()))
        font = QFont()
        font.setBold(not node.get("children"))
        for col in range(4):
            item.setBackground(col, brush)
            item.setFont(col, font)
    for child in node.get("children", []):
        item.addChild(_item(child))
    return item


def _expand_first_branch(item: QTreeWidgetItem, depth: int = 0) -> None:
    """Open the path down to the first decoder layer, so a trained leaf is visible."""
    item.setExpanded(True)
    if depth < 6 and item.childCount():
        nxt = next((item.child(i) for i in range(item.childCount())
                    if item.child(i).childCount()), None)
        if nxt is not None:
            _expand_first_branch(nxt, depth + 1)
    for i in range(item.childCount()):
        child = item.child(i)
        if child.childCount() and child.text(0) in ("self_attn", "mlp", "attention"):
            child.setExpanded(True)


def _collect(node: dict[str, Any], prefix: str, out: list[str]) -> None:
    name = f"{prefix}.{node['name']}" if prefix else node.get("name", "")
    if not node.get("children"):
        if node.get("trainable"):
            out.append(name)
        return
    for child in node["children"]:
        _collect(child, name, out)
