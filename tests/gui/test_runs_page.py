"""The Runs page and the diagnostics banners, on run folders written here (no child process)."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from engine import events as ev
from engine.config import job_from_dict
from engine.runs import EVENTS_FILE, acquire_lock, scan_runs
from gui.controllers.app_context import AppContext
from gui.controllers.job_model import JobModel
from gui.controllers.run_controller import shared_controller
from gui.controllers.settings import AppSettings
from gui.controllers.tasks import TaskRunner

JOB = {"name": "demo", "model": {"source": "smollm2-135m-instruct"},
       "dataset": {"path": "data.jsonl"}, "training": {"max_steps": 6, "batch_size": 2,
                                                       "learning_rate": 1e-3}}


def write_run(root: Path, name: str, events: list[ev.Event], *, checkpoint: int = 0) -> Path:
    run_dir = root / name
    run_dir.mkdir(parents=True)
    (run_dir / EVENTS_FILE).write_text("".join(ev.to_json(e) + "\n" for e in events))
    if checkpoint:
        folder = run_dir / "checkpoints" / f"checkpoint-{checkpoint}"
        folder.mkdir(parents=True)
        (folder / "trainer_state.json").write_text("{}")
    return run_dir


def started(pid: int = 999_999, t: float = 1_700_000_000.0, method: str = "lora") -> ev.RunStarted:
    return ev.RunStarted(job=JOB, method=method, max_steps=6, pid=pid, time=t)


def steps(losses: list[float], start: int = 1) -> list[ev.Event]:
    return [ev.Step(step=start + i, loss=x, max_steps=6, learning_rate=1e-3, grad_norm=1.0,
                    tokens_per_s=100.0) for i, x in enumerate(losses)]


@pytest.fixture
def ctx(tmp_path: Path) -> Iterator[AppContext]:
    job = job_from_dict({**JOB, "output": {"runs_dir": str(tmp_path / "runs")}})
    context = AppContext(job=JobModel(job), tasks=TaskRunner(),
                         settings=AppSettings(str(tmp_path / "settings.ini")))
    yield context
    shared_controller(context.job).shutdown()
    context.tasks.wait(10_000)


@pytest.fixture
def runs(tmp_path: Path) -> dict[str, Path]:
    root = tmp_path / "runs"
    found = {
        "done": write_run(root, "done", [started(t=1.0), *steps([2.0, 1.5, 1.2]),
                                         ev.Eval(step=3, eval_loss=1.4),
                                         ev.RunFinished(status="completed", step=3)]),
        "stopped": write_run(root, "stopped", [started(t=2.0), *steps([2.2, 1.9]),
                                               ev.RunFinished(status="stopped", step=2)],
                             checkpoint=2),
        "live": write_run(root, "live", [started(pid=os.getpid(), t=time.time()),
                                         *steps([2.1])]),
        "dead": write_run(root, "dead", [started(t=3.0), *steps([2.5])], checkpoint=1),
    }
    acquire_lock(found["live"])  # this test process "trains" it: only a lock makes a run live
    return found


def test_scan_runs_reads_status_and_losses(runs: dict[str, Path]) -> None:
    by_name = {r.name: r for r in scan_runs(runs["done"].parent)}
    assert {n: r.status for n, r in by_name.items()} == {
        "done": "completed", "stopped": "stopped", "live": "running", "dead": "interrupted"}
    done = by_name["done"]
    assert (done.step, done.final_loss, done.final_eval_loss) == (3, 1.2, 1.4)
    assert (done.model, done.method, done.max_steps) == ("smollm2-135m-instruct", "lora", 6)
    assert by_name["stopped"].has_checkpoint and not done.has_checkpoint


def _page(qtbot: Any, ctx: AppContext) -> Any:
    from gui.pages.qt_runs_page import QtRunsPage

    page = QtRunsPage(ctx)
    qtbot.addWidget(page)
    page.show()
    qtbot.waitUntil(lambda: page.table.rowCount() == 4, timeout=10_000)
    return page


def test_runs_page_lists_every_run_and_overlays_curves(qtbot: Any, ctx: AppContext,
                                                       runs: dict[str, Path]) -> None:
    page = _page(qtbot, ctx)
    rows = {page.table.item(i, 0).text(): page.table.item(i, 1).text()
            for i in range(page.table.rowCount())}
    assert rows == {"done": "completed", "stopped": "stopped", "live": "running",
                    "dead": "interrupted"}
    page.select_runs([runs["done"], runs["stopped"]])
    qtbot.waitUntil(lambda: len(page.plotted) == 3, timeout=10_000)  # 2 train + 1 eval curve
    xs = sorted(tuple(c.getData()[0]) for c in page.plotted)
    assert (1.0, 2.0) in xs and (1.0, 2.0, 3.0) in xs
    assert not page.watch_button.isEnabled()  # several selected


def test_runs_page_resume_and_watch_buttons(qtbot: Any, ctx: AppContext,
                                            runs: dict[str, Path], monkeypatch: Any) -> None:
    page = _page(qtbot, ctx)
    page.select_runs([runs["stopped"]])
    assert page.resume_button.isEnabled()
    page.select_runs([runs["done"]])
    assert not page.resume_button.isEnabled()  # nothing left to resume
    assert page.watch_button.isEnabled()
    resumed: list[Path] = []
    monkeypatch.setattr(page.controller, "resume", resumed.append)
    page.select_runs([runs["dead"]])
    page.resume_button.click()
    assert resumed == [runs["dead"].resolve()]
    with qtbot.waitSignal(page.controller.finished, timeout=10_000) as blocker:
        page.select_runs([runs["done"]])
        page.watch_button.click()
    assert blocker.args == ["completed"]
    assert [e.step for e in page.controller.history if isinstance(e, ev.Step)] == [1, 2, 3]


# --------------------------------------------------------------------------- diagnostics banners


def _train_page(qtbot: Any, ctx: AppContext) -> Any:
    from gui.pages.qt_train_page import QtTrainPage

    page = QtTrainPage(ctx)
    qtbot.addWidget(page)
    return page


def _watch(qtbot: Any, page: Any, run_dir: Path) -> None:
    with qtbot.waitSignal(page.controller.finished, timeout=10_000):
        page.attach(run_dir)


DIAGNOSTIC_RUNS = {
    "divergence": [started(), *steps([2.0, 1.9, 1.8, 1.8, 1.7, 1.7, 9.5]),
                   ev.RunFinished(status="stopped", step=7)],
    "overfitting": [started(), *steps([2.0] * 3), ev.Eval(step=3, eval_loss=1.5),
                    *steps([1.5] * 3, 4), ev.Eval(step=6, eval_loss=1.6),
                    *steps([1.1] * 3, 7), ev.Eval(step=9, eval_loss=1.7),
                    *steps([0.8] * 3, 10), ev.Eval(step=12, eval_loss=1.8),
                    ev.RunFinished(status="completed", step=12)],
    "non_finite_loss": [started(), *steps([2.0, float("nan")]),
                        ev.Error(code="non_finite_loss", message="the loss became nan at step 2",
                                 advice="lower the learning rate"),
                        ev.RunFinished(status="failed", step=2)],
    "cuda_oom": [started(), ev.Error(code="cuda_oom", message="CUDA out of memory",
                                     advice="smaller batch"),
                 ev.RunFinished(status="failed")],
}


@pytest.mark.parametrize("code", list(DIAGNOSTIC_RUNS))
def test_each_diagnostic_shows_a_banner(qtbot: Any, ctx: AppContext, tmp_path: Path,
                                        code: str) -> None:
    run_dir = write_run(tmp_path / "runs", code, DIAGNOSTIC_RUNS[code])
    page = _train_page(qtbot, ctx)
    _watch(qtbot, page, run_dir)
    assert code in page.banners.visible_codes()
    page.shutdown()


def test_oom_banner_retries_with_safer_settings(qtbot: Any, ctx: AppContext, tmp_path: Path,
                                                monkeypatch: Any) -> None:
    run_dir = write_run(tmp_path / "runs", "oom", DIAGNOSTIC_RUNS["cuda_oom"])
    (run_dir / "job.yaml").write_text(ctx.job.to_yaml())
    page = _train_page(qtbot, ctx)
    _watch(qtbot, page, run_dir)
    banner = page.banners.banners["cuda_oom"]
    assert "training.batch_size: 1" in banner.message.text()
    started_jobs: list[Any] = []
    monkeypatch.setattr(page.controller, "start", started_jobs.append)
    banner.actions["Retry with these"].click()
    job = started_jobs[0]
    assert (job.training.batch_size, job.training.grad_accum) == (1, 2)
    assert job.training.gradient_checkpointing
    assert ctx.job.job.training.batch_size == 1  # applied to the job model
    page.shutdown()


def test_nan_banner_lowers_the_learning_rate(qtbot: Any, ctx: AppContext, tmp_path: Path,
                                             monkeypatch: Any) -> None:
    run_dir = write_run(tmp_path / "runs", "nan", DIAGNOSTIC_RUNS["non_finite_loss"])
    page = _train_page(qtbot, ctx)
    _watch(qtbot, page, run_dir)
    started_jobs: list[Any] = []
    monkeypatch.setattr(page.controller, "start", started_jobs.append)
    page.banners.banners["non_finite_loss"].actions[
        "Lower learning rate 10× and restart"].click()
    assert started_jobs[0].training.learning_rate == pytest.approx(1e-4)
    page.shutdown()


def test_a_refresh_keeps_several_selected_runs(qtbot: Any, ctx: AppContext,
                                               runs: dict[str, Path]) -> None:
    page = _page(qtbot, ctx)
    page.select_runs([runs["done"], runs["stopped"]])
    with qtbot.waitSignal(ctx.tasks.busy_changed, timeout=10_000,
                          check_params_cb=lambda busy, _msg: not busy):
        page.refresh()
    assert {p.name for p in page.selected_dirs()} == {"done", "stopped"}


def test_stop_grace_follows_the_slowest_recent_wait() -> None:
    from gui.controllers.run_controller import RunController

    controller = RunController(stop_grace_s=60)
    assert controller.grace_s() == 60
    controller.history = [ev.RunFinished(time=10.0), ev.RunStarted(time=100_000.0),
                          ev.Step(step=1, time=100_010.0), ev.Eval(step=1, time=100_100.0),
                          ev.Step(step=2, time=100_110.0)]
    assert controller.grace_s() == 270  # 3 × the 90 s evaluation; the old gap is history


def test_a_run_that_ended_while_the_page_was_hidden_shows_its_full_curve(
        qtbot: Any, ctx: AppContext, runs: dict[str, Path]) -> None:
    page = _page(qtbot, ctx)
    page.select_runs([runs["dead"]])
    qtbot.waitUntil(lambda: len(page.plotted) == 1, timeout=10_000)
    assert tuple(page.plotted[0].getData()[0]) == (1.0,)
    page.hide()  # the run goes on, and ends, while the page is hidden (not running any more)
    with open(runs["dead"] / EVENTS_FILE, "a") as fh:
        for event in [*steps([2.4, 2.3, 2.2, 2.1, 2.0], start=2),
                      ev.RunFinished(status="completed", step=6)]:
            fh.write(ev.to_json(event) + "\n")
    page.show()  # showing the page reads the curve again: its events file changed
    qtbot.waitUntil(lambda: page.plotted and len(page.plotted[0].getData()[0]) == 6,
                    timeout=10_000)
    with open(runs["dead"] / EVENTS_FILE, "a") as fh:
        fh.write(ev.to_json(steps([1.9], start=7)[0]) + "\n")
    page.refresh_button.click()  # and so does Refresh
    qtbot.waitUntil(lambda: page.plotted and len(page.plotted[0].getData()[0]) == 7,
                    timeout=10_000)
    status = {page.table.item(i, 0).text(): page.table.item(i, 1).text()
              for i in range(page.table.rowCount())}
    assert status["dead"] == "completed"
