"""Launch one job on N devices: torch.distributed's elastic launcher (torchrun) as a child.

The launcher process (``python -m engine train JOB --devices N``) has made the run folder and
holds its lock; it starts ``python -m torch.distributed.run --nproc-per-node N -m engine train
JOB --run-dir DIR``, so every rank trains in the same folder. Rank 0 writes the events, the
checkpoints' shared files and the result; the others write only their RNG files and, when they
fail, ``ranks/rank-<r>.json``. torchrun ends every rank when one fails; the launcher then
puts the failed rank's error in the run's events (``"rank": r``) and ends the run there when
rank 0 could not (it was ended while waiting for the others).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
from pathlib import Path

from engine import distributed, runs
from engine import events as ev
from engine.errors import UserError


def torchrun_command(job_file: Path, run_dir: Path, devices: int, *, resume: bool,
                     events_stdout: bool) -> list[str]:
    """The command line: one node, N processes, no restarts (a failure ends the run)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc-per-node={devices}", "--max-restarts=0", "--monitor-interval=0.5",
           "-m", "engine", "train", str(job_file), "--run-dir", str(run_dir)]
    return cmd + (["--resume"] if resume else []) + (["--events-stdout"] if events_stdout
                                                      else [])


def check_devices(devices: int, requested: str) -> str:
    """'cuda' with N GPUs present, else 'cpu' (gloo processes); a UserError when the job
    asks for more GPUs than the machine has."""
    gpus = distributed.gpu_count()
    if requested in ("auto", "cuda") and gpus >= devices:
        return "cuda"
    if requested == "cuda" or (requested == "auto" and gpus > 0):
        raise UserError(f"--devices {devices}: this machine has {gpus} GPU(s)",
                        f"use --devices {gpus} or fewer (or training.device: cpu for CPU "
                        "processes)", code="bad_job")
    if requested == "mps":
        raise UserError("several devices need CUDA GPUs (or the CPU); Apple MPS is one device",
                        "use --devices 1", code="bad_job")
    return "cpu"


def launch(args: argparse.Namespace, job_file: Path, run_dir: Path, devices: int) -> int:
    from engine.config import load_job

    check_devices(devices, load_job(job_file).training.device)
    (run_dir / runs.STOP_FILE).unlink(missing_ok=True)  # stale, from a previous session
    distributed.clear_rank_errors(run_dir)
    env = dict(os.environ, **{distributed.LAUNCHER_ENV: str(os.getpid())})
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // devices)))
    cmd = torchrun_command(Path(job_file).resolve(), run_dir.resolve(), devices,
                           resume=args.resume, events_stdout=args.events_stdout)
    if args.events_stdout and sys.stdin is not None and not sys.stdin.isatty():
        threading.Thread(target=_forward_stop, args=(run_dir,), daemon=True).start()
    linux = sys.platform.startswith("linux")
    child = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL,
                             preexec_fn=_die_with_parent if linux else None)
    try:
        code = child.wait()
    except KeyboardInterrupt:  # torchrun got the same Ctrl-C and ends its ranks
        code = child.wait()
    return code if code == 0 else _report(run_dir, code, args.events_stdout)


def _die_with_parent() -> None:
    """In torchrun's process, before it starts: SIGTERM when the launcher dies (the GUI's
    "Stop now" kills the launcher); torchrun then ends its ranks, none is left training."""
    import ctypes
    import signal

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def _forward_stop(run_dir: Path) -> None:
    """A "stop" line on the launcher's stdin (the GUI's Stop) becomes the run's STOP file."""
    for line in sys.stdin:
        if line.strip().lower() == "stop":
            (run_dir / runs.STOP_FILE).touch()
            return


def _report(run_dir: Path, code: int, events_stdout: bool) -> int:
    """After a failure: the failed ranks' errors into the events, and run_finished when rank 0
    did not write it. The exit code: 2 for a user error (bad input), else 1."""
    events = runs.run_events(run_dir)
    start = max((i for i, e in enumerate(events) if isinstance(e, ev.RunStarted)), default=-1)
    session = events[start + 1:] if start >= 0 else events
    seen = {e.message for e in session if isinstance(e, ev.Error)}
    new: list[ev.Event] = [e for e in distributed.rank_errors(run_dir) if e.message not in seen]
    finished = any(isinstance(e, ev.RunFinished) for e in session)
    if not new and not finished:
        new.append(ev.Error(code="crash", message=(
            f"a training process ended (torchrun exit code {code}) without a report"),
            advice=f"see {run_dir / runs.CONSOLE_FILE} or the terminal for its output; "
                   "--resume continues from the last checkpoint"))
    if not finished:
        steps = [e.step for e in session if isinstance(e, ev.Step)]
        new.append(ev.RunFinished(status="failed", step=max(steps, default=0)))
    writer = ev.EventWriter(run_dir / runs.EVENTS_FILE, echo=sys.stdout if events_stdout
                            else None)
    try:
        for event in new:
            writer(event)
    finally:
        writer.close()
    errors = [e for e in session + new if isinstance(e, ev.Error)]
    first = min(errors, key=lambda e: e.time)  # the cause; later ones lost their peer
    who = f"rank {first.rank}" if first.rank is not None else "training"
    print(f"error: {who} failed: {first.message}"
          + (f"\n  → {first.advice}" if first.advice else ""), file=sys.stderr)
    return 1 if any(e.code in ("crash", "cuda_oom") for e in errors) else 2
