"""Chat with base and tuned side by side, through a real ``python -m engine chat`` child.

(Named test_qt_chat.py: tests/test_chat.py, the engine's chat tests, has the basename
test_chat and pytest's default import mode refuses two test modules of one basename.)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

CHILD_MS = 180_000  # a child's imports, model load and work on a loaded 2-core machine


@pytest.fixture(scope="module")
def lora_run(tiny_llama_dir: Path, tmp_path_factory: pytest.TempPathFactory,
            train_tiny_run: Any) -> Path:
    return train_tiny_run(tiny_llama_dir, tmp_path_factory.mktemp("chat"))


def _chat_page(qtbot: Any, ctx: Any, run_dir: Path) -> Any:
    from gui.pages.qt_evaluate_page import QtEvaluatePage

    ctx.job.set("output.runs_dir", str(run_dir.parent))
    page = QtEvaluatePage(ctx)
    qtbot.addWidget(page)
    page.resize(1080, 700)
    page.show()
    page.tabs.setCurrentWidget(page.chat)
    qtbot.waitUntil(lambda: page.chat.run_dir == str(run_dir.resolve()), timeout=60_000)
    return page


def test_chat_streams_both_models_and_frees_them_on_leave(qtbot: Any, ctx: Any,
                                                          lora_run: Path) -> None:
    page = _chat_page(qtbot, ctx, lora_run)
    chat, controller = page.chat, page.chat_controller
    tokens: list[tuple[str, str]] = []
    controller.token.connect(lambda _id, model, text: tokens.append((model, text)))
    tuned_note: list[str] = []  # what the tuned pane says while the base answers
    controller.token.connect(lambda _id, model, _t: tuned_note.append(
        chat.waiting["tuned"].text() if not chat.waiting["tuned"].isHidden() else "")
        if model == "base" else None)
    chat.temperature.setValue(0.0)
    chat.max_tokens.setValue(6)
    assert chat.send_button.isEnabled() and controller.state == "off"
    chat.message.setText("What is 3 plus 3?")
    chat.send_button.click()  # starts the chat process; the message waits until it is ready
    try:
        assert controller.state == "loading" and chat.message.text() == ""
        assert "loading the models" in chat.waiting["tuned"].text()
        qtbot.waitUntil(lambda: all(len(h) == 2 for h in chat.history.values()),
                        timeout=CHILD_MS)
        assert controller.info["models"] == ["base", "tuned"]
        assert controller.info["chat_template"] is True
        assert "chat template" in chat.status.text()
        assert {m for m, _ in tokens} == {"base", "tuned"}  # streamed from both
        assert tuned_note and "loading the tuned model" in tuned_note[0]
        assert all(label.isHidden() for label in chat.waiting.values())  # answered: gone
        for side in ("base", "tuned"):
            streamed = "".join(t for m, t in tokens if m == side)
            assert chat.history[side][1] == {"role": "assistant", "content": streamed}
            text = chat.panes[side].toPlainText()
            assert "You: What is 3 plus 3?" in text and "tokens/s" in text
        qtbot.waitUntil(lambda: controller.state == "ready", timeout=10_000)
        proc = controller.child.proc
        page.hide()  # leaving the page closes the chat: the child exits and frees the models
        qtbot.waitUntil(lambda: controller.state == "off", timeout=30_000)
        assert proc is not None and proc.poll() is not None
        assert chat.start_button.isEnabled() and not chat.close_button.isEnabled()
    finally:
        page.shutdown()


def test_shutdown_ends_a_loading_chat(qtbot: Any, ctx: Any, lora_run: Path) -> None:
    page = _chat_page(qtbot, ctx, lora_run)
    page.chat.start_button.click()
    proc = page.chat_controller.child.proc
    assert page.chat_controller.state == "loading"
    page.shutdown()  # what app.aboutToQuit calls
    assert proc is not None and proc.poll() is not None
    assert page.chat_controller.state == "off"
