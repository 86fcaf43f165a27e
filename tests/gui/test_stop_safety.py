"""Stop, Stop now and quitting kill only the run's own trainer, never a bystander.

The bystander is a real, harmless child (``python -c "sleep" engine train``: "engine" in its
command line, as the old check wanted). A crafted events.jsonl names it, with a future time;
a crafted lock names it too, with its real start time. It must survive every way the GUI can
stop a run. A process the lock names whose command line names the run folder is the run's
trainer: that one is killed.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from engine import events as ev
from engine import runs
from gui.controllers.run_controller import RunController

SLEEP = "import time; time.sleep(30)"


@pytest.fixture
def spawn() -> Iterator[Any]:
    procs: list[subprocess.Popen[bytes]] = []

    def start(*argv: str) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen([sys.executable, "-c", SLEEP, *argv])
        procs.append(proc)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # until its command line is the child's own
            try:
                if SLEEP in psutil.Process(proc.pid).cmdline():
                    break
            except psutil.NoSuchProcess:
                break
            time.sleep(0.02)
        return proc

    yield start
    for proc in procs:
        proc.kill()
        proc.wait()


def _crafted_run(run_dir: Path, pid: int, *, lock: bool) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / runs.EVENTS_FILE).write_text(
        ev.to_json(ev.RunStarted(pid=pid, time=time.time() + 3600, max_steps=9)) + "\n"
        + ev.to_json(ev.Step(step=1, loss=2.0, max_steps=9)) + "\n")
    if lock:
        started = psutil.Process(pid).create_time()
        (run_dir / runs.LOCK_FILE).write_text(json.dumps(
            {"pid": pid, "started": started, "run_dir": str(run_dir.resolve())}))


def _stop_every_way(qtbot: Any, controller: RunController) -> None:
    controller.stop()  # Stop: the grace runs out, then the kill
    qtbot.wait(600)
    controller.kill()  # Stop now
    controller.shutdown()  # quitting the app
    controller.wait_reader()


@pytest.mark.parametrize("lock", [False, True], ids=["events-only", "crafted-lock"])
def test_a_crafted_run_folder_never_gets_a_bystander_killed(qtbot: Any, spawn: Any,
                                                            tmp_path: Path, lock: bool) -> None:
    bystander = spawn("engine", "train")
    run_dir = tmp_path / "run"
    _crafted_run(run_dir, bystander.pid, lock=lock)
    controller = RunController(stop_grace_s=0.2, quit_grace_s=0.2)
    said: list[ev.Event] = []
    controller.events.connect(said.extend)
    controller.attach(run_dir)
    # Without a lock the events alone never make the run look alive.
    assert controller.state == ("running" if lock else "finished")
    _stop_every_way(qtbot, controller)
    assert bystander.poll() is None, "an unrelated process was killed"
    warnings = [e for e in said if isinstance(e, ev.Warning) and e.code == "cannot_stop"]
    assert warnings and all(f"cannot stop process {bystander.pid}" in w.message
                            for w in warnings)


def test_the_runs_own_trainer_is_killed(qtbot: Any, spawn: Any, tmp_path: Path) -> None:
    run_dir = (tmp_path / "run").resolve()
    run_dir.mkdir()
    trainer = spawn("-m", "engine", "train", str(run_dir / runs.JOB_FILE),
                    "--run-dir", str(run_dir))
    _crafted_run(run_dir, trainer.pid, lock=True)
    controller = RunController(stop_grace_s=0.2, quit_grace_s=0.2)
    controller.attach(run_dir)
    assert controller.state == "running"
    controller.kill()  # Stop now
    assert trainer.wait(10) != 0
    qtbot.waitUntil(lambda: controller.state == "finished", timeout=10_000)
    controller.shutdown()
