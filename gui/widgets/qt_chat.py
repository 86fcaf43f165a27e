"""Chat with the base and the tuned model side by side, tokens streamed as they come.

``QtChat(controller)`` is built from a :class:`gui.controllers.eval_controllers.ChatController`,
whose child (``python -m engine chat RUN_DIR``) holds both models and renders each conversation with
the model's own chat template. Each side keeps its own history (its own earlier answers), so the two
conversations stay what each model really said.
"""

from __future__ import annotations

import html
from typing import Any

from PySide6.QtGui import QTextCharFormat, QTextCursor
from PySide6.QtWidgets import (
    QDoubleSpinBox,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QTextBrowser,
    QVBoxLayout,
    QWidget,
)

from gui.controllers.eval_controllers import ChatController
from gui.widgets.qt_remote_code import RemoteCodeAsker
from gui.widgets.qt_widgets import card, muted
from gui.widgets.theme import muted_text

SIDES = ("base", "tuned")
TITLES = {"base": "Base model", "tuned": "Tuned model"}


class QtChatPane(QTextBrowser):
    """One model's side of the conversation; answers grow token by token."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setOpenLinks(False)
        self.setPlaceholderText("Answers appear here.")

    def add_user(self, text: str) -> None:
        self._append_html(f"<p style='margin:8px 0 2px 0'><b>You:</b> "
                          f"{html.escape(text)}</p><p style='margin:0'></p>")

    def start_answer(self) -> None:
        self.moveCursor(QTextCursor.MoveOperation.End)

    def add_token(self, text: str) -> None:
        cursor = self.textCursor()
        cursor.movePosition(QTextCursor.MoveOperation.End)
        cursor.insertText(text, QTextCharFormat())  # plain, whatever the note before it was
        self.ensureCursorVisible()

    def add_note(self, text: str) -> None:
        cursor = self.textCursor()
        cursor.movePosition(QTextCursor.MoveOperation.End)
        cursor.insertBlock()  # under the answer, not after its last word
        self._append_html(f"<p style='margin:2px 0 6px 0; color:{muted_text()}; "
                          f"font-size:9pt'>{html.escape(text)}</p><p style='margin:0'></p>")

    def _append_html(self, fragment: str) -> None:
        cursor = self.textCursor()
        cursor.movePosition(QTextCursor.MoveOperation.End)
        cursor.insertHtml(fragment)
        cursor.insertBlock()
        self.setTextCursor(cursor)
        self.ensureCursorVisible()


class QtChat(RemoteCodeAsker, QWidget):
    def __init__(self, controller: ChatController, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.controller = controller
        self.run_dir = ""
        self.history: dict[str, list[dict[str, str]]] = {side: [] for side in SIDES}
        self._pending: str | None = None  # a message typed before the models were loaded
        self._answers: dict[tuple[Any, str], list[str]] = {}
        self._build()
        controller.state_changed.connect(self._on_state_changed)
        controller.ready.connect(self._on_ready)
        controller.progress.connect(self._on_progress)
        controller.token.connect(self._on_token)
        controller.answered.connect(self._on_answered)
        controller.error.connect(self._on_error)
        self._on_state_changed(controller.state)

    # ------------------------------------------------------------------ layout
    def _build(self) -> None:
        layout = QVBoxLayout(self)
        layout.setContentsMargins(8, 8, 8, 8)
        top = QHBoxLayout()
        self.start_button = QPushButton("Load models")
        self.close_button = QPushButton("Close chat")
        self.start_button.setToolTip("Start a chat process that loads the base and tuned "
                                     "models of the chosen run")
        self.close_button.setToolTip("End the chat process: frees the models' memory")
        self.status = muted(QLabel())
        self.status.setWordWrap(True)
        top.addWidget(self.start_button)
        top.addWidget(self.close_button)
        top.addWidget(self.status, 1)
        layout.addLayout(top)
        layout.addLayout(self._settings_row())
        panes = QGridLayout()
        self.panes: dict[str, QtChatPane] = {}
        self.waiting: dict[str, QLabel] = {}  # a note while a pane waits for its answer
        for column, side in enumerate(SIDES):
            group, inner = card(TITLES[side])
            self.panes[side] = QtChatPane()
            self.waiting[side] = muted(QLabel())
            self.waiting[side].hide()
            inner.addWidget(self.panes[side])
            inner.addWidget(self.waiting[side])
            panes.addWidget(group, 0, column)
        layout.addLayout(panes, 1)
        bottom = QHBoxLayout()
        self.message = QLineEdit()
        self.message.setPlaceholderText("Type a message; both models answer it (Enter sends)")
        self.send_button = QPushButton("Send")
        self.stop_button = QPushButton("Stop")
        self.clear_button = QPushButton("Clear")
        self.stop_button.setToolTip("Stop the answers being generated")
        self.clear_button.setToolTip("Start a new conversation (the models stay loaded)")
        bottom.addWidget(self.message, 1)
        for button in (self.send_button, self.stop_button, self.clear_button):
            bottom.addWidget(button)
        layout.addLayout(bottom)
        self.start_button.clicked.connect(self._on_start)
        self.close_button.clicked.connect(self.controller.close)
        self.send_button.clicked.connect(self._on_send)
        self.message.returnPressed.connect(self._on_send)
        self.stop_button.clicked.connect(self.controller.cancel)
        self.clear_button.clicked.connect(self._on_clear)

    def _settings_row(self) -> QHBoxLayout:
        row = QHBoxLayout()
        self.temperature = QDoubleSpinBox(decimals=2, minimum=0.0, maximum=2.0, singleStep=0.1,
                                          value=0.7)
        self.temperature.setToolTip("Randomness of the answer; 0 always picks the likeliest "
                                    "token (greedy, repeatable)")
        self.top_p = QDoubleSpinBox(decimals=2, minimum=0.05, maximum=1.0, singleStep=0.05,
                                    value=0.9)
        self.top_p.setToolTip("Sample only from the likeliest tokens that together make up "
                              "this share of the probability")
        self.max_tokens = QSpinBox(minimum=1, maximum=4096, value=256, singleStep=32)
        self.max_tokens.setToolTip("The longest answer, in tokens")
        self.system = QLineEdit()
        self.system.setPlaceholderText("System prompt (optional)")
        self.system.setToolTip("Sent as the system turn; the chat template decides how it is "
                               "written")
        for text, widget in (("Temperature", self.temperature), ("Top-p", self.top_p),
                             ("Max tokens", self.max_tokens)):
            row.addWidget(QLabel(text))
            row.addWidget(widget)
            row.addSpacing(8)
        row.addWidget(self.system, 1)
        return row

    # ------------------------------------------------------------------ actions
    def set_run(self, run_dir: str) -> None:
        """Chat with ``run_dir`` from now on (a loaded chat of another run is closed)."""
        if run_dir == self.run_dir:
            return
        self.run_dir = run_dir
        if self.controller.state != "off":
            self.controller.close()
        self._on_clear()
        self._on_state_changed(self.controller.state)

    def _on_start(self) -> None:
        if self.run_dir and self.controller.state == "off" and self.confirm_run(self.run_dir):
            self.controller.start(self.run_dir)

    def _on_send(self) -> None:
        text = self.message.text().strip()
        if not text or not self.run_dir:
            return
        self.message.clear()
        if self.controller.state in ("off", "loading"):
            if self.controller.state == "off" and not self.confirm_run(self.run_dir):
                self.message.setText(text)  # nothing is lost: the message waits in its box
                return
            self._pending = text
            if self.controller.state == "off":
                self.controller.start(self.run_dir)
            for side in SIDES:
                self._wait(side, "loading the models… your message is sent once they are "
                                 "ready")
            return
        self.send(text)

    def _wait(self, side: str, text: str) -> None:
        self.waiting[side].setText(text)
        self.waiting[side].setVisible(bool(text))

    def send(self, text: str) -> None:
        """Ask both models; each answers its own conversation."""
        system = self.system.text().strip()
        for side in SIDES:
            if side not in self.controller.info.get("models", SIDES):
                continue
            self.history[side].append({"role": "user", "content": text})
            self.panes[side].add_user(text)
            messages = ([{"role": "system", "content": system}] if system else []) + \
                self.history[side]
            req_id = self.controller.send(
                messages, side, temperature=self.temperature.value(), top_p=self.top_p.value(),
                max_new_tokens=self.max_tokens.value())
            self._answers[(req_id, side)] = []
            self.panes[side].start_answer()
            # One chat process answers in turn: the tuned model waits for the base to finish.
            self._wait(side, "the base model is answering…" if side == "base" else
                       "loading the tuned model… it answers once the base model is done")

    def _on_clear(self) -> None:
        self.controller.cancel()
        self.history = {side: [] for side in SIDES}
        self._answers = {}
        for side, pane in self.panes.items():
            pane.clear()
            self._wait(side, "")

    # ------------------------------------------------------------------ controller
    def _on_state_changed(self, state: str) -> None:
        has_run = bool(self.run_dir)
        self.start_button.setEnabled(has_run and state == "off")
        self.close_button.setEnabled(state != "off")
        self.send_button.setEnabled(has_run and state in ("off", "ready", "loading"))
        self.message.setEnabled(has_run)
        self.stop_button.setEnabled(state == "busy")
        if state == "off":
            self.status.setText("Not loaded. Send a message or press Load models: a chat "
                                "process loads the base and tuned models; Close chat frees "
                                "their memory." if has_run else "Choose a finished run above.")
        elif state == "loading":
            self.status.setText("Loading the base and tuned models…")

    def _on_ready(self, info: dict[str, Any]) -> None:
        template = "the model's chat template" if info.get("chat_template") else \
            "no chat template (plain text)"
        stops = ", ".join(info.get("stop_tokens") or []) or "EOS"
        self.status.setText(f"Ready on {info.get('device', '?')} · {info.get('method', '')} · "
                            f"{template} · stops at {stops} · loaded in "
                            f"{info.get('load_s', 0):.1f} s")
        if self._pending:
            text, self._pending = self._pending, None
            self.send(text)

    def _on_progress(self, message: str) -> None:
        if self.controller.state == "loading" and message:
            self.status.setText(f"{message}…")

    def _on_token(self, req_id: Any, model: str, text: str) -> None:
        if (req_id, model) in self._answers:
            if not self._answers[(req_id, model)]:
                self._wait(model, "")  # the first word is here
            self._answers[(req_id, model)].append(text)
            self.panes[model].add_token(text)

    def _on_answered(self, done: dict[str, Any]) -> None:
        key = (done.get("id"), str(done.get("model")))
        if key not in self._answers:
            return
        side = key[1]
        self._wait(side, "")
        self.history[side].append({"role": "assistant", "content": str(done.get("text", ""))})
        reason = {"length": " · cut at max tokens", "cancelled": " · stopped"}.get(
            str(done.get("finish_reason")), "")
        self.panes[side].add_note(f"{done.get('tokens', 0)} tokens · "
                                  f"{done.get('tokens_per_s', 0):.1f} tokens/s{reason}")

    def _on_error(self, message: str) -> None:
        self.status.setText(f"Error: {message}")
        self._pending = None
        for side in SIDES:
            self._wait(side, "")
