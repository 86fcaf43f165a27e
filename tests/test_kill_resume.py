"""kill -9 in the middle of a run, then ``--resume``: the same losses and weights as a run that
was never interrupted; and a checkpoint whose pickles would run code is refused on resume.

Each run is a real ``python -m engine train`` child, so the kill is a real SIGKILL.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from engine import events as ev
from engine import runs

REPO = Path(__file__).resolve().parent.parent
STEPS = 6


def _job(tmp_path: Path, model: Path, data: Path) -> Path:
    job = tmp_path / "job.yaml"
    job.write_text(json.dumps({
        "name": "kill", "model": {"source": str(model)},
        "dataset": {"path": str(data), "max_length": 48, "eval_split": 0.0},
        "method": {"name": "lora", "r": 4, "alpha": 8, "dropout": 0.1},
        "training": {"max_steps": STEPS, "batch_size": 2, "learning_rate": 1e-2, "seed": 3,
                     "logging_steps": 1, "save_steps": 1},
        "output": {"runs_dir": str(tmp_path)}}))
    return job


def _train(job: Path, run_dir: Path, *extra: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-m", "engine", "train", str(job), "--run-dir",
                             str(run_dir), *extra], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)


def _losses(run_dir: Path) -> dict[int, float]:
    """Each step's loss, the last report winning (a resumed run reports steps again)."""
    return {e.step: e.loss for e in runs.run_events(run_dir) if isinstance(e, ev.Step)}


def _adapter(run_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(run_dir / runs.ADAPTER_DIR / "adapter_model.safetensors")


def test_kill_9_then_resume_reproduces_the_uninterrupted_run(tiny_llama_dir: Path,
                                                             chat_jsonl: Path,
                                                             tmp_path: Path) -> None:
    job = _job(tmp_path, tiny_llama_dir, chat_jsonl)
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    reference = _train(job, whole)
    killed = _train(job, cut)
    deadline = time.monotonic() + 240
    while runs.last_checkpoint(cut) is None or runs.checkpoint_step(
            runs.last_checkpoint(cut)) < 2:  # type: ignore[arg-type]
        assert killed.poll() is None and time.monotonic() < deadline, "no checkpoint came"
        time.sleep(0.05)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert reference.wait(240) == 0, reference.stderr.read()  # type: ignore[union-attr]
    assert not (cut / runs.ADAPTER_DIR).exists() and (cut / runs.LOCK_FILE).exists()
    resumed = _train(job, cut, "--resume")  # the dead trainer's lock is stale: taken over
    assert resumed.wait(240) == 0, resumed.stderr.read()  # type: ignore[union-attr]
    assert not (cut / runs.LOCK_FILE).exists()
    assert _losses(cut) == _losses(whole) and len(_losses(whole)) == STEPS  # exactly equal
    got, want = _adapter(cut), _adapter(whole)
    assert got.keys() == want.keys()
    assert all(torch.equal(got[k], want[k]) for k in want)


class _Evil:
    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (self.path, "w"))  # unpickling it would create a file


def test_a_checkpoint_with_code_in_its_pickles_is_refused(tiny_llama_dir: Path,
                                                          chat_jsonl: Path,
                                                          tmp_path: Path) -> None:
    from engine.config import load_job
    from engine.training import run_training

    job = load_job(_job(tmp_path, tiny_llama_dir, chat_jsonl))
    run_dir = tmp_path / "run"
    job.training.max_steps = 2
    run_training(job, run_dir=run_dir, emit=lambda _e: None)
    ckpt = runs.last_checkpoint(run_dir)
    assert ckpt is not None
    pwned = tmp_path / "pwned"
    for name in ("rng_state.pth", "optimizer.pt", "scheduler.pt"):
        if (ckpt / name).exists():
            torch.save({"x": _Evil(pwned)}, ckpt / name)
    job.training.max_steps = 4
    events: list[ev.Event] = []
    with pytest.raises(Exception, match=r"(?i)weights_only|unpickl|unsupported global"):
        run_training(job, run_dir=run_dir, emit=events.append, resume=True)
    assert not pwned.exists()  # the pickle's code never ran
    assert isinstance(events[-1], ev.RunFinished) and events[-1].status == "failed"
