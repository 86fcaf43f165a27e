"""Every page that starts an engine child asks before a run with ``trust_remote_code`` loads
(Runs' Resume, Evaluate, Chat, Export; Train is in test_train_page.py), and "No" starts nothing.
Resuming a run another trainer holds never removes that run's pending STOP."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
import yaml

from engine import events as ev
from engine import runs


@pytest.fixture(scope="module")
def trusting_run(tiny_llama_dir: Path, tmp_path_factory: pytest.TempPathFactory,
                 train_tiny_run: Any) -> Path:
    run = train_tiny_run(tiny_llama_dir, tmp_path_factory.mktemp("remote"))
    job = yaml.safe_load((run / runs.JOB_FILE).read_text(encoding="utf-8"))
    job["model"]["trust_remote_code"] = True
    (run / runs.JOB_FILE).write_text(yaml.safe_dump(job), encoding="utf-8")
    return run


class _Answers:
    """Stands in for the dialog: records each question, answers No, then Yes."""

    def __init__(self) -> None:
        self.asked: list[str] = []
        self._answers = iter([False, True])

    def __call__(self, source: str) -> bool:
        self.asked.append(source)
        return next(self._answers)


def _show(qtbot: Any, page: Any) -> Any:
    qtbot.addWidget(page)
    page.resize(1080, 700)
    page.show()
    return page


def test_evaluate_chat_and_export_ask_first(qtbot: Any, ctx: Any, trusting_run: Path,
                                            tiny_llama_dir: Path, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from gui.pages.qt_evaluate_page import QtEvaluatePage
    from gui.pages.qt_export_page import QtExportPage

    ctx.job.set("output.runs_dir", str(trusting_run.parent))
    page = _show(qtbot, QtEvaluatePage(ctx))
    qtbot.waitUntil(lambda: page.picker.run_dir() == trusting_run.resolve(), timeout=60_000)
    started: list[Any] = []
    monkeypatch.setattr(page.controller, "start", lambda *a, **k: started.append(a))
    page.confirm_remote_code = answers = _Answers()
    page.evaluate_button.click()
    assert answers.asked == [str(tiny_llama_dir)] and started == []  # No: nothing runs
    page.evaluate_button.click()
    assert len(started) == 1  # Yes

    page.tabs.setCurrentWidget(page.chat)
    chat = page.chat
    qtbot.waitUntil(lambda: chat.run_dir == str(trusting_run.resolve()), timeout=60_000)
    chats: list[Any] = []
    monkeypatch.setattr(page.chat_controller, "start", lambda *a, **k: chats.append(a))
    chat.confirm_remote_code = answers = _Answers()
    chat.message.setText("Hello?")
    chat.send_button.click()
    assert answers.asked and chats == [] and chat.message.text() == "Hello?"  # kept, not lost
    chat.send_button.click()
    assert len(chats) == 1

    export = _show(qtbot, QtExportPage(ctx))
    qtbot.waitUntil(lambda: export.picker.run_dir() is not None, timeout=60_000)
    export.picker.select(trusting_run)
    exports: list[Any] = []
    monkeypatch.setattr(export.controller, "start", lambda *a, **k: exports.append(a))
    export.confirm_remote_code = answers = _Answers()
    export.out_edit.setText(str(tmp_path / "out"))
    export.adapter_box.setChecked(True)
    export.merged_box.setChecked(False)
    export.gguf_box.setChecked(False)
    export.export_button.click()
    assert answers.asked == [] and len(exports) == 1  # copying an adapter runs no model code
    export.merged_box.setChecked(True)
    export.export_button.click()
    assert answers.asked == [str(tiny_llama_dir)] and len(exports) == 1  # merge: asked, No
    export.export_button.click()
    assert len(exports) == 2


def test_runs_page_resume_asks_first(qtbot: Any, ctx: Any, trusting_run: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from gui.pages.qt_runs_page import QtRunsPage

    ctx.job.set("output.runs_dir", str(trusting_run.parent))
    page = _show(qtbot, QtRunsPage(ctx))
    qtbot.waitUntil(lambda: page.table.rowCount() == 1, timeout=10_000)
    resumed: list[Path] = []
    monkeypatch.setattr(page.controller, "resume", resumed.append)
    monkeypatch.setattr(page.controller, "is_active", lambda: False)
    page.confirm_remote_code = answers = _Answers()
    page.select_runs([trusting_run])
    page._on_resume()  # the button is off for a completed run; the action is what is tested
    assert answers.asked and resumed == []
    page._on_resume()
    assert resumed == [trusting_run.resolve()]


def test_resuming_a_run_another_trainer_holds_keeps_its_stop(qtbot: Any, tmp_path: Path) -> None:
    from gui.controllers.run_controller import RunController

    run_dir = (tmp_path / "run").resolve()
    run_dir.mkdir()
    code = "import time; time.sleep(30)"
    trainer = subprocess.Popen([sys.executable, "-c", code, "--run-dir", str(run_dir)])
    try:
        deadline = time.monotonic() + 10
        while code not in psutil.Process(trainer.pid).cmdline() and time.monotonic() < deadline:
            time.sleep(0.02)
        (run_dir / runs.EVENTS_FILE).write_text(
            ev.to_json(ev.RunStarted(pid=trainer.pid, time=time.time(), max_steps=9)) + "\n")
        (run_dir / runs.LOCK_FILE).write_text(json.dumps(
            {"pid": trainer.pid, "started": psutil.Process(trainer.pid).create_time(),
             "run_dir": str(run_dir)}))
        (run_dir / runs.STOP_FILE).touch()  # the user's pending stop
        controller = RunController(stop_grace_s=0.2, quit_grace_s=0.2)
        said: list[ev.Event] = []
        controller.events.connect(said.extend)
        controller.resume(run_dir)
        assert (run_dir / runs.STOP_FILE).exists()
        assert controller.state == "running"  # it follows the live trainer instead
        assert any(isinstance(e, ev.Warning) and e.code == "already_training"
                   and str(trainer.pid) in e.message for e in said)
        controller.detach()
        controller.shutdown()
        controller.wait_reader()
        assert trainer.poll() is None
    finally:
        trainer.kill()
        trainer.wait()
