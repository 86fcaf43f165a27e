"""The Train page names each wait (loading, tokenizing, first step, stopping, saving) and its
elapsed clock keeps ticking while a run stops (issue 17). Driven by recorded events that the
reader tails from a live run folder: its lock is held by a real child process."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from engine import events as ev
from engine import runs

LOCK_HOLDER = ("import sys, time; from engine.runs import acquire_lock; "
               "acquire_lock(sys.argv[1]); print('locked', flush=True); time.sleep(120)")


def _append(run_dir: Path, *events: ev.Event) -> None:
    with open(run_dir / runs.EVENTS_FILE, "a") as fh:
        fh.writelines(ev.to_json(e) + "\n" for e in events)


def test_waits_are_named_and_the_clock_ticks_while_stopping(qtbot: Any, ctx: Any,
                                                           tmp_path: Path) -> None:
    from gui.pages.qt_train_page import QtTrainPage

    run_dir = tmp_path / "runs" / "demo-20261202-120000"
    run_dir.mkdir(parents=True)
    holder = subprocess.Popen([sys.executable, "-c", LOCK_HOLDER, str(run_dir)],
                              stdout=subprocess.PIPE, text=True)
    page = QtTrainPage(ctx)
    qtbot.addWidget(page)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        now = time.time()
        # (run_started first: a run folder counts as live from it on)
        _append(run_dir, ev.RunStarted(max_steps=8, pid=holder.pid, time=now - 30),
                ev.Progress(stage="load_model", current=0, total=1,
                            message="loading the model", time=now - 29))
        page.attach(run_dir)
        fmt = page.progress.format
        qtbot.waitUntil(lambda: fmt() == "loading the model…", timeout=10_000)
        assert page.eta_label.text().startswith("elapsed 0:3")  # since the run's first event
        _append(run_dir, ev.Progress(stage="tokenize", current=3, total=10, message="tokenizing"))
        qtbot.waitUntil(lambda: fmt() == "tokenizing (3/10)…", timeout=5_000)
        assert (page.progress.maximum(), page.progress.value()) == (10, 3)
        _append(run_dir, ev.Progress(stage="first_step", current=0, total=1,
                            message="first step (the slowest: memory is set up)"))
        qtbot.waitUntil(lambda: fmt().startswith("first step"), timeout=5_000)
        assert page.progress.maximum() == 0  # busy, not an empty bar
        _append(run_dir, ev.Step(step=1, max_steps=8, loss=2.0, elapsed_s=60.0,
                                 time=time.time() - 100, tokens_per_s=50.0))
        qtbot.waitUntil(lambda: fmt() == "step 1 / 8  ·  loss 2.0000", timeout=5_000)

        page.stop_button.click()  # stop: the run finishes its step first, maybe for minutes
        assert page.controller.state == "stopping"
        assert (run_dir / runs.STOP_FILE).exists()
        qtbot.waitUntil(lambda: "stopping after this step" in fmt(), timeout=5_000)
        first = page.eta_label.text()
        assert "elapsed 2:4" in first  # 60 s at the step + ~100 s since: it went on
        qtbot.waitUntil(lambda: page.eta_label.text() != first, timeout=3_000)  # still ticking
        _append(run_dir, ev.Progress(stage="stopping", current=0, total=1,
                                     message="stopping after this step: saving a checkpoint"),
                ev.Progress(stage="checkpoint", current=0, total=1,
                            message="saving the checkpoint of step 1"))
        qtbot.waitUntil(lambda: fmt().endswith("saving the checkpoint of step 1…"),
                        timeout=5_000)
        _append(run_dir, ev.Checkpoint(step=1, path=str(run_dir / "checkpoints")),
                ev.RunFinished(status="stopped", step=1))
        qtbot.waitUntil(lambda: page.controller.state == "finished", timeout=10_000)
        assert "stopped" in fmt()
    finally:
        holder.kill()
        holder.wait()
    page.shutdown()


def test_stage_words_come_from_the_engines_stage_list() -> None:
    from gui.pages.qt_train_page import _stage_text

    assert _stage_text(ev.Progress(stage="export", message="merging the adapter")) == \
        "exporting: merging the adapter…"
    assert _stage_text(ev.Progress(stage="convert_model", current=2, total=4,
                                   message="converting the model")) == \
        "converting the model (2/4)…"
    assert set(ev.STAGES) >= {"load_model", "tokenize", "first_step", "stopping",
                              "checkpoint", "save", "export"}
