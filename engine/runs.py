"""The run folder, the source of truth of a run: its layout, and reading it back.

```
runs/<name>-<timestamp>/
  job.yaml              JOB_FILE: the resolved job, every default filled in
  events.jsonl          EVENTS_FILE: one event a line, append-only
  STOP                  STOP_FILE: present = stop after this step (a checkpoint is saved)
  console.log           CONSOLE_FILE: the GUI's child output (events and library prints)
  crash.log             CRASH_FILE: the traceback of a crashed run
  checkpoints/          CHECKPOINTS: complete checkpoint-<step>/ folders only
  adapter/ or model/    ADAPTER_DIR / MODEL_DIR: the trained result
  evaluation.json       EVALUATION_FILE: written by ``python -m engine evaluate``
  best_checkpoint.json  BEST_FILE: which checkpoint "keep the best" copied into the result
  run.lock              LOCK_FILE: the training process (pid, start time, run folder)
```

A training process holds the run's lock file while it lives (:func:`acquire_lock`): a second
training of the same folder is refused. A run is *running* when its events have a
``run_started`` with no ``run_finished`` after it and its lock names a live process with the
start time the lock recorded (a recycled pid, a copied lock or a crafted ``run_started`` does
not count). Only such a process, whose command line also names the run folder, may be killed
(:func:`lock_holder` with ``strict``). A run that neither finished nor runs was *interrupted*
(killed, machine off): resume it from its last checkpoint. Everything here is plain data and
cheap enough to call off the GUI thread.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import re
import shutil
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine import events as ev
from engine.errors import UserError

if TYPE_CHECKING:
    from engine.config import JobConfig

JOB_FILE = "job.yaml"
EVENTS_FILE = "events.jsonl"
STOP_FILE = "STOP"
CONSOLE_FILE = "console.log"
CRASH_FILE = "crash.log"
CHECKPOINTS = "checkpoints"
CHECKPOINT_PREFIX = "checkpoint-"  # transformers names each one checkpoint-<global step>
CHECKPOINT_DONE = "trainer_state.json"  # the Trainer writes it last: present = complete
ADAPTER_DIR = "adapter"
MODEL_DIR = "model"  # full fine-tuning
EVALUATION_FILE = "evaluation.json"
BEST_FILE = "best_checkpoint.json"
LOCK_FILE = "run.lock"
RANKS_DIR = "ranks"  # ranks/rank-<r>.json: a non-zero rank's error, for the launcher

RUNNING = "running"
INTERRUPTED = "interrupted"


# --------------------------------------------------------------------------- creating


def create_run_dir(runs_dir: str | Path, name: str) -> Path:
    """Make a new, empty ``runs_dir/<name>-<timestamp>`` (``-2``, ``-3``... when taken).

    A ``runs_dir`` that is a file, read-only or on a full disk is a UserError naming it.
    """
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    base = Path(runs_dir) / f"{name}-{stamp}"
    path, n = base, 1
    try:
        if base.parent.exists() and not base.parent.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, "is a file, not a folder")
        base.parent.mkdir(parents=True, exist_ok=True)
        while True:
            try:
                path.mkdir()  # exclusive: two runs started in the same second get two folders
                return path
            except FileExistsError:
                n += 1
                path = base.with_name(f"{base.name}-{n}")
    except OSError as exc:
        raise folder_error(Path(runs_dir), exc, "output.runs_dir") from None


def prepare_run_dir(run_dir: str | Path) -> Path:
    """The folder ``--run-dir`` names, made when missing; a UserError when it cannot be."""
    path = Path(run_dir)
    try:
        if path.exists() and not path.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, "is a file, not a folder")
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise folder_error(path, exc, "--run-dir") from None
    return path


def folder_error(folder: Path, exc: OSError, what: str) -> UserError:
    """One message for a folder a run cannot write: a file, read-only, or a full disk."""
    if exc.errno == errno.ENOSPC:
        return disk_full(folder)
    reason = exc.strerror or str(exc)
    if isinstance(exc, NotADirectoryError | FileExistsError):
        reason = "it (or a folder above it) is a file, not a folder"
    elif isinstance(exc, PermissionError) or exc.errno == errno.EROFS:
        reason = "it is read-only (no permission to write there)"
    return UserError(f"{what} {folder}: cannot create a run folder there: {reason}",
                     "pick a folder you can write to (output.runs_dir in the job, or --run-dir)",
                     code="bad_output")


def disk_full(folder: Path, needed: int = 0, then: str = "resume the run with --resume"
              ) -> UserError:
    """The "disk full" message: the folder, what is free there, what is needed, and what to
    do once there is room (``then``)."""
    free = _free_bytes(folder)
    need = f"; at least {_size(needed)} is needed" if needed else ""
    return UserError(f"disk full: {folder} has {_size(free)} free{need}",
                     f"free some space on that disk (or pick a folder on another one), then "
                     f"{then}", code="disk_full")


def is_disk_full(exc: BaseException) -> bool:
    """An error of a write to a full disk, as Python, torch.save or safetensors reports it."""
    for e in (exc, exc.__cause__, exc.__context__):
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        text = str(e).lower() if e is not None else ""
        # torch.save: "PytorchStreamWriter failed writing file ...: file write failed";
        # safetensors: "I/O error: No space left on device (os error 28)".
        if "no space left" in text or "os error 28" in text or "file write failed" in text:
            return True
    return False


def folder_size(folder: Path | None) -> int:
    """Bytes of the files under ``folder`` (0 when it is missing)."""
    if folder is None or not folder.is_dir():
        return 0
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def _free_bytes(folder: Path) -> int:
    for p in (folder, *folder.parents):
        try:
            return shutil.disk_usage(p).free
        except OSError:
            continue
    return 0


def _size(n: float) -> str:
    unit = "B"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            break
        n /= 1024
    return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"


def holds_a_run(run_dir: str | Path) -> str:
    """What a run already left in ``run_dir`` (its result, checkpoints, started events), or
    ''. A folder with only a job file (the GUI writes one before it starts a run) holds none.
    """
    run_dir = Path(run_dir)
    found = [name + "/" for name in (ADAPTER_DIR, MODEL_DIR) if (run_dir / name).is_dir()]
    if checkpoints(run_dir, complete=False):
        found.append(CHECKPOINTS + "/")
    if any(isinstance(e, ev.RunStarted) for e in run_events(run_dir)):
        found.append(EVENTS_FILE)
    return ", ".join(found)


def write_job(run_dir: Path, job: JobConfig, *, source: str | Path | None = None) -> None:
    """Write the resolved job as ``run_dir/job.yaml`` when it is missing or says otherwise.

    ``source`` is the file the job was read from: when that is the run's own job file (the GUI
    saves it there, then starts the child on it) it is never rewritten.
    """
    from engine.config import dump_job

    path = run_dir / JOB_FILE
    if path.is_file() and source is not None and Path(source).exists() \
            and path.samefile(source):
        return
    text = dump_job(job)
    if path.is_file() and path.read_text(encoding="utf-8") == text:
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


# --------------------------------------------------------------------------- checkpoints


def checkpoint_name(step: int) -> str:
    return f"{CHECKPOINT_PREFIX}{step}"


def checkpoint_step(folder: Path) -> int | None:
    """The step of a ``checkpoint-<step>`` folder, or None for any other name."""
    tail = folder.name.removeprefix(CHECKPOINT_PREFIX)
    return int(tail) if tail != folder.name and tail.isdigit() else None


def is_complete_checkpoint(folder: Path) -> bool:
    """A checkpoint folder the Trainer finished writing (a partial one lacks its state)."""
    return checkpoint_step(folder) is not None and (folder / CHECKPOINT_DONE).is_file()


def checkpoints(run_dir: str | Path, *, complete: bool = True) -> list[Path]:
    """The run's checkpoint folders, oldest step first (only complete ones by default)."""
    folder = Path(run_dir) / CHECKPOINTS
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if p.is_dir() and checkpoint_step(p) is not None
             and (not complete or is_complete_checkpoint(p))]
    return sorted(found, key=lambda p: checkpoint_step(p) or 0)


def last_checkpoint(run_dir: str | Path, *, finite: bool = False) -> Path | None:
    """The newest complete checkpoint, or None.

    ``finite=True`` (what resume uses) also reads its weights and passes over a checkpoint
    with a NaN or infinite tensor, or one whose weights cannot be read: resuming from it would
    fail again. That reads every weight file, so the cheap form is the default.
    """
    for folder in reversed(checkpoints(run_dir)):
        if not finite or checkpoint_is_finite(folder):
            return folder
    return None


def checkpoint_is_finite(folder: Path) -> bool:
    """True when every tensor of the checkpoint's ``*.safetensors`` weights is finite."""
    import torch
    from safetensors import SafetensorError, safe_open

    files = sorted(folder.glob("*.safetensors"))
    if not files:
        return False
    try:
        for file in files:
            with safe_open(str(file), framework="pt") as fh:
                for key in fh.keys():  # noqa: SIM118 (safe_open has no __iter__)
                    tensor = fh.get_tensor(key)
                    if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                        return False
    except (OSError, SafetensorError):
        return False
    return True


# --------------------------------------------------------------------------- events


def read_events(path: str | Path, malformed: list[int] | None = None) -> list[ev.Event]:
    """Every complete, well-formed event line of a file (an events file or a console log).

    Lines that are not JSON events are skipped (a torn write before a resume, a stray print),
    and so is the part after the last newline: the writer may be in the middle of that line.
    ``malformed`` gets the (1-based) numbers of the skipped non-empty lines, for a report.
    A missing file has no events.
    """
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            lines = fh.read().split("\n")[:-1]
    except OSError:
        return []
    events = []
    for number, line in enumerate(lines, 1):
        event = ev.parse_line(line)
        if event is not None:
            events.append(event)
        elif malformed is not None and line.strip():
            malformed.append(number)
    return events


def malformed_warning(path: Path, malformed: list[int]) -> ev.Warning | None:
    """A ``warning`` event naming the lines of ``path`` that were skipped, or None."""
    if not malformed:
        return None
    shown = ", ".join(map(str, malformed[:5])) + (" …" if len(malformed) > 5 else "")
    return ev.Warning(code="malformed_events",
                      message=f"{path}: skipped {len(malformed)} malformed line(s) (line "
                              f"{shown}); the rest of the run's events were read")


def run_events(run_dir: str | Path, malformed: list[int] | None = None) -> list[ev.Event]:
    return read_events(Path(run_dir) / EVENTS_FILE, malformed)


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



# --------------------------------------------------------------------------- the lock


@dataclass(frozen=True)
class RunLock:
    """What a run's lock file says: the process training the run and when it started."""

    pid: int
    started: float  # the process's creation time (psutil), not the time the lock was written
    run_dir: str  # the run folder, resolved, as the process saw it


START_TOLERANCE_S = 0.05  # psutil reads the same start time for the same process


def _process_started(pid: int) -> float:
    import psutil

    return float(psutil.Process(pid).create_time())


def read_lock(run_dir: str | Path) -> RunLock | None:
    """The run's lock, or None when there is none or it is not one (a torn or crafted file)."""
    try:
        data = json.loads((Path(run_dir) / LOCK_FILE).read_text(encoding="utf-8"))
        lock = RunLock(pid=data["pid"], started=data["started"], run_dir=data["run_dir"])
    except (OSError, ValueError, TypeError, KeyError):
        return None
    valid = (type(lock.pid) is int and isinstance(lock.started, int | float)
             and type(lock.started) is not bool and isinstance(lock.run_dir, str))
    return lock if valid else None


def lock_holder(run_dir: str | Path, *, strict: bool = False) -> Any | None:
    """The live process (a ``psutil.Process``) that holds the run's lock, or None.

    It must be the lock's pid, alive, created at the lock's start time, and the lock must be
    this folder's. ``strict`` (before a kill) also asks that its command line names the run
    folder (``--run-dir DIR`` or ``DIR/job.yaml``), so that only the run's own trainer dies.
    """
    import psutil

    folder = Path(run_dir).resolve()
    lock = read_lock(folder)
    if lock is None or lock.pid <= 0 or Path(lock.run_dir) != folder:
        return None
    try:
        proc = psutil.Process(lock.pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None
        if abs(proc.create_time() - lock.started) > START_TOLERANCE_S:
            return None  # the pid was recycled: another program has it now
        if strict and not _names_folder(proc.cmdline(), proc.cwd(), folder):
            return None
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess, OSError):
        return None
    return proc


def _names_folder(cmdline: list[str], cwd: str, folder: Path) -> bool:
    for arg in cmdline:
        if not arg or arg.startswith("-"):
            continue
        path = Path(cwd, arg) if not Path(arg).is_absolute() else Path(arg)
        with contextlib.suppress(OSError, ValueError):
            path = path.resolve()
            if path == folder or folder in path.parents:
                return True
    return False


def acquire_lock(run_dir: str | Path) -> RunLock:
    """Take the run's lock for this process; UserError (exit 2) while another one holds it.

    A lock whose process is gone (killed, machine restarted) is stale and taken over.
    """
    folder = Path(run_dir).resolve()
    me = RunLock(pid=os.getpid(), started=_process_started(os.getpid()), run_dir=str(folder))
    path = folder / LOCK_FILE
    text = json.dumps({"pid": me.pid, "started": me.started, "run_dir": me.run_dir})
    for _ in range(3):
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            holder = read_lock(folder)
            if lock_holder(folder) is not None and holder is not None:
                raise UserError(
                    f"run folder {folder} is in use: training process {holder.pid} holds "
                    f"{LOCK_FILE}", "wait for that run to end or stop it (the GUI's Stop, or "
                    f"create {folder / STOP_FILE}); to train in parallel use another --run-dir",
                    code="run_in_use") from None
            with contextlib.suppress(FileNotFoundError):
                path.unlink()  # stale: its process is gone
            continue
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        return me
    raise UserError(f"cannot take the lock {path}: another process keeps writing it",
                    "check that no other training uses this run folder", code="run_in_use")


def release_lock(run_dir: str | Path, lock: RunLock) -> None:
    """Remove the run's lock if it is still ``lock`` (never another process's)."""
    if read_lock(run_dir) == lock:
        with contextlib.suppress(FileNotFoundError):
            (Path(run_dir) / LOCK_FILE).unlink()

def quick_status(events_file: Path) -> tuple[int, float, bool]:
    """(pid, started, running) of a run from its last ``run_started``, without parsing the
    whole file (a long run's file has ~100k lines; this reads it as bytes in milliseconds).
    Running needs the run's lock too: the events alone never make a run look alive."""
    try:
        data = events_file.read_bytes()
    except OSError:
        return 0, 0.0, False
    at = max(data.rfind(b'{"type": "run_started"'), data.rfind(b'{"type":"run_started"'))
    if at < 0:
        return 0, 0.0, False
    end = data.find(b"\n", at)
    if end < 0:
        return 0, 0.0, False  # torn: the writer is mid-line
    event = ev.parse_line(data[at:end].decode("utf-8", "replace"))
    if not isinstance(event, ev.RunStarted):
        return 0, 0.0, False
    finished = b'"type": "run_finished"' in data[at:] or b'"type":"run_finished"' in data[at:]
    running = not finished and lock_holder(events_file.parent) is not None
    return event.pid, event.time, running


# --------------------------------------------------------------------------- summaries


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
    devices: int = 1

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


def summarize_events(run_dir: Path, events: list[ev.Event]) -> RunSummary:
    s = RunSummary(run_dir=run_dir, name=run_dir.name)
    finished: ev.RunFinished | None = None
    start: ev.RunStarted | None = None
    for e in events:
        if isinstance(e, ev.RunStarted):
            start, finished = e, None
            s.model = str(e.job.get("model", {}).get("source", ""))
            s.method, s.max_steps, s.pid, s.started = e.method, e.max_steps, e.pid, e.time
            s.devices = e.devices or 1
        elif isinstance(e, ev.Step):
            s.step, s.final_loss = e.step, e.loss
            s.max_steps = e.max_steps or s.max_steps
        elif isinstance(e, ev.Eval):
            s.final_eval_loss = e.eval_loss
        elif isinstance(e, ev.Error):
            s.error = e.message if e.rank is None else f"rank {e.rank}: {e.message}"
        elif isinstance(e, ev.RunFinished):
            finished = e
    if finished is not None:
        s.status = finished.status
        s.step = max(s.step, finished.step)
    elif start is not None and lock_holder(run_dir) is not None:
        s.status = RUNNING
    s.has_checkpoint = last_checkpoint(run_dir) is not None
    return s


def summarize_run(run_dir: str | Path) -> RunSummary:
    run_dir = Path(run_dir)
    return summarize_events(run_dir, run_events(run_dir))


def scan_runs(runs_dir: str | Path) -> list[RunSummary]:
    """Every run folder (one with an events file) under ``runs_dir``, newest first."""
    root = Path(runs_dir)
    if not root.is_dir():
        return []
    runs = [summarize_run(p) for p in root.iterdir() if (p / EVENTS_FILE).is_file()]
    return sorted(runs, key=lambda r: (r.started, r.name), reverse=True)


_STAMPED = re.compile(r"\d{8}-\d{6}(-\d+)?")  # create_run_dir's "<timestamp>[-n]"


def live_runs_of(runs_dir: str | Path, name: str) -> list[Path]:
    """Run folders of job ``name`` (``<name>-<timestamp>``) whose trainer is alive (its lock
    holder), newest first. Cheap: reads lock files only, not events."""
    root = Path(runs_dir)
    if not root.is_dir():
        return []
    prefix = f"{name}-"
    mine = [p for p in root.iterdir() if p.name.startswith(prefix)
            and _STAMPED.fullmatch(p.name[len(prefix):]) and (p / LOCK_FILE).is_file()]
    return sorted((p for p in mine if lock_holder(p) is not None),
                  key=lambda p: p.name, reverse=True)


def load_curves(run_dir: str | Path) -> Curves:
    c = Curves()
    for e in run_events(run_dir):
        if isinstance(e, ev.Step) and math.isfinite(e.loss):
            c.steps.append(e.step)
            c.losses.append(e.loss)
        elif isinstance(e, ev.Eval) and math.isfinite(e.eval_loss):
            c.eval_steps.append(e.step)
            c.eval_losses.append(e.eval_loss)
    return c
