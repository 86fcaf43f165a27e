"""The Train page through the real background engine: a tiny Llama trained in a child process.

The child imports torch and transformers (~5-10 s on 2 busy cores), so waits are generous.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from engine import events as ev
from engine import runs
from engine.config import JobConfig, job_from_dict
from gui.controllers.app_context import AppContext
from gui.controllers.job_model import JobModel
from gui.controllers.run_controller import RunController, shared_controller
from gui.controllers.settings import AppSettings
from gui.controllers.tasks import TaskRunner

RUN_MS = 240_000  # one whole tiny run, child start included, on a loaded 2-core machine


def tiny_job(model: Path, data: Path, runs: Path, **training: Any) -> JobConfig:
    return job_from_dict({
        "name": "tiny", "model": {"source": str(model)},
        "dataset": {"path": str(data), "max_length": 64, "eval_split": 0.0},
        "method": {"name": "lora", "r": 4},
        "training": {"max_steps": 6, "batch_size": 2, "logging_steps": 1, "seed": 1,
                     **training},
        "output": {"runs_dir": str(runs)}})


@pytest.fixture
def make_ctx(tmp_path: Path) -> Iterator[Any]:
    made: list[AppContext] = []

    def make(job: JobConfig) -> AppContext:
        ctx = AppContext(job=JobModel(job), tasks=TaskRunner(),
                         settings=AppSettings(str(tmp_path / f"settings{len(made)}.ini")))
        made.append(ctx)
        return ctx

    yield make
    for ctx in made:
        controller = shared_controller(ctx.job)
        controller.keep_in_background = False
        controller.shutdown()
        ctx.tasks.wait(30_000)


def _page(qtbot: Any, ctx: AppContext) -> Any:
    from gui.pages.qt_train_page import QtTrainPage

    page = QtTrainPage(ctx)
    qtbot.addWidget(page)
    page.resize(1200, 760)
    page.show()
    return page


def _steps(run_dir: Path) -> list[int]:
    return [e.step for e in runs.read_events(run_dir / runs.EVENTS_FILE) if isinstance(e, ev.Step)]


def _curve_steps(page: Any) -> list[int]:
    return [s for s, _ in page.plots.loss_points()]


def test_a_tiny_job_runs_to_completion(qtbot: Any, make_ctx: Any, tiny_llama_dir: Path,
                                       chat_jsonl: Path, tmp_path: Path) -> None:
    ctx = make_ctx(tiny_job(tiny_llama_dir, chat_jsonl, tmp_path / "runs",
                            sample_prompts=["Hi?"], sample_max_new_tokens=4, eval_steps=3))
    ctx.job.set("dataset.eval_split", 0.2)
    page = _page(qtbot, ctx)
    try:
        with qtbot.waitSignal(page.controller.finished, timeout=RUN_MS) as blocker:
            run_dir = page.start_job()
            assert run_dir is not None
            assert page.controller.state == "starting"
            assert not page.start_button.isEnabled()
        assert blocker.args == ["completed"]
        steps = _steps(run_dir)
        assert steps == [1, 2, 3, 4, 5, 6]
        assert _curve_steps(page) == steps  # one curve point per logged step
        qtbot.waitUntil(lambda: len(page.plots.raw_curve.getData()[0]) == 6, timeout=2000)
        assert page.plots.eval.n == 2  # evaluations at steps 3 and 6
        assert page.samples.samples and page.samples.samples[0].prompt == "Hi?"
        assert (run_dir / "adapter" / "adapter_config.json").is_file()
        assert (run_dir / "job.yaml").is_file()
        assert (run_dir / "console.log").is_file()
        assert isinstance(runs.read_events(run_dir / runs.EVENTS_FILE)[-1], ev.RunFinished)
        assert page.progress.value() == page.progress.maximum() == 6
        assert "completed" in page.progress.format()
        assert "completed at step 6" in page.log_view.toPlainText()
        assert page.start_button.isEnabled()
        assert not page.resume_button.isEnabled()  # nothing to resume
    finally:
        page.shutdown()


def test_stop_then_resume_continues_the_curve(qtbot: Any, make_ctx: Any, tiny_llama_dir: Path,
                                              chat_jsonl: Path, tmp_path: Path) -> None:
    ctx = make_ctx(tiny_job(tiny_llama_dir, chat_jsonl, tmp_path / "runs", max_steps=200))
    page = _page(qtbot, ctx)
    try:
        run_dir = page.start_job()
        qtbot.waitUntil(lambda: len(_curve_steps(page)) >= 2, timeout=RUN_MS)
        with qtbot.waitSignal(page.controller.finished, timeout=RUN_MS) as blocker:
            page.stop_button.click()
            assert page.controller.state == "stopping"
            assert (run_dir / "STOP").exists()
        assert blocker.args == ["stopped"]
        stopped_at = _curve_steps(page)[-1]
        assert (run_dir / "checkpoints" / f"checkpoint-{stopped_at}").is_dir()
        assert page.resume_button.isEnabled()

        page.resume_button.click()
        assert page.controller.run_dir == run_dir
        assert _curve_steps(page) == list(range(1, stopped_at + 1))  # the old curve stays
        qtbot.waitUntil(lambda: _curve_steps(page)[-1] >= stopped_at + 2, timeout=RUN_MS)
        with qtbot.waitSignal(page.controller.finished, timeout=RUN_MS):
            page.controller.stop()
        curve = _curve_steps(page)
        assert curve == list(range(1, curve[-1] + 1))  # continuous, no gap, no repeat
        assert curve == _steps(run_dir)  # the child appended to the same events.jsonl
        started = [e for e in page.controller.history if isinstance(e, ev.RunStarted)]
        assert len(started) == 2
    finally:
        page.shutdown()


def test_close_the_window_mid_run_and_reattach(qtbot: Any, make_ctx: Any, tiny_llama_dir: Path,
                                               chat_jsonl: Path, tmp_path: Path) -> None:
    from engine.runs import pid_alive, run_events
    from gui.window.qt_main_window import QtMainWindow

    job = tiny_job(tiny_llama_dir, chat_jsonl, tmp_path / "runs", max_steps=30)
    ctx = make_ctx(job)
    window = QtMainWindow(ctx)
    qtbot.addWidget(window)
    window.show_page("train")
    page = window.page("train")
    run_dir = page.start_job()
    qtbot.waitUntil(lambda: len(_curve_steps(page)) >= 2, timeout=RUN_MS)
    page.ask_keep_running = lambda: "keep"
    assert window.close()
    assert page.controller.state == "detached"
    page.shutdown()
    started = next(e for e in run_events(run_dir) if isinstance(e, ev.RunStarted))
    assert pid_alive(started.pid, started.time)  # it trains on without the window

    ctx2 = make_ctx(job)  # "reopening": a new window with its own controller
    window2 = QtMainWindow(ctx2)
    qtbot.addWidget(window2)
    window2.show()
    window2.show_page("runs")
    runs = window2.page("runs")
    qtbot.waitUntil(lambda: [r.status for r in runs.runs] == ["running"], timeout=30_000)
    runs.select_runs([run_dir])
    assert runs.watch_button.isEnabled()
    train2 = window2.page("train")
    with qtbot.waitSignal(train2.controller.finished, timeout=RUN_MS) as blocker:
        runs.watch_button.click()
        assert train2.controller.state == "running"
        assert window2.current_key() == "train"
    assert blocker.args == ["completed"]
    curve = _curve_steps(train2)
    assert curve == list(range(1, 31))  # replayed and then followed live, to the end
    assert (run_dir / "adapter").is_dir()
    train2.shutdown()


def test_a_bad_job_fails_with_the_engines_message(qtbot: Any, make_ctx: Any,
                                                  tiny_llama_dir: Path, tmp_path: Path) -> None:
    ctx = make_ctx(tiny_job(tiny_llama_dir, tmp_path / "missing.jsonl", tmp_path / "runs"))
    page = _page(qtbot, ctx)
    try:
        with qtbot.waitSignal(page.controller.finished, timeout=RUN_MS) as blocker:
            page.start_job()
        assert blocker.args == ["failed"]
        banner = page.banners.banners["bad_data"]
        assert "missing.jsonl does not exist" in banner.message.text()
        assert "failed" in page.progress.format()
        assert page.start_button.isEnabled()
    finally:
        page.shutdown()


def test_reader_skips_lines_that_are_not_events() -> None:
    assert ev.parse_line("Writing model shards: 100%") is None
    assert ev.parse_line("{not json") is None
    assert ev.parse_line('{"no_type": 1}') is None
    step = ev.parse_line(ev.to_json(ev.Step(step=3, loss=1.5)))
    assert isinstance(step, ev.Step)
    assert step.step == 3


def test_attach_replays_a_finished_run_and_logs_other_lines(qtbot: Any, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    lines = [ev.to_json(ev.RunStarted(pid=1, max_steps=3, time=1.0)), "a stray print",
             "shards: 1/2\rshards: 2/2\r",
             *(ev.to_json(ev.Step(step=i, loss=2.0 / i, max_steps=3)) for i in (1, 2, 3)),
             ev.to_json(ev.RunFinished(status="completed", step=3))]
    (run_dir / runs.EVENTS_FILE).write_text("\n".join(lines) + "\n")
    controller = RunController()
    got: list[ev.Event] = []
    logged: list[str] = []
    controller.events.connect(got.extend)
    controller.log.connect(logged.extend)
    with qtbot.waitSignal(controller.finished, timeout=10_000) as blocker:
        controller.attach(run_dir)
    assert blocker.args == ["completed"]
    assert [type(e).__name__ for e in got] == ["RunStarted", "Step", "Step", "Step",
                                               "RunFinished"]
    assert logged == ["a stray print", "shards: 2/2"]
    controller.shutdown()


def test_a_job_that_trusts_remote_code_asks_before_it_runs(qtbot: Any, make_ctx: Any,
                                                           tiny_llama_dir: Path,
                                                           chat_jsonl: Path, tmp_path: Path,
                                                           monkeypatch: Any) -> None:
    from PySide6.QtCore import QTimer
    from PySide6.QtWidgets import QApplication, QMessageBox

    job = tiny_job(tiny_llama_dir, chat_jsonl, tmp_path / "runs")
    job.model.trust_remote_code = True
    page = _page(qtbot, make_ctx(job))
    try:
        started: list[JobConfig] = []
        monkeypatch.setattr(page.controller, "start", lambda j, run_dir=None: started.append(j))
        asked: list[str] = []
        answers = iter([False, True])
        page.confirm_remote_code = lambda source: asked.append(source) or next(answers)
        page.start_job()
        assert asked == [str(tiny_llama_dir)] and started == []  # "No": nothing runs
        page.start_job()
        assert len(started) == 1  # "Yes": the job starts
        # The real dialog names the repository, warns that its code runs, defaults to No.
        box = page.remote_code_box("someone/remote-model")
        assert "someone/remote-model" in box.text() and "will run on this computer" in box.text()
        assert box.defaultButton() is box.button(QMessageBox.StandardButton.No)
        box.deleteLater()
        del page.confirm_remote_code  # the page's own method, answered like a user would
        for button, expected in ((QMessageBox.StandardButton.No, False),
                                 (QMessageBox.StandardButton.Yes, True)):
            QTimer.singleShot(100, lambda b=button: QApplication.activeModalWidget().button(
                b).click())
            assert page.confirm_remote_code("someone/remote-model") is expected
    finally:
        page.shutdown()


def test_use_n_gpus_appears_with_two_gpus_and_shows_the_effective_batch(
        qtbot: Any, make_ctx: Any, tiny_llama_dir: Path, chat_jsonl: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    import engine.distributed

    monkeypatch.setattr(engine.distributed, "gpu_count", lambda: 2)
    ctx = make_ctx(tiny_job(tiny_llama_dir, chat_jsonl, tmp_path / "runs", grad_accum=3))
    page = _page(qtbot, ctx)
    try:
        qtbot.waitUntil(lambda: page.gpus_box.isVisible(), timeout=10_000)
        assert page.gpus_box.text() == "Use 2 GPUs" and not page.gpus_box.isChecked()
        assert page.batch_label.text() == "batch 2 × 3 = 6"
        page.gpus_box.setChecked(True)  # the job file's training.devices
        assert ctx.job.job.training.devices == 2
        assert page.batch_label.text() == "batch 2 × 3 × 2 GPUs = 12"
        page.gpus_box.setChecked(False)
        assert ctx.job.job.training.devices == 1
    finally:
        page.shutdown()
