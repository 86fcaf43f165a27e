"""Several training processes on one job: who this process is, and what the ranks agree on.

Tunesmith builds no distribution of its own: torch.distributed's elastic launcher (torchrun)
starts one process per device, transformers' Trainer wraps the model in DDP (or FSDP), and
this module holds the few things the engine itself needs on top:

- :func:`world` reads the rank and world size torchrun sets in the environment;
- :func:`agree` turns a decision each rank takes on its own (the STOP file seen, a
  non-finite loss) into one all ranks share, so they leave the loop at the same step;
- :func:`barrier` where rank 0 renames what every rank wrote (a checkpoint's staging folder);
- :func:`effective_batch` / :func:`accumulation_for` the arithmetic of the effective batch
  (micro-batch × accumulation × devices), shared by resume and the advisor;
- :class:`RankErrorSink` records a non-zero rank's error in ``ranks/rank-<r>.json`` for the
  launcher (engine.train_launch), which puts it in the run's events, rank-tagged.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine import events as ev
from engine import runs

# Set by engine.train_launch in every rank's environment: the launcher holds the run's lock,
# made the run folder and forwards STOP, so the ranks do none of that themselves.
LAUNCHER_ENV = "TUNESMITH_LAUNCHER_PID"


@dataclass(frozen=True)
class World:
    rank: int = 0
    local_rank: int = 0
    size: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def world() -> World:
    """This process's place among the ranks torchrun started (rank 0 of 1 without torchrun)."""
    env = os.environ
    return World(rank=int(env.get("RANK", "0")), local_rank=int(env.get("LOCAL_RANK", "0")),
                 size=int(env.get("WORLD_SIZE", "1")))


def launched() -> bool:
    """True in a rank that engine.train_launch started (not torchrun run by hand)."""
    return bool(os.environ.get(LAUNCHER_ENV))


def gpu_count() -> int:
    """CUDA GPUs this process may use, read through NVML (engine.telemetry) without loading
    torch (the launcher stays light); ``CUDA_VISIBLE_DEVICES`` narrows the list."""
    from engine.telemetry import read_gpu_stats

    found = len(read_gpu_stats())
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        found = min(found, len([v for v in visible.split(",") if v.strip() not in ("", "-1")]))
    return found


def _active() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _device() -> Any:
    import torch
    import torch.distributed as dist

    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def agree(flag: bool) -> bool:
    """True on every rank when it is true on any rank (one tiny all-reduce; no-op alone)."""
    if not _active():
        return flag
    import torch
    import torch.distributed as dist

    t = torch.tensor([1 if flag else 0], dtype=torch.int32, device=_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def barrier() -> None:
    if _active():
        import torch.distributed as dist

        dist.barrier()


class AgreedStop:
    """``should_stop`` for the training loop: rank 0's STOP decision, shared by every rank.

    Each rank would otherwise see the STOP file at its own step and leave the loop alone,
    while the others wait for it in the next gradient all-reduce.
    """

    def __init__(self, should_stop: Any) -> None:
        self.should_stop = should_stop

    def __call__(self) -> bool:
        return agree(world().main and bool(self.should_stop()))


# --------------------------------------------------------------------------- effective batch


def effective_batch(batch_size: int, grad_accum: int, devices: int) -> int:
    """Samples behind one optimizer step: micro-batch × accumulation × devices."""
    return batch_size * grad_accum * max(1, devices)


def accumulation_for(effective: int, batch_size: int, devices: int) -> int | None:
    """The accumulation that keeps ``effective`` on ``devices``, or None when none does."""
    per_step = batch_size * max(1, devices)
    if effective % per_step or effective < per_step:
        return None
    return effective // per_step


def resume_batch(job: Any, run_dir: Path, devices: int) -> ev.Warning | None:
    """On resume with another device count: keep the effective batch by changing
    ``job.training.grad_accum`` when the numbers divide, else say what changes.

    Returns the warning to report (None when nothing changed).
    """
    # Each rank reads this before rank 0 reports this session's own run_started; any event
    # newer than this process is that one, not the previous session's.
    born = _started()
    previous = next((e for e in reversed(runs.run_events(run_dir))
                     if isinstance(e, ev.RunStarted) and e.time < born), None)
    if previous is None or not previous.devices or previous.devices == devices:
        return None
    t = job.training
    before = previous.effective_batch or effective_batch(
        previous.batch_size or t.batch_size, previous.grad_accum or t.grad_accum,
        previous.devices)
    accum = accumulation_for(before, t.batch_size, devices)
    if accum is not None:
        old, t.grad_accum = t.grad_accum, accum
        return ev.Warning(code="devices_changed", message=(
            f"resuming on {devices} device(s) instead of {previous.devices}: grad_accum "
            f"{old} → {accum} keeps the effective batch at {before} "
            f"({t.batch_size} × {accum} × {devices})"))
    now = effective_batch(t.batch_size, t.grad_accum, devices)
    return ev.Warning(code="devices_changed", message=(
        f"resuming on {devices} device(s) instead of {previous.devices}: the effective batch "
        f"changes from {before} to {now} ({t.batch_size} × {t.grad_accum} × {devices}); no "
        f"whole grad_accum keeps {before} — set training.batch_size so that {before} divides "
        f"by batch_size × {devices} to keep it"))


def _started() -> float:
    import psutil

    return float(psutil.Process().create_time())


# --------------------------------------------------------------------------- rank errors


def rank_error_file(run_dir: Path, rank: int) -> Path:
    return run_dir / runs.RANKS_DIR / f"rank-{rank}.json"


class RankErrorSink:
    """The EventSink of a non-zero rank: rank 0 alone writes events; this rank's error goes
    to ``ranks/rank-<r>.json`` (for the launcher) and to stderr (the console log)."""

    def __init__(self, run_dir: Path, rank: int) -> None:
        self.run_dir, self.rank = run_dir, rank

    def __call__(self, event: ev.Event) -> None:
        if not isinstance(event, ev.Error):
            return
        print(f"rank {self.rank}: error: {event.message}", file=sys.stderr, flush=True)
        path = rank_error_file(self.run_dir, self.rank)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps({"rank": self.rank, "code": event.code,
                                   "message": event.message, "advice": event.advice}))
        os.replace(tmp, path)


def rank_errors(run_dir: Path) -> list[ev.Error]:
    """The errors non-zero ranks recorded, as rank-tagged error events (rank order)."""
    out = []
    for path in sorted((run_dir / runs.RANKS_DIR).glob("rank-*.json")):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        out.append(ev.Error(code=str(data.get("code", "")), message=str(data.get("message", "")),
                            advice=str(data.get("advice", "")), rank=int(data.get("rank", 0))))
    return sorted(out, key=lambda e: e.rank or 0)


def peer_errors(run_dir: Path, wait_s: float = 3.0) -> list[ev.Error]:
    """Rank 0's view when it fails in a run on several devices: the errors other ranks
    recorded, waiting up to ``wait_s`` for one (a rank that raised ends its connections
    before its report is written). Empty alone, or when no other rank failed."""
    if world().size < 2:
        return []
    import time

    deadline = time.monotonic() + wait_s
    while not (found := rank_errors(run_dir)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return found


def clear_rank_errors(run_dir: Path) -> None:
    for path in (run_dir / runs.RANKS_DIR).glob("rank-*.json"):
        path.unlink(missing_ok=True)
