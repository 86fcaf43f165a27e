"""Runs live in one place per user, and reopening the app re-attaches to a live run (issue 17)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import shiboken6

from engine import events as ev
from engine import runs
from engine.config import job_from_dict, save_job
from gui.controllers.settings import AppSettings, default_runs_dir
from gui.window.app import create_context, create_window

LOCK_HOLDER = ("import sys, time; from engine.runs import acquire_lock; "
               "acquire_lock(sys.argv[1]); print('locked', flush=True); time.sleep(120)")


def test_the_runs_folder_does_not_depend_on_the_launch_folder(tmp_path: Path,
                                                              monkeypatch: Any) -> None:
    assert Path(default_runs_dir()).is_absolute() and Path(default_runs_dir()).name == "runs"
    settings = AppSettings(str(tmp_path / "settings.ini"))
    home = settings.runs_dir()
    for launch in ("a", "b"):
        (tmp_path / launch).mkdir()
        monkeypatch.chdir(tmp_path / launch)
        ctx = create_context(settings)
        assert ctx.job.job.output.runs_dir == home  # a new job trains in the user's folder
        plain = tmp_path / "plain.yaml"  # a job file that keeps the engine's default "runs"
        save_job(job_from_dict({"name": "p"}), plain)
        ctx.job.load(plain)
        assert ctx.job.job.output.runs_dir == home and not ctx.job.dirty
        custom = tmp_path / "custom.yaml"  # one that names its own folder keeps it
        save_job(job_from_dict({"name": "c", "output": {"runs_dir": "/srv/runs"}}), custom)
        ctx.job.load(custom)
        assert ctx.job.job.output.runs_dir == "/srv/runs"
        ctx.tasks.shutdown(5000)
        shiboken6.delete(ctx.tasks)


def test_the_runs_page_and_advanced_pick_the_runs_folder(qtbot: Any, ctx: Any, tmp_path: Path,
                                                         monkeypatch: Any) -> None:
    from gui.pages.qt_hyperparams_page import QtHyperparamsPage
    from gui.pages.qt_runs_page import QtRunsPage

    chosen = tmp_path / "elsewhere"
    chosen.mkdir()
    monkeypatch.setattr("gui.pages.qt_runs_page.ask_folder", lambda *_a: str(chosen))
    page = QtRunsPage(ctx)
    qtbot.addWidget(page)
    page.folder_button.click()
    assert ctx.job.job.output.runs_dir == str(chosen)
    assert str(chosen) in page.folder_label.text()
    assert AppSettings(str(tmp_path / "settings.ini")).runs_dir() == str(chosen)  # remembered
    ctx.job.replace(job_from_dict({"name": "new"}))  # e.g. File → New
    assert ctx.job.job.output.runs_dir == str(chosen)

    other = tmp_path / "other"
    other.mkdir()
    monkeypatch.setattr("gui.widgets.qt_config_form.ask_folder", lambda *_a: str(other))
    hyper = QtHyperparamsPage(ctx)
    qtbot.addWidget(hyper)
    form = next(f for f in hyper.advanced_forms if "output.runs_dir" in f.browse_buttons)
    form.browse_buttons["output.runs_dir"].click()
    assert ctx.job.job.output.runs_dir == str(other)
    assert form.editors["output.runs_dir"].text() == str(other)
    assert ctx.settings.runs_dir() == str(other)
    page.timer.stop()


def test_reopening_the_app_attaches_to_the_last_jobs_live_run(qtbot: Any, ctx: Any,
                                                              tmp_path: Path) -> None:
    job_file = tmp_path / "demo.yaml"
    save_job(job_from_dict({"name": "demo", "dataset": {"path": "d.jsonl"},
                            "training": {"max_steps": 8}}), job_file)
    ctx.settings.set_last_job(str(job_file))  # the job open when the app last closed
    run_dir = Path(ctx.settings.runs_dir()) / "demo-20261202-120000"
    run_dir.mkdir(parents=True)
    holder = subprocess.Popen([sys.executable, "-c", LOCK_HOLDER, str(run_dir)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        lines = [ev.RunStarted(job={"name": "demo"}, max_steps=8, pid=holder.pid),
                 ev.Step(step=1, max_steps=8, loss=2.0), ev.Step(step=2, max_steps=8, loss=1.8)]
        (run_dir / runs.EVENTS_FILE).write_text("".join(ev.to_json(e) + "\n" for e in lines))
        window = create_window(ctx)  # as `tunesmith` starts: no job named on the command line
        window.ask_to_save = False
        qtbot.addWidget(window)
        assert window.job.path == str(job_file)
        assert window.current_key() == "train"
        controller = window.page("train").controller
        assert controller.run_dir == run_dir.resolve() and controller.state == "running"
        qtbot.waitUntil(lambda: len([e for e in controller.history
                                     if isinstance(e, ev.Step)]) == 2, timeout=10_000)
        holder.kill()
        holder.wait()
        # Its trainer gone, the run is no longer followed: the reader ends by itself.
        qtbot.waitUntil(lambda: controller.state == "finished", timeout=10_000)
    finally:
        holder.kill()
        holder.wait()
    window.shutdown()


def test_with_no_live_run_the_last_job_opens_on_the_first_page(qtbot: Any, ctx: Any,
                                                               tmp_path: Path) -> None:
    job_file = tmp_path / "demo.yaml"
    save_job(job_from_dict({"name": "demo"}), job_file)
    ctx.settings.set_last_job(str(job_file))
    window = create_window(ctx)
    window.ask_to_save = False
    qtbot.addWidget(window)
    assert window.job.path == str(job_file) and window.current_key() == "model"
    window.close()  # closing remembers the job for the next start
    assert AppSettings(str(tmp_path / "settings.ini")).last_job() == str(job_file.resolve())
    window.shutdown()
