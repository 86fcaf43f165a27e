"""``python -m engine train JOB.yaml [--run-dir DIR] [--resume] [--events-stdout] [--devices N]``.

With ``--devices N`` (or ``training.devices``) above 1 this process is the launcher
(engine.train_launch); each rank torchrun starts comes back here with ``RANK`` set."""

from __future__ import annotations

import argparse
import sys
import threading
from pathlib import Path
from typing import Any, TextIO

from engine import distributed, runs
from engine import events as ev
from engine.errors import UserError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("job", help="the job file (YAML)")
    parser.add_argument("--run-dir", default=None,
                        help="run folder (default: <runs_dir>/<name>-<timestamp>)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in --run-dir from its last complete checkpoint")
    parser.add_argument("--events-stdout", action="store_true",
                        help="write events as JSON lines on stdout (for the GUI and scripts)")
    parser.add_argument("--devices", type=int, default=None, metavar="N",
                        help="train on N devices, one process each, through torchrun "
                             "(default: the job's training.devices)")


class ProgressBar:
    """One status line on a terminal: step, loss, tokens/s, ETA; other events on their own."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.tty = stream.isatty()

    def __call__(self, event: ev.Event) -> None:
        if isinstance(event, ev.Step):
            self._bar(event)
        elif isinstance(event, ev.Progress):
            self._line(f"… {event.message}" + (f" ({event.current}/{event.total})"
                                               if event.total > 1 else ""))
        elif isinstance(event, ev.DataReady):
            how = "detected" if event.detected else "as set"
            self._line(f"data: {event.format} ({how}), {event.train_rows} train / "
                       f"{event.eval_rows} eval rows → {event.sequences} sequences"
                       f"{' (packed)' if event.packed else ''}, {event.truncated} truncated, "
                       f"{event.dropped} dropped")
        elif isinstance(event, ev.RunStarted):
            share = 100 * event.trainable_params / max(event.total_params, 1)
            self._line(f"run {event.run_dir}: {event.method} on {event.device}, "
                       f"{event.trainable_params:,} of {event.total_params:,} parameters "
                       f"trained ({share:.2f}%){', 4-bit base' if event.quantized_4bit else ''}, "
                       f"{event.max_steps} steps"
                       + (f", {event.precision} ({event.precision_reason})"
                          if event.precision else ""))
        elif isinstance(event, ev.Eval):
            self._line(f"eval @ step {event.step}: loss {event.eval_loss:.4f}")
        elif isinstance(event, ev.Sample):
            self._line(f"sample @ step {event.step}: {event.prompt!r} → {event.text!r}")
        elif isinstance(event, ev.Checkpoint):
            self._line(f"checkpoint: {event.path}")
        elif isinstance(event, ev.Warning):
            self._line(f"warning ({event.code}): {event.message}" if event.code
                       else f"warning: {event.message}")
        elif isinstance(event, ev.Error):
            self._line(f"error: {event.message}" + (f"\n  → {event.advice}" if event.advice
                                                     else ""))
        elif isinstance(event, ev.RunFinished):
            self._line(f"{event.status} at step {event.step}"
                       + (f", final loss {event.final_loss:.4f}" if event.final_loss else "")
                       + (f" → {event.output_path}" if event.output_path else "")
                       + f" ({event.elapsed_s:.0f} s)")

    def _bar(self, s: ev.Step) -> None:
        total = max(s.max_steps, 1)
        filled = int(24 * s.step / total)
        eta = f"{int(s.eta_s // 60)}:{int(s.eta_s % 60):02d}" if s.eta_s is not None else "?"
        text = (f"[{'█' * filled}{'·' * (24 - filled)}] {s.step}/{total} loss {s.loss:.4f} "
                f"{s.tokens_per_s:,.0f} tok/s ETA {eta}")
        if self.tty:
            self.stream.write("\r" + text + "\033[K")
            self.stream.flush()
        else:
            self._line(text)

    def _line(self, text: str) -> None:
        prefix = "\r\033[K" if self.tty else ""
        self.stream.write(prefix + text + "\n")
        self.stream.flush()


class StopSignal:
    """Stop when the run folder has a STOP file, or a line "stop" arrives on stdin."""

    def __init__(self, run_dir: Path, watch_stdin: bool) -> None:
        self.stop_file = run_dir / runs.STOP_FILE
        self._event = threading.Event()
        if watch_stdin and sys.stdin is not None and not sys.stdin.isatty():
            threading.Thread(target=self._read_stdin, daemon=True).start()

    def _read_stdin(self) -> None:
        for line in sys.stdin:
            if line.strip().lower() == "stop":
                self._event.set()
                return

    def __call__(self) -> bool:
        return self._event.is_set() or self.stop_file.exists()


def _job_file(arg: str) -> Path:
    """A job file's path, or a bundled preset: its name (``demo-persona``) or its
    repository path (``resources/presets/demo-persona.yaml``), from any folder."""
    from engine import resources

    if Path(arg).is_file():
        return Path(arg)
    return resources.preset(arg) or resources.locate(arg)


def _refuse_finished_run(run_dir: Path) -> None:
    """A new run in a folder that holds one would replace its result and checkpoints."""
    held = runs.holds_a_run(run_dir) if run_dir.is_dir() else ""
    if held:
        raise UserError(f"--run-dir {run_dir} already holds a run ({held}); starting a new one "
                        "there would replace its result and checkpoints",
                        "add --resume to continue it, or leave out --run-dir to start a new "
                        "run folder")


def run(args: argparse.Namespace) -> int:
    from engine.cli import quiet_libraries
    from engine.config import load_job

    quiet_libraries()
    job_file = _job_file(args.job)
    job = load_job(job_file)
    from engine.training import check_inputs

    if args.resume and not args.run_dir:
        raise UserError("--resume needs --run-dir: the run folder to continue",
                        "pass --run-dir runs/<name>-<timestamp>")
    if args.resume and not Path(args.run_dir).is_dir():
        raise UserError(f"--run-dir {args.run_dir} does not exist", "check the path")
    if not (args.run_dir and Path(args.run_dir).is_dir()):
        check_inputs(job)  # before a folder is made: a wrong path leaves nothing behind
    # (in an existing folder, such as the one the GUI prepares, run_training checks the same
    # paths first thing and records the error in the run's events for the GUI to show)
    devices = _devices(args, job)
    world = distributed.world()
    if world.size > 1 and not args.run_dir:
        raise UserError(f"{world.size} training processes need one run folder: pass --run-dir",
                        "torchrun … -m engine train JOB.yaml --run-dir runs/<name>, or let "
                        f"Tunesmith launch them: python -m engine train JOB.yaml --devices "
                        f"{world.size}")
    if args.run_dir and not args.resume and world.main and not distributed.launched():
        _refuse_finished_run(Path(args.run_dir))
    run_dir = (runs.prepare_run_dir(args.run_dir) if args.run_dir
               else runs.create_run_dir(job.output.runs_dir, job.name))
    if not world.main or distributed.launched():  # the launcher holds the lock for the ranks
        return _train(args, job, job_file, run_dir, world.rank)
    try:
        lock = runs.acquire_lock(run_dir)  # before anything is written: one trainer per folder
    except UserError as exc:
        if args.events_stdout:  # the GUI reads its banner from the error event
            print(ev.to_json(ev.Error(code=exc.code, message=exc.message, advice=exc.advice)),
                  flush=True)
        raise
    try:
        if devices > 1 and world.size == 1:  # one run folder, then one process per device
            from engine.train_launch import launch

            return launch(args, job_file, run_dir, devices)
        return _train(args, job, job_file, run_dir, world.rank)
    finally:
        runs.release_lock(run_dir, lock)


def _devices(args: argparse.Namespace, job: Any) -> int:
    if args.devices is not None and args.devices < 1:
        raise UserError(f"--devices {args.devices}: give 1 or more", "e.g. --devices 2")
    return args.devices if args.devices is not None else job.training.devices


def _train(args: argparse.Namespace, job: Any, job_file: Path, run_dir: Path, rank: int) -> int:
    from engine.training import run_training

    launched = distributed.launched()
    if rank == 0 and not launched:
        (run_dir / runs.STOP_FILE).unlink(missing_ok=True)  # stale, from a previous session
    events_out = sys.stdout
    if args.events_stdout:
        # stdout carries only event lines; anything a library prints goes to stderr.
        sys.stdout = sys.stderr
    writer: ev.EventWriter | None = None
    if rank == 0:  # rank 0 alone writes events; another rank's error goes to ranks/
        try:
            writer = ev.EventWriter(run_dir / runs.EVENTS_FILE,
                                    echo=events_out if args.events_stdout else None)
        except OSError as exc:
            raise runs.folder_error(run_dir, exc, "--run-dir") from None
        if not args.events_stdout:
            writer.add_listener(ProgressBar(sys.stderr))
    emit: ev.EventSink = writer if writer is not None else distributed.RankErrorSink(run_dir,
                                                                                    rank)
    # the launcher reads stdin for the ranks (a "stop" line becomes the STOP file)
    stop: Any = StopSignal(run_dir, args.events_stdout and not launched)
    if distributed.world().size > 1:
        stop = distributed.AgreedStop(stop)
    try:
        result = run_training(job, run_dir=run_dir, emit=emit, should_stop=stop,
                              resume=args.resume, job_file=job_file)
    except UserError as exc:
        if args.events_stdout:
            raise  # the dispatcher prints it on stderr; the GUI reads the error event
        return exc.exit_code  # the progress bar has already shown the error event
    except Exception as exc:
        import traceback

        if runs.is_disk_full(exc):  # e.g. the events file itself could not be written
            print(f"error: {runs.disk_full(run_dir)}", file=sys.stderr)
            return 2
        crash = (run_dir / runs.CRASH_FILE if rank == 0
                 else run_dir / runs.RANKS_DIR / f"rank-{rank}-{runs.CRASH_FILE}")
        crash.parent.mkdir(parents=True, exist_ok=True)
        with open(crash, "w", encoding="utf-8") as fh:
            traceback.print_exc(file=fh)
        print(f"error: the run crashed; details in {crash}", file=sys.stderr)
        return 1
    finally:
        try:
            if writer is not None:
                writer.close()
        except OSError:
            pass  # a full disk: the events were shown, the message above says why
    return 0 if result.status in ("completed", "stopped") else 1
