"""Run folders as plain data: status, summary, loss curves (no Qt; cheap to call off-thread).

A run is *running* when its events have a ``run_started`` with no ``run_finished`` after it
and the pid in that ``run_started`` is a live process started no later than the event (so a
recycled pid does not count). A run that neither finished nor runs was *interrupted* (killed,
machine off): resume it from its last checkpoint.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from engine import events as ev

RUNNING = "running"
INTERRUPTED = "interrupted"


def pid_alive(pid: int, started: float = 0.0) -> bool:
    """True when ``pid`` is a live (not zombie) process created by ``started`` (+1 s)."""
    import psutil

    if pid <= 0 or not psutil.pid_exists(pid):
        return False
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        return not started or proc.create_time() <= started + 1.0
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


@dataclass
class RunSummary:
    run_dir: Path
    name: str
    status: str = INTERRUPTED  # running | completed | stopped | failed | interrupted
    model: str = ""
    method: str = ""
    step: int = 0
    max_steps: int = 0
    final_loss: float | None = None
    final_eval_loss: float | None = None
    started: float = 0.0
    pid: int = 0
    has_checkpoint: bool = False
    error: str = ""

    @property
    def running(self) -> bool:
        return self.status == RUNNING


@dataclass
class Curves:
    """A run's loss curves: training steps/losses and eval steps/losses."""

    steps: list[int] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    eval_steps: list[int] = field(default_factory=list)
    eval_losses: list[float] = field(default_factory=list)


def parse_line(text: str) -> ev.Event | None:
    """The event on a line, or None when the line is not a JSON event (skipped)."""
    data = ev.json_line(text)
    return None if data is None else ev.from_json(data)


def read_events(path: str | Path) -> list[ev.Event]:
    """Every complete event line of a file; other lines and a torn last line are skipped."""
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            lines = fh.read().split("\n")[:-1]  # the part after the last newline is torn
    except OSError:
        return []
    return [e for e in map(parse_line, lines) if e is not None]


def quick_status(events_file: Path) -> tuple[int, float, bool]:
    """(pid, started, running) of a run from its last ``run_started``, without parsing the
    whole file (a long run's file has ~100k lines; this reads it as bytes in milliseconds)."""
    try:
        data = events_file.read_bytes()
    except OSError:
        return 0, 0.0, False
    at = max(data.rfind(b'{"type": "run_started"'), data.rfind(b'{"type":"run_started"'))
    if at < 0:
        return 0, 0.0, False
    end = data.find(b"\n", at)
    event = parse_line(data[at: end if end >= 0 else None].decode("utf-8", "replace"))
    if not isinstance(event, ev.RunStarted):
        return 0, 0.0, False
    finished = b'"type": "run_finished"' in data[at:] or b'"type":"run_finished"' in data[at:]
    return event.pid, event.time, not finished and pid_alive(event.pid, event.time)


def _events(run_dir: Path) -> list[ev.Event]:
    return read_events(run_dir / ev.EVENTS_FILE)


def summarize_events(run_dir: Path, events: list[ev.Event]) -> RunSummary:
    s = RunSummary(run_dir=run_dir, name=run_dir.name)
    finished: ev.RunFinished | None = None
    start: ev.RunStarted | None = None
    for e in events:
        if isinstance(e, ev.RunStarted):
            start, finished = e, None
            s.model = str(e.job.get("model", {}).get("source", ""))
            s.method, s.max_steps, s.pid, s.started = e.method, e.max_steps, e.pid, e.time
        elif isinstance(e, ev.Step):
            s.step, s.final_loss = e.step, e.loss
            s.max_steps = e.max_steps or s.max_steps
        elif isinstance(e, ev.Eval):
            s.final_eval_loss = e.eval_loss
        elif isinstance(e, ev.Error):
            s.error = e.message
        elif isinstance(e, ev.RunFinished):
            finished = e
    if finished is not None:
        s.status = finished.status
        s.step = max(s.step, finished.step)
    elif start is not None and pid_alive(start.pid, start.time):
        s.status = RUNNING
    s.has_checkpoint = any((run_dir / "checkpoints").glob("checkpoint-*/trainer_state.json"))
    return s


def summarize_run(run_dir: str | Path) -> RunSummary:
    run_dir = Path(run_dir)
    return summarize_events(run_dir, _events(run_dir))


def scan_runs(runs_dir: str | Path) -> list[RunSummary]:
    """Every run folder (one with an events file) under ``runs_dir``, newest first."""
    root = Path(runs_dir)
    if not root.is_dir():
        return []
    runs = [summarize_run(p) for p in root.iterdir() if (p / ev.EVENTS_FILE).is_file()]
    return sorted(runs, key=lambda r: (r.started, r.name), reverse=True)


def load_curves(run_dir: str | Path) -> Curves:
    c = Curves()
    for e in _events(Path(run_dir)):
        if isinstance(e, ev.Step) and math.isfinite(e.loss):
            c.steps.append(e.step)
            c.losses.append(e.loss)
        elif isinstance(e, ev.Eval) and math.isfinite(e.eval_loss):
            c.eval_steps.append(e.step)
            c.eval_losses.append(e.eval_loss)
    return c
