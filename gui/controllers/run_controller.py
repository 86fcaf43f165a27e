"""The background engine: one training child process, a reader thread, events as Qt signals.

``RunController`` (a QObject on the GUI thread) starts
``python -m engine train DIR/job.yaml --run-dir DIR --events-stdout`` and an
:class:`EventReader` (a QThread) that turns each JSON line of the child's stdout into an
``engine.events`` event. Views connect to the controller, never to the thread.

The child's stdout and stderr go to ``DIR/console.log`` rather than a pipe: a pipe would break
when the window closes, and the next event the child writes would crash the run. With a file
the run keeps training if the GUI closes or crashes (DESIGN: "the run folder is the source of
truth"), and the reader tails the file the same way it tails ``events.jsonl`` when it
re-attaches to a run started by an earlier session.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Callable
from itertools import pairwise
from pathlib import Path

from PySide6.QtCore import QCoreApplication, QObject, QThread, QTimer, Signal

from engine import events as ev
from engine import runs
from engine.config import JobConfig, save_job
from engine.diagnostics import Diagnostics
from engine.launch import engine_command
from engine.runs import quick_status

STOP_GRACE_S = 60.0  # silence after Stop before the kill; each event or log line resets it
QUIT_GRACE_S = 15.0  # at quit the user waits: stop sooner
MAX_BATCH = 50  # events per signal while replaying a long run (a few ms of GUI work)
IN_FLIGHT = 1  # batches sent but not yet handled by the GUI: the reader waits beyond this


class EventReader(QThread):
    """Tails a file of JSON lines from ``offset``: events and other lines, in batches.

    ``alive()`` says whether the writer may still append; once it says no, the reader reads
    what is left and ends. Lines that are not JSON objects (a library's print, a traceback)
    come out as ``log_lines``.
    """

    batch = Signal(object, object)  # events, other lines (object: no per-item conversion)

    def __init__(self, path: Path, alive: Callable[[], bool], *, offset: int = 0,
                 prelude: tuple[Path, int] | None = None, poll_ms: int = 50,
                 parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.path, self._alive, self.offset, self.poll_ms = path, alive, offset, poll_ms
        self.prelude = prelude  # (file, size): replayed first, e.g. a resumed run's history
        # Back-pressure: replaying a long run must not flood the GUI thread's queue.
        self._credits = threading.Semaphore(IN_FLIGHT)

    def consumed(self) -> None:
        """The GUI handled one batch (called on the GUI thread)."""
        self._credits.release()

    def _send(self, events: list[ev.Event], other: list[str]) -> None:
        while not self._credits.acquire(timeout=0.05):
            if self.isInterruptionRequested():
                return
        self.batch.emit(events, other)

    def run(self) -> None:
        if self.prelude is not None:
            self._replay(*self.prelude)
        pending = b""
        while not self.isInterruptionRequested():
            alive = self._alive()  # asked before reading, so nothing written after is lost
            chunk = self._read()
            if chunk:
                lines = (pending + chunk).split(b"\n")
                pending = lines.pop()  # a torn last line waits for its end
                self._emit(lines)
            elif not alive:
                break
            else:
                self.msleep(self.poll_ms)
        if pending.strip() and not self.isInterruptionRequested():
            self._emit([pending])

    def _replay(self, path: Path, size: int) -> None:
        with open(path, "rb") as fh:
            data = fh.read(size)
        lines = data.split(b"\n")
        for i in range(0, len(lines), 4 * MAX_BATCH):
            if self.isInterruptionRequested():
                return
            self._emit(lines[i: i + 4 * MAX_BATCH])

    def _read(self) -> bytes:
        try:
            with open(self.path, "rb") as fh:
                fh.seek(self.offset)
                data = fh.read(4 << 20)
        except FileNotFoundError:
            return b""
        self.offset += len(data)
        return data

    def _emit(self, lines: list[bytes]) -> None:
        events: list[ev.Event] = []
        other: list[str] = []
        for raw in lines:
            # A progress bar redraws itself with carriage returns: keep its last state.
            parts = [p for p in raw.decode("utf-8", "replace").split("\r") if p.strip()]
            text = parts[-1] if parts else ""
            event = ev.parse_line(text)
            if event is not None:
                events.append(event)
            elif text.strip():
                other.append(text)
            if len(events) >= MAX_BATCH:
                self._send(events, other)
                events, other = [], []
        if events or other:
            self._send(events, other)


class RunController(QObject):
    """Owns at most one run at a time: started here, resumed here, or re-attached.

    Signals (all emitted on the GUI thread):

    - ``reset(run_dir)``: a new run is shown; views clear their curves;
    - ``events(list)``: a batch of events in order, diagnostics' warnings included;
    - ``log(list)``: console lines that are not events;
    - ``state_changed(state)``: idle | starting | running | stopping | finished | detached;
    - ``finished(status)``: the run ended (completed | stopped | failed).
    """

    reset = Signal(str)
    events = Signal(object)  # list[Event]; object, so PySide passes the list as it is
    log = Signal(object)  # list[str]
    state_changed = Signal(str)
    finished = Signal(str)

    def __init__(self, parent: QObject | None = None, *, stop_grace_s: float = STOP_GRACE_S,
                 quit_grace_s: float = QUIT_GRACE_S) -> None:
        super().__init__(parent)
        self.stop_grace_s, self.quit_grace_s = stop_grace_s, quit_grace_s
        self.state = "idle"
        self.run_dir: Path | None = None
        self.history: list[ev.Event] = []  # every event of the shown run, for late views
        self.keep_in_background = False
        self._proc: subprocess.Popen[bytes] | None = None
        self._pid = 0  # the training process (ours or an earlier session's)
        self._pid_started = 0.0
        self._owned = False  # the child was started by this controller
        self._last_lines: list[str] = []  # the newest console lines, for an unexpected exit
        self._reader: EventReader | None = None
        self._diagnostics = Diagnostics()
        self._finished_seen = False
        self._stop_requested = False
        self._kill_timer = QTimer(self, singleShot=True)
        self._kill_timer.timeout.connect(self._on_grace_over)
        app = QCoreApplication.instance()
        if app is not None:
            app.aboutToQuit.connect(self.shutdown)

    # ------------------------------------------------------------------ queries
    def is_active(self) -> bool:
        """A run is shown and still training (ours or re-attached)."""
        return self.state in ("starting", "running", "stopping")

    def owns_child(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    # ------------------------------------------------------------------ starting
    def start(self, job: JobConfig, run_dir: Path | None = None) -> Path:
        """Start ``job`` in a new run folder (saved there as job.yaml first)."""
        self._require_idle()
        if run_dir is None:
            run_dir = runs.create_run_dir(job.output.runs_dir, job.name)
        run_dir = Path(run_dir).resolve()
        run_dir.mkdir(parents=True, exist_ok=True)
        save_job(job, run_dir / runs.JOB_FILE)
        self._show(run_dir)
        self._spawn(run_dir, resume=False)
        return run_dir

    def resume(self, run_dir: str | Path) -> None:
        """Continue ``run_dir`` from its last checkpoint; its curve continues."""
        self._require_idle()
        run_dir = Path(run_dir).resolve()
        holder = runs.lock_holder(run_dir)
        if holder is not None:
            # Another trainer holds the folder: starting one would be refused, and removing
            # its STOP file first would cancel the user's pending stop. Watch it instead.
            self.attach(run_dir)
            self._say_already_training(holder.pid)
            return
        events = run_dir / runs.EVENTS_FILE
        if run_dir == self.run_dir and self.history:
            self._renew(run_dir)  # shown already: the curve just goes on
            self._spawn(run_dir, resume=True)
            return
        self._show(run_dir)
        self._spawn(run_dir, resume=True,
                    prelude=(events, events.stat().st_size) if events.exists() else None)

    def attach(self, run_dir: str | Path) -> None:
        """Show ``run_dir``: replay its events file, then follow it while its process lives."""
        self._require_idle()
        run_dir = Path(run_dir).resolve()
        self._show(run_dir)
        self._pid, self._pid_started, live = quick_status(run_dir / runs.EVENTS_FILE)
        self._set_state("running" if live else "finished")
        self._start_reader(run_dir / runs.EVENTS_FILE, 0,
                           self._attached_is_alive if live else _never)

    def command(self, run_dir: Path, *, resume: bool) -> list[str]:
        cmd = engine_command("train", str(run_dir / runs.JOB_FILE), "--run-dir", str(run_dir),
                             "--events-stdout")
        return [*cmd, "--resume"] if resume else cmd

    def _require_idle(self) -> None:
        if self.is_active():
            raise RuntimeError("a run is already shown and active; stop or detach it first")
        self._stop_reader()

    def _show(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.history = []
        self._diagnostics = Diagnostics()
        self._renew(run_dir)
        self.reset.emit(str(run_dir))

    def _renew(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.keep_in_background = False
        self._finished_seen = self._stop_requested = False
        self._proc, self._pid, self._pid_started, self._owned = None, 0, 0.0, False
        self._last_lines = []

    def _spawn(self, run_dir: Path, *, resume: bool,
               prelude: tuple[Path, int] | None = None) -> None:
        (run_dir / runs.STOP_FILE).unlink(missing_ok=True)
        console = run_dir / runs.CONSOLE_FILE
        offset = console.stat().st_size if console.exists() else 0
        with open(console, "ab") as out:  # the child keeps its own handle
            self._proc = subprocess.Popen(
                self.command(run_dir, resume=resume), stdin=subprocess.PIPE, stdout=out,
                stderr=subprocess.STDOUT, cwd=os.getcwd(), **_detached())
        self._pid, self._pid_started, self._owned = self._proc.pid, time.time(), True
        self._set_state("starting")
        self._start_reader(console, offset, self._child_is_alive, prelude)

    def _start_reader(self, path: Path, offset: int, alive: Callable[[], bool],
                      prelude: tuple[Path, int] | None = None) -> None:
        self._reader = EventReader(path, alive, offset=offset, prelude=prelude)
        self._reader.batch.connect(self._on_reader_batch)
        self._reader.finished.connect(self._on_reader_finished)
        self._reader.start()

    # ------------------------------------------------------------------ liveness (any thread)
    def _child_is_alive(self) -> bool:
        proc = self._proc
        return proc is not None and proc.poll() is None

    def _pid_is_alive(self) -> bool:
        # Only the run's lock says a process trains it: a pid in events.jsonl proves nothing.
        return self.run_dir is not None and runs.lock_holder(self.run_dir) is not None

    def _attached_is_alive(self) -> bool:
        # A run of another session: follow it until it reports its end or its process dies.
        return not self._finished_seen and self._pid_is_alive()

    # ------------------------------------------------------------------ stopping
    def stop(self, grace_s: float | None = None) -> None:
        """Ask the run to stop after this step (it saves a checkpoint); kill after a grace."""
        if self.run_dir is None or not self.is_active():
            return
        self._stop_requested = True
        (self.run_dir / runs.STOP_FILE).touch()
        self._write_stdin(b"stop\n")
        self._set_state("stopping")
        self._kill_timer.start(int(1000 * (self.grace_s() if grace_s is None else grace_s)))

    def grace_s(self) -> float:
        """How long a stopping run may stay silent before it is killed: ``stop_grace_s``, or
        three times the longest recent wait between its events (a slow step, an evaluation)."""
        recent: list[float] = []
        for event in reversed(self.history[-20:]):
            if isinstance(event, ev.RunStarted):
                break  # a resumed run's history may hold a gap of days
            recent.append(event.time)
        gaps = [a - b for a, b in pairwise(recent)]
        return max(self.stop_grace_s, 3 * max(gaps, default=0.0))

    def kill(self) -> None:
        """End the training process now (no checkpoint of the current step).

        A process this controller did not start is killed only when the run's lock names it,
        its start time matches the lock and its command line names this run folder;
        otherwise a ``cannot_stop`` warning says so and nothing is killed.
        """
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            return
        if self.run_dir is None or self._proc is not None:
            return
        holder = runs.lock_holder(self.run_dir, strict=True)
        if holder is not None:
            import psutil

            with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
                holder.kill()
        elif self._pid and runs.pid_alive(self._pid):
            self._say_cannot_stop()

    def _say_already_training(self, pid: int) -> None:
        warning = ev.Warning(
            code="already_training",
            message=f"{self.run_dir} is being trained by process {pid} already (its lock file "
                    "says so), so it was not resumed again: this page follows that training")
        self.history.append(warning)
        self.events.emit([warning])

    def _say_cannot_stop(self) -> None:
        warning = ev.Warning(
            code="cannot_stop",
            message=f"cannot stop process {self._pid}: the lock file of {self.run_dir} does "
                    "not name it as this run's trainer (or its start time or command line do "
                    "not match), so Tunesmith will not kill it; end it yourself if it is yours")
        self.history.append(warning)
        self.events.emit([warning])

    def detach(self) -> None:
        """Leave the run training in the background; stop following it."""
        self.keep_in_background = True
        self._kill_timer.stop()
        self._stop_reader()
        if self._proc is not None and self._proc.stdin is not None:
            self._proc.stdin.close()  # the child reads EOF: it keeps going, STOP still works
        self._proc = None
        self._set_state("detached")

    def shutdown(self) -> None:
        """App quit: stop the child (graceful, then forced) unless kept in the background."""
        if self.is_active() and not self.keep_in_background:
            if not self._stop_requested:
                self.stop(self.quit_grace_s)
            self._wait_for_exit(self.quit_grace_s)
        self._kill_timer.stop()
        self._stop_reader()

    def _wait_for_exit(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and (self._child_is_alive() or (
                self._proc is None and self._pid and self._pid_is_alive())):
            time.sleep(0.1)
        self.kill()
        if self._proc is not None:
            try:
                self._proc.wait(5)
            except subprocess.TimeoutExpired:
                pass

    def wait_reader(self, msecs: int = 10000) -> bool:
        return self._reader is None or self._reader.wait(msecs)

    def _stop_reader(self) -> None:
        reader, self._reader = self._reader, None
        if reader is not None:
            reader.batch.disconnect(self._on_reader_batch)
            reader.finished.disconnect(self._on_reader_finished)
            reader.requestInterruption()
            reader.wait()
            reader.deleteLater()

    def _write_stdin(self, data: bytes) -> None:
        if self._proc is None or self._proc.stdin is None:
            return
        try:
            self._proc.stdin.write(data)
            self._proc.stdin.flush()
        except (BrokenPipeError, OSError, ValueError):
            pass  # the child has exited or closed stdin: the STOP file still works

    # ------------------------------------------------------------------ events
    def _on_reader_batch(self, batch: list[ev.Event], lines: list[str]) -> None:
        reader = self._reader
        if reader is not None and self.sender() is reader:  # not a reader already let go
            if self._kill_timer.isActive():
                # Stopping and still talking (the last step, an evaluation, the checkpoint
                # being written): a slow machine is not a hung one. Wait the grace again.
                self._kill_timer.start(max(self._kill_timer.interval(),
                                           int(1000 * self.grace_s())))
            self._on_batch(batch, lines)
            # Ask for the next batch on the next event-loop turn, so that timers and repaints
            # run between two batches of a replay (a post from the reader thread would
            # otherwise be handled in this same turn, and a replay would starve them).
            QTimer.singleShot(0, self._on_credit)

    def _on_credit(self) -> None:
        if self._reader is not None:
            self._reader.consumed()

    def _on_batch(self, batch: list[ev.Event], lines: list[str]) -> None:
        out: list[ev.Event] = []
        for event in batch:
            out.append(event)
            out.extend(self._diagnostics.feed(event))
            if isinstance(event, ev.RunStarted):
                self._finished_seen = False  # a resumed run's old run_finished is history
                if self.state == "starting":
                    self._set_state("running")
            elif isinstance(event, ev.RunFinished):
                self._finished_seen = True
        self.history.extend(out)
        if out:
            self.events.emit(out)
        if lines:
            self._last_lines = lines[-3:]
            self.log.emit(lines)

    def _on_reader_finished(self) -> None:
        if self.sender() is not self._reader:
            return
        reader, self._reader = self._reader, None
        reader.deleteLater()
        self._kill_timer.stop()
        if self.state in ("idle", "detached"):
            return
        if not self._finished_seen and (self._owned or self._stop_requested):
            self._on_batch(self._lost_ending(), [])
        status = next((e.status for e in reversed(self.history)
                       if isinstance(e, ev.RunFinished)), "interrupted")
        if self._proc is not None:
            self._close_child()
        self._set_state("finished")
        self.finished.emit(status)

    def _lost_ending(self) -> list[ev.Event]:
        """The child ended without ``run_finished`` (killed, crashed): say so."""
        code = self._proc.poll() if self._proc is not None else None
        step = next((e.step for e in reversed(self.history) if isinstance(e, ev.Step)), 0)
        status = "stopped" if self._stop_requested else "failed"
        where = f"; see {self.run_dir / runs.CONSOLE_FILE}" if self._owned else ""
        out: list[ev.Event] = []
        if not self._stop_requested:
            said = f": {self._last_lines[-1].strip()}" if self._last_lines else ""
            out.append(ev.Error(code="engine_exited",
                                message=f"the training process ended (exit code {code}){said}"
                                        f"{where}",
                                advice="fix what it says and start again, or resume from the "
                                       "last checkpoint"))
        out.append(ev.RunFinished(status=status, step=step))
        return out

    def _close_child(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.stdin is not None:
            proc.stdin.close()
        proc.wait()

    def _on_grace_over(self) -> None:
        if self.state == "stopping":
            self.kill()

    def _set_state(self, state: str) -> None:
        if state != self.state:
            self.state = state
            self.state_changed.emit(state)


def _never() -> bool:
    return False


def _detached() -> dict[str, object]:
    """Popen options that let the child outlive the window (its own session/group)."""
    if sys.platform == "win32":
        return {"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP}
    return {"start_new_session": True}


_SHARED: weakref.WeakKeyDictionary[QObject, RunController] = weakref.WeakKeyDictionary()


def shared_controller(owner: QObject) -> RunController:
    """The one controller of a window's job (the Train and Runs pages share it)."""
    controller = _SHARED.get(owner)
    if controller is None:
        controller = _SHARED[owner] = RunController(owner)
    return controller
