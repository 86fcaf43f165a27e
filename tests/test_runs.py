"""The run folder: layout, events read while a writer appends, checkpoints, summaries."""

from __future__ import annotations

import os
import time
from pathlib import Path

from engine import events as ev
from engine import runs
from engine.config import dump_job, job_from_dict, load_job


def _write(run_dir: Path, events: list[ev.Event], tail: str = "") -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / runs.EVENTS_FILE
    path.write_text("".join(ev.to_json(e) + "\n" for e in events) + tail, encoding="utf-8")
    return path


def _checkpoint(run_dir: Path, step: int, *, complete: bool = True) -> Path:
    folder = run_dir / runs.CHECKPOINTS / runs.checkpoint_name(step)
    folder.mkdir(parents=True)
    (folder / "adapter_model.safetensors").write_text("w")
    if complete:
        (folder / runs.CHECKPOINT_DONE).write_text("{}")
    return folder


def test_a_torn_last_line_and_other_text_are_skipped(tmp_path: Path) -> None:
    whole = ev.to_json(ev.Step(step=3, loss=0.5))
    path = _write(tmp_path, [ev.Step(step=1, loss=2.0)],
                  tail="a library's print\n" + ev.to_json(ev.Step(step=2, loss=1.0)) + "\n"
                  + whole[: len(whole) // 2])
    assert [e.step for e in runs.read_events(path)] == [1, 2]
    with open(path, "a", encoding="utf-8") as fh:  # the writer finishes the line
        fh.write(whole[len(whole) // 2:] + "\n")
    assert [e.step for e in runs.read_events(path)] == [1, 2, 3]
    assert runs.read_events(tmp_path / "missing.jsonl") == []


def test_an_incomplete_checkpoint_is_ignored(tmp_path: Path) -> None:
    assert runs.last_checkpoint(tmp_path) is None
    _checkpoint(tmp_path, 9)
    done = _checkpoint(tmp_path, 10)  # newest by step, not by name
    partial = _checkpoint(tmp_path, 12, complete=False)
    (tmp_path / runs.CHECKPOINTS / ".staging").mkdir()
    assert not runs.is_complete_checkpoint(partial) and runs.is_complete_checkpoint(done)
    assert runs.last_checkpoint(tmp_path) == done
    assert [runs.checkpoint_step(p) for p in runs.checkpoints(tmp_path)] == [9, 10]
    assert [runs.checkpoint_step(p) for p in runs.checkpoints(tmp_path, complete=False)] == [
        9, 10, 12]
    assert runs.checkpoint_step(tmp_path / "checkpoint-x") is None


def test_resume_never_picks_a_checkpoint_with_non_finite_weights(tmp_path: Path) -> None:
    import torch
    from safetensors.torch import save_file

    from engine.training import _resume_point

    good, nan = _checkpoint(tmp_path, 2), _checkpoint(tmp_path, 4)
    save_file({"w": torch.ones(3)}, str(good / "adapter_model.safetensors"))
    save_file({"w": torch.tensor([1.0, float("nan")])}, str(nan / "adapter_model.safetensors"))
    assert runs.last_checkpoint(tmp_path) == nan  # the cheap form only looks at the files
    assert runs.last_checkpoint(tmp_path, finite=True) == good
    warnings: list = []
    assert _resume_point(tmp_path, warnings.append) == good
    assert [w.code for w in warnings] == ["non_finite_checkpoint"]
    save_file({"w": torch.tensor([float("inf")])}, str(good / "adapter_model.safetensors"))
    import pytest

    from engine.errors import UserError

    with pytest.raises(UserError, match="finite weights"):
        _resume_point(tmp_path, warnings.append)


def test_scan_summarises_each_run_newest_first(tmp_path: Path) -> None:
    job = {"model": {"source": "tiny"}}
    now = time.time()
    _write(tmp_path / "done", [
        ev.RunStarted(time=now - 30, job=job, method="lora", max_steps=4, pid=1),
        ev.Step(step=4, max_steps=4, loss=0.7), ev.Eval(step=4, eval_loss=0.9),
        ev.RunFinished(status="completed", step=4)])
    _write(tmp_path / "killed", [ev.RunStarted(time=now - 20, job=job, method="ia3", pid=0),
                                 ev.Step(step=2, loss=1.5)])
    _checkpoint(tmp_path / "killed", 2)
    live = [ev.RunStarted(time=now, job=job, method="dora", pid=os.getpid()),
            ev.Step(step=1, loss=float("nan")), ev.Step(step=2, loss=1.2)]
    _write(tmp_path / "live", live, tail='{"type": "step", "st')
    runs.acquire_lock(tmp_path / "live")  # this process "trains" it
    (tmp_path / "not-a-run").mkdir()

    found = runs.scan_runs(tmp_path)
    assert [r.name for r in found] == ["live", "killed", "done"]
    live_run, killed, done = found
    assert live_run.status == runs.RUNNING and live_run.running and live_run.step == 2
    assert (killed.status, killed.has_checkpoint, killed.method) == (runs.INTERRUPTED, True, "ia3")
    assert (done.status, done.final_loss, done.final_eval_loss, done.model) == (
        "completed", 0.7, 0.9, "tiny")
    assert not done.has_checkpoint
    assert runs.quick_status(tmp_path / "live" / runs.EVENTS_FILE)[::2] == (os.getpid(), True)
    assert runs.quick_status(tmp_path / "done" / runs.EVENTS_FILE)[2] is False
    assert runs.load_curves(tmp_path / "live").steps == [2]  # the NaN step has no point
    assert runs.scan_runs(tmp_path / "missing") == []


def test_new_run_folders_never_collide(tmp_path: Path) -> None:
    first = runs.create_run_dir(tmp_path / "runs", "demo")
    second = runs.create_run_dir(tmp_path / "runs", "demo")
    assert first != second and first.is_dir() and second.is_dir()
    assert first.name.startswith("demo-")


def test_the_job_file_passed_in_is_not_rewritten(tmp_path: Path) -> None:
    job = job_from_dict({"name": "j"})
    mine = tmp_path / runs.JOB_FILE
    mine.write_text("name: j\n", encoding="utf-8")  # the user's own, defaults left out
    runs.write_job(tmp_path, load_job(mine), source=mine)
    assert mine.read_text(encoding="utf-8") == "name: j\n"
    runs.write_job(tmp_path, job)  # no source: the run's job file says the resolved job
    assert mine.read_text(encoding="utf-8") == dump_job(job)
    fresh = tmp_path / "fresh"
    runs.write_job(fresh, job, source=mine)
    assert load_job(fresh / runs.JOB_FILE) == job


def test_malformed_lines_in_the_middle_are_skipped_and_counted(tmp_path: Path) -> None:
    good = [ev.to_json(ev.RunStarted(pid=0, max_steps=3)), ev.to_json(ev.Step(step=1, loss=2.0))]
    bad = ['{"type": "step", "step": 2, "lo',  # torn by a kill before a resume
           '{"type": "step", "step": "two", "loss": 1.0}',  # wrong field type
           '{"type": ["step"]}', '{"type": "eval", "eval_loss": {"x": 1}}', "[1, 2]",
           '{"type": "run_started", "pid": "123", "job": []}']
    path = tmp_path / runs.EVENTS_FILE
    path.write_text("\n".join([good[0], *bad, good[1], ""]) + "\n", encoding="utf-8")
    malformed: list[int] = []
    events = runs.read_events(path, malformed)
    assert [type(e).__name__ for e in events] == ["RunStarted", "Step"]
    assert malformed == [2, 3, 4, 5, 6, 7]  # the empty line is not a problem
    warning = runs.malformed_warning(path, malformed)
    assert warning is not None and warning.code == "malformed_events"
    assert "skipped 6 malformed line(s) (line 2, 3, 4, 5, 6 …)" in warning.message
    assert runs.malformed_warning(path, []) is None
    # Every reader of a run folder copes: summaries, curves, the quick status.
    summary = runs.summarize_run(tmp_path)
    assert (summary.step, summary.final_loss, summary.status) == (1, 2.0, runs.INTERRUPTED)
    assert runs.load_curves(tmp_path).steps == [1]
    assert runs.quick_status(path)[2] is False
